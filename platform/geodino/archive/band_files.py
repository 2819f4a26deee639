"""A scene kept as one file per band (a Sentinel-2 product's B02.jp2, B03.jp2, ...; a BigEarthNet patch folder),
read as one multi-band raster.

Cut band by band, such a scene gave single-band tiles that prepare took as grey images, every band of a place a
sample of its own, with nothing said. The band files of one scene are stacked instead: grouped by the name
before their band code (T32UPU_20200101T103421_B02_10m.jp2 -> scene T32UPU_20200101T103421, band B02), the
finest band's grid is the scene's, and coarser bands (Sentinel-2's 20 m and 60 m) are resampled onto it
bilinearly by GDAL (as BigEarthNet's 20 m and 60 m bands are brought to 120 px). The product's other rasters of
the scene (TCI, SCL, AOT, WVP) are not bands and are left out, by name.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from geodino import storage
from geodino.archive.bands import sentinel2_name
from geodino.archive.image_folder import folder_entries
from geodino.archive.pixels import IMAGE_SUFFIXES, PatchReadError, marks_no_data, open_raster

# name_B02.jp2, name_B8A_20m.jp2, name-b4.tif, B02.tif: the text before the band code names the scene
_BAND_FILE = re.compile(r"(?:(?P<scene>.*?)[_.-])?(?P<band>[Bb]\d{1,2}[Aa]?)(?:_\d+m)?", re.ASCII)
_RESOLUTION_FOLDER = re.compile(r"R\d+m")  # a Sentinel-2 L2A product keeps each resolution in a folder of its own
# Sentinel-2's names: a product (S2B_MSIL2A_...), a BigEarthNet patch (S2A_MSIL2A_..._87_48), a granule's files
# (T32UPU_20200101T103421_B02_10m.jp2), an Earth Search item (S2A_32UPU_20200101_0_L2A/B02.tif)
_SENTINEL2_NAME = re.compile(r"S2[A-D]_|T\d{2}[A-Z]{3}_\d{8}T\d{6}")


def band_name(text: str) -> str:
    """A band code as Sentinel-2 spells it where it is one (b4 -> B04), else in capitals (Landsat's B10)."""
    return sentinel2_name(text) or text.upper()


def band_order(name: str) -> tuple[int, str]:
    """Sentinel-2's order: B08, then B8A, then B09."""
    number, narrow = re.fullmatch(r"B0?(\d+)(A?)", name).groups()
    return int(number), narrow


@dataclass(eq=False)
class BandStack:
    """The band files of one scene: band name -> path, in band order; `left_out`: the scene's other rasters."""

    name: str
    files: dict[str, str]
    left_out: list[str] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)  # band -> the product's add offset, where not 0

    def __str__(self) -> str:
        return self.name

    def is_sentinel2(self) -> bool:
        """Named as Sentinel-2 names its files, so B04 is its red band (Landsat 5's B4 is near infrared)."""
        return bool(_SENTINEL2_NAME.match(self.name)) and all(sentinel2_name(band) == band for band in self.files)

    def is_sentinel2_product(self) -> bool:
        """JPEG 2000 files of Sentinel-2 bands, as ESA delivers them."""
        return self.is_sentinel2() and all(path.lower().endswith(".jp2") for path in self.files.values())

    def summary(self) -> str:
        """What was stacked and what was not, for tile.py's report."""
        others = f"; left out {len(self.left_out)} other rasters of it ({', '.join(self.left_out[:4])}" + (
            ", ...)" if len(self.left_out) > 4 else ")") if self.left_out else ""
        unnamed = "" if self.is_sentinel2() else "; not named as Sentinel-2's, so the tiles' bands are left unnamed"
        offset = ""
        if self.offsets:
            values = sorted(set(self.offsets.values()))
            offset = (f"; the product's add offset {', '.join(map(str, values))} added to {len(self.offsets)} bands, "
                      "the scale of products before 2022")
        return f"{self.name} ({len(self.files)} band files stacked: {', '.join(self.files)}{others}{unnamed}{offset})"


def scene_folder(path: str) -> str:
    """The folder a file belongs to as a scene's: a product's R10m/R20m/R60m folders count as the one above them,
    so a band kept at 10 m and another at 20 m are one scene. A local folder or an S3 prefix."""
    folder = storage.parent(path)
    return storage.parent(folder) if _RESOLUTION_FOLDER.fullmatch(posixpath.basename(folder)) else folder


def band_file(path: str) -> tuple[str, str, str] | None:
    """(folder, scene name, band) of a file named by a band code, or None."""
    match = _BAND_FILE.fullmatch(posixpath.splitext(posixpath.basename(path))[0])
    if match is None:
        return None
    folder = scene_folder(path)
    return folder, match["scene"] or posixpath.basename(folder), band_name(match["band"])


def product_folders(folder: str) -> list[str]:
    """The folders of a Sentinel-2 product whose rasters are its bands: the folder itself, its R10m/R20m/R60m
    folders (L2A's IMG_DATA), for a granule's folder its IMG_DATA, and for a .SAFE folder each granule's."""
    folders = folder_entries(folder)[0]
    if "GRANULE" in folders:
        granules = storage.join(folder, "GRANULE")
        return [found for granule in folder_entries(granules)[0]
                for found in product_folders(storage.join(granules, granule))]
    if "IMG_DATA" in folders:
        return product_folders(storage.join(folder, "IMG_DATA"))
    return [folder, *(storage.join(folder, name) for name in folders if _RESOLUTION_FOLDER.fullmatch(name))]


def is_product_folder(folder: str) -> bool:
    """A Sentinel-2 product's folder (.SAFE, a granule, an L2A IMG_DATA), whose bands lie in folders below it:
    product_folders finds more than the folder itself."""
    return product_folders(folder) != [folder]


def scenes_by_name(folder: str, names: list[str]) -> dict[str, list[str]]:
    """{scene: bands} of the band files among `names` (files of `folder`), from the names alone: two bands or more
    of one scene name."""
    bands_of: dict[str, list[str]] = {}
    for name in names:
        found = band_file(storage.join(folder, name))
        if found is not None:
            bands_of.setdefault(found[1], []).append(found[2])
    return {scene: sorted(set(bands), key=band_order) for scene, bands in bands_of.items() if len(set(bands)) > 1}


def folder_rasters(folder: str) -> list[str]:
    """The rasters a SCENE folder stands for (not below it, but for a product's band folders), by name; hidden
    files left out."""
    return sorted(storage.join(place, name) for place in product_folders(folder)
                  for name in folder_entries(place)[1] if name.lower().endswith(IMAGE_SUFFIXES))


def group_scenes(files: list[str], pixel_size) -> list[str | BandStack]:
    """The scenes among `files`, in their order: the single-band files of one scene name (two bands or more) are a
    BandStack, the same band twice (a product's B02 at 10, 20 and 60 m) kept at its finest; any other file is a
    scene of its own. pixel_size(path) -> (bands in the file, metres per pixel)."""
    pixel_size = functools.lru_cache(maxsize=None)(pixel_size)  # each file opened once
    bands_of: dict[tuple[str, str], dict[str, list[str]]] = {}
    for path in files:
        found = band_file(path)
        if found is not None:
            bands_of.setdefault(found[:2], {}).setdefault(found[2], []).append(path)
    stacks: dict[tuple[str, str], BandStack] = {}
    for key, bands in bands_of.items():
        finest = {band: min(paths, key=lambda path: pixel_size(path)[1]) for band, paths in bands.items()}
        if len(finest) > 1 and all(pixel_size(path)[0] == 1 for path in finest.values()):
            stacks[key] = BandStack(key[1], {band: finest[band] for band in sorted(finest, key=band_order)})
    scenes: list[str | BandStack] = []
    for path in files:
        stack = owning_stack(path, stacks)
        if stack is None:
            scenes.append(path)
        elif path in stack.files.values():
            scenes += [] if stack in scenes else [stack]
        else:
            stack.left_out.append(posixpath.basename(path))
    return scenes


def owning_stack(path: str, stacks: dict[tuple[str, str], BandStack]) -> BandStack | None:
    """The stack a file is part of: one of its bands (kept or a coarser copy), or another raster of its product
    (T32UPU_20200101T103421_TCI_10m.jp2 beside the bands of T32UPU_20200101T103421; Landsat's ..._T1_QA_PIXEL.TIF
    and ..._T1_ST_B10.TIF beside ..._T1_SR_B1.TIF): a file in its folder named as the scene is up to its last part."""
    found = band_file(path)
    if found is not None and found[:2] in stacks:
        return stacks[found[:2]]
    folder, name = scene_folder(path), posixpath.basename(path)
    return next((stack for (where, scene), stack in stacks.items() if where == folder and (
        scene == posixpath.basename(folder) or name.startswith(re.split(r"(?<=[_.-])[^_.-]*$", scene)[0]))), None)


def choose_bands(stack: BandStack, wanted: list[str]) -> BandStack:
    """The stack with only the `wanted` bands (named as band_name spells them: TileConfig.band_list), in their
    order."""
    missing = [band for band in wanted if band not in stack.files]
    if missing:
        raise PatchReadError(f"{stack.name}: no band file for {', '.join(missing)} (its bands: "
                             f"{', '.join(stack.files)})")
    return BandStack(stack.name, {band: stack.files[band] for band in wanted}, stack.left_out)


class StackedRaster:
    """The bands of a BandStack read as one raster on the finest band's grid: what tile.py asks of a rasterio
    dataset (width, height, count, dtypes, crs, nodata, read(window=, masked=), window_transform, ...)."""

    def __init__(self, stack: BandStack, nodata: float | None = None):
        self.stack, self.given_nodata = stack, nodata  # nodata: for files that declare none
        self._files = ExitStack()

    def __enter__(self) -> StackedRaster:
        from rasterio.enums import ColorInterp, Resampling
        from rasterio.vrt import WarpedVRT

        sources = {band: self._files.enter_context(open_raster(path)) for band, path in self.stack.files.items()}
        grid = min(sources.values(), key=lambda src: src.res[0])
        for band, src in sources.items():
            problem = alignment_problem(src, grid)
            if problem:
                self._files.close()
                raise PatchReadError(f"{self.stack.files[band]}: {problem} than {os.path.basename(grid.name)}, "
                                     f"the finest band of scene {self.stack.name}; its bands cannot be stacked")
        self.sources = {band: src if src.res == grid.res else self._files.enter_context(
            WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                      resampling=Resampling.bilinear, **self.nodata_of(src))) for band, src in sources.items()}
        self.width, self.height, self.crs, self.res = grid.width, grid.height, grid.crs, grid.res
        self.count = len(sources)
        self.dtypes = tuple(src.dtypes[0] for src in sources.values())
        self.nodata = grid.nodata if grid.nodata is not None else self.given_nodata
        self.colorinterp = (ColorInterp.gray,) + (ColorInterp.undefined,) * (self.count - 1)
        # band names only where they are Sentinel-2's, whose names prepare and the weights' bands go by
        self.descriptions = tuple(self.stack.files) if self.stack.is_sentinel2() else (None,) * self.count
        self.mask_flag_enums = next((src.mask_flag_enums for src in sources.values()
                                     if marks_no_data(src.mask_flag_enums)), grid.mask_flag_enums)
        self.window_transform = grid.window_transform
        return self

    def nodata_of(self, src) -> dict:
        """A coarse band's no-data value for GDAL's resampling, so a swath edge's zeros are not blended in."""
        value = src.nodata if src.nodata is not None else self.given_nodata
        return {} if value is None else {"src_nodata": value, "nodata": value}

    def __exit__(self, *exc) -> None:
        self._files.close()

    def read(self, window, masked: bool = False) -> np.ndarray:
        return (np.ma.stack if masked else np.stack)(
            [self.with_offset(band, src.read(1, window=window, masked=masked)) for band, src in self.sources.items()])

    def with_offset(self, band: str, pixels: np.ndarray) -> np.ndarray:
        """A band brought to the scale of products before 2022 (processing baseline 04.00 stores reflectance x 10000
        - offset): offset added, no-data pixels kept, measurements kept at 1 or more (0 is no data)."""
        offset = self.stack.offsets.get(band, 0)
        if not offset:
            return pixels
        top = np.iinfo(pixels.dtype).max if pixels.dtype.kind in "ui" else np.inf
        shifted = np.clip(np.ma.getdata(pixels).astype(np.float64) + offset, 1, top)
        if self.nodata is not None:
            shifted[np.ma.getdata(pixels) == self.nodata] = self.nodata
        shifted = shifted.astype(pixels.dtype)
        return np.ma.array(shifted, mask=np.ma.getmaskarray(pixels)) if np.ma.isMaskedArray(pixels) else shifted


def alignment_problem(src, grid) -> str | None:
    """Why a band file cannot be laid on the finest band's grid (None when it can): another dtype, CRS or area."""
    if src.dtypes[0] != grid.dtypes[0]:
        return f"its pixels are {src.dtypes[0]}, other"
    if src.crs != grid.crs:
        return f"its CRS is {src.crs or 'none'}, another"
    if not src.crs and (src.width, src.height) != (grid.width, grid.height):
        return f"it has no georeference and is {src.width}x{src.height} px, another size"
    if any(abs(a - b) > src.res[0] for a, b in zip(src.bounds, grid.bounds)):
        return "it covers another area"
    return None


# ESA's band_id in a product's metadata: 0 is B1, ..., 8 is B8A, ..., 12 is B12
_ESA_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_PRODUCT_METADATA = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")


def product_offsets(stack: BandStack) -> dict[str, int]:
    """The add offsets (BOA_ADD_OFFSET of L2A, RADIO_ADD_OFFSET of L1C: -1000 since processing baseline 04.00,
    January 2022) of the stack's bands, from the product's metadata file found above its band files; {} without
    one, or where they are 0. Without them, products before and after 2022 differ by 1000 in every band."""
    import xml.etree.ElementTree as ElementTree

    folder = scene_folder(next(iter(stack.files.values())))
    for _ in range(4):  # IMG_DATA -> granule -> GRANULE -> .SAFE
        found = next((storage.join(folder, name) for name in _PRODUCT_METADATA
                      if storage.exists(storage.join(folder, name))), None)
        if found:
            break
        folder = storage.parent(folder)
    else:
        return {}
    try:
        root = ElementTree.fromstring(storage.read_bytes(found))
    except ElementTree.ParseError as error:
        raise PatchReadError(f"{found}: the product's metadata is not readable XML ({error}), so its add offsets are "
                             "unknown: download the product again, or pass --add_offset false to keep the stored "
                             "values") from error
    names = {item.get("bandId"): sentinel2_name(item.get("physicalBand", "")) for item in root.iter()
             if item.tag.endswith("Spectral_Information") and item.get("bandId") is not None}
    offsets = {}
    for item in root.iter():
        band_id = item.get("band_id", "")
        if item.tag.endswith(("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")) and band_id.isdigit():
            band = names.get(band_id) or (_ESA_BAND_IDS[int(band_id)] if int(band_id) < len(_ESA_BAND_IDS) else None)
            try:
                offset = round(float(item.text or 0))
            except ValueError:
                raise PatchReadError(f"{found}: {item.tag} of band {band_id} is {item.text!r}, not a number; download "
                                     "the product again, or pass --add_offset false") from None
            if band in stack.files and offset:
                offsets[band] = offset
    return offsets


def pixel_size_of(path: str) -> tuple[int, float]:
    """(bands in the file, metres per pixel)."""
    with open_raster(path) as src:
        return src.count, src.res[0]
