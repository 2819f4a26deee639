"""Sentinel-2 band names, their ground resolutions, and band-selection parsing."""

from __future__ import annotations

import re

from geodino.errors import ConfigError, GeodinoError

# BigEarthNet's 12 L2A bands (B10, cirrus, is not distributed), in the order
# BigEarthNet tools use, with ground sampling distance in metres.
S2_BAND_RESOLUTION: dict[str, int] = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B11": 20,
    "B12": 20,
}
S2_BANDS: tuple[str, ...] = tuple(S2_BAND_RESOLUTION)
RGB_BANDS: tuple[str, ...] = ("B04", "B03", "B02")

# A BigEarthNet patch is 1.2 km square: 120 px at 10 m, 60 at 20 m, 20 at 60 m.
PATCH_METRES = 1200
NATIVE_SIZE = {band: PATCH_METRES // res for band, res in S2_BAND_RESOLUTION.items()}

# Bright-surface reflectance (x10000) mapped to 1.0 by the default scaling;
# the seed divided by this value too.
OPTICAL_MAX = 2750.0

_ALIASES = {"rgb": RGB_BANDS, "all": S2_BANDS, "s2": S2_BANDS}


def sentinel2_name(text: str) -> str | None:
    """A Sentinel-2 band as BigEarthNet spells it, from the spellings exports use ('B4' from Earth Engine, 'b04',
    'B8a'); None for any other text. B10 (cirrus) is a band of L1C products, so it is one too."""
    match = re.fullmatch(r"b0?(\d{1,2})(a?)", text.strip().lower())
    if not match:
        return None
    number, narrow = int(match[1]), bool(match[2])
    if narrow:
        return "B8A" if number == 8 else None
    return f"B{number:02d}" if 1 <= number <= 12 else None


class UnknownBandError(GeodinoError, ValueError):
    """A requested band that the source does not have."""


def parse_bands(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'rgb', 'all' or 'B04,B03,B02' -> a tuple of band names, checked."""
    if isinstance(spec, str):
        alias = _ALIASES.get(spec.strip().lower())
        if alias is not None:
            return alias
        names = [part.strip().upper() for part in spec.split(",") if part.strip()]
    else:
        names = [str(part).upper() for part in spec]
    if not names:
        raise UnknownBandError("no bands given: use 'rgb', 'all' or a list like B04,B03,B02")
    for name in names:
        if name not in S2_BAND_RESOLUTION:
            raise UnknownBandError(
                f"band {name!r} does not exist in Sentinel-2 L2A as distributed by BigEarthNet; "
                f"choose from {', '.join(S2_BANDS)} (or 'rgb', 'all')"
            )
    if len(set(names)) != len(names):
        raise UnknownBandError(f"band list {names} names a band twice")
    return tuple(names)


def check_all_channels_of_images(bands: str | None) -> None:
    """Of a user's images, prepare and --pack keep every channel (channels are chosen when training), so a --bands
    given to them would otherwise be ignored without a word: a typo's fate."""
    if bands is not None and bands.strip().lower() != "all":
        raise ConfigError(f"--bands {bands!r} chooses among BigEarthNet's bands; of your own images prepare keeps "
                          "every channel (and --pack packs them all): leave --bands out here, and choose channels "
                          "when training, e.g. pretrain.py --bands band4,band3,band2")
