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


# CORINE Land Cover's 44 level-3 classes as its maps store them: the raster's grid codes 1-44 (in this order) and the
# vector's CLC codes 111-523. BigEarthNet's 43 are these without glaciers, whose patches were left out with snow.
CLC_CODES: tuple[int, ...] = (
    111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142, 211, 212, 213, 221, 222, 223, 231, 241, 242, 243, 244,
    311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 335, 411, 412, 421, 422, 423, 511, 512, 521, 522, 523)
CLC_GLACIERS = "Glaciers and perpetual snow"
CLC_CLASSES: tuple[str, ...] = BEN43_CLASSES[:33] + (CLC_GLACIERS,) + BEN43_CLASSES[33:]
CLC_NOT_A_CLASS = (48, 49, 50)  # the raster's NODATA, unclassified land surface, unclassified water bodies


def corine_legend(nomenclature: str) -> dict[str, str | None]:
    """{map value: class name} for a CORINE map read by grid code or CLC code: the 44 CORINE names
    (nomenclature 'corine'), or BigEarthNet's 19 they merge into ('bigearthnet19'; None where a class has no
    place among the 19, so a tile is labelled as a BigEarthNet patch of the same land would be)."""
    names = {str(code): name for codes in (range(1, 45), CLC_CODES) for code, name in zip(codes, CLC_CLASSES)}
    if nomenclature == "bigearthnet19":
        names = {value: BEN43_TO_19.get(name) for value, name in names.items()}
    return names | {str(code): None for code in CLC_NOT_A_CLASS}


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
