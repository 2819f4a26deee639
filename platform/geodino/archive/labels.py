"""BigEarthNet label nomenclatures and the official 43 -> 19 class mapping.

The 19-class nomenclature (Sumbul et al. 2021) merges or drops CORINE level-3
classes that cannot be recognised from a 1.2 km Sentinel-2 patch. The names and
their order are the official ones; the index of a name is its multi-hot position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from geodino.errors import GeodinoError

BEN43_CLASSES: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

BEN19_CLASSES: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

# 19-class name -> the 43-class names merged into it. Classes of the 43 that
# appear nowhere here (roads, ports, airports, mines, dumps, construction,
# green urban, sport, bare rock, burnt areas, intertidal flats) are dropped.
_MERGED_FROM: dict[str, tuple[str, ...]] = {
    "Urban fabric": ("Continuous urban fabric", "Discontinuous urban fabric"),
    "Industrial or commercial units": ("Industrial or commercial units",),
    "Arable land": ("Non-irrigated arable land", "Permanently irrigated land", "Rice fields"),
    "Permanent crops": (
        "Vineyards",
        "Fruit trees and berry plantations",
        "Olive groves",
        "Annual crops associated with permanent crops",
    ),
    "Pastures": ("Pastures",),
    "Complex cultivation patterns": ("Complex cultivation patterns",),
    BEN19_CLASSES[6]: (BEN43_CLASSES[20],),
    "Agro-forestry areas": ("Agro-forestry areas",),
    "Broad-leaved forest": ("Broad-leaved forest",),
    "Coniferous forest": ("Coniferous forest",),
    "Mixed forest": ("Mixed forest",),
    "Natural grassland and sparsely vegetated areas": ("Natural grassland", "Sparsely vegetated areas"),
    "Moors, heathland and sclerophyllous vegetation": ("Moors and heathland", "Sclerophyllous vegetation"),
    "Transitional woodland, shrub": ("Transitional woodland/shrub",),
    "Beaches, dunes, sands": ("Beaches, dunes, sands",),
    "Inland wetlands": ("Inland marshes", "Peatbogs"),
    "Coastal wetlands": ("Salt marshes", "Salines"),
    "Inland waters": ("Water courses", "Water bodies"),
    "Marine waters": ("Coastal lagoons", "Estuaries", "Sea and ocean"),
}

BEN43_TO_19: dict[str, str | None] = {name: None for name in BEN43_CLASSES}
for _name19, _sources in _MERGED_FROM.items():
    for _name43 in _sources:
        BEN43_TO_19[_name43] = _name19


class UnknownLabelError(GeodinoError, ValueError):
    """A label name that is not part of the nomenclature being read."""


def to_ben19(labels_43: Iterable[str]) -> list[str]:
    """Map 43-class names to 19-class names, in nomenclature order, without repeats."""
    mapped = set()
    for name in labels_43:
        if name not in BEN43_TO_19:
            raise UnknownLabelError(f"unknown BigEarthNet-43 label {name!r}")
        if BEN43_TO_19[name] is not None:
            mapped.add(BEN43_TO_19[name])
    return [name for name in BEN19_CLASSES if name in mapped]


def check_labels(labels: Iterable[str], classes: Sequence[str]) -> list[str]:
    """Return `labels` as a list, or raise naming the first one outside `classes`."""
    known = set(classes)
    labels = list(labels)
    for name in labels:
        if name not in known:
            raise UnknownLabelError(f"label {name!r} is not one of the {len(classes)} classes")
    return labels


def multi_hot(labels: Iterable[str], classes: Sequence[str]) -> np.ndarray:
    """Float32 vector with 1 at the index of each label in `classes`."""
    index = {name: i for i, name in enumerate(classes)}
    vector = np.zeros(len(classes), dtype=np.float32)
    for name in labels:
        vector[index[name]] = 1.0
    return vector
