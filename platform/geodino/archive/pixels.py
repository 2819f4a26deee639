"""Read the pixels of one patch, whatever archive format holds it.

Every reader returns raw values as (bands, height, width) on a common grid:
Sentinel-2 bands coarser than 10 m are upsampled to the 10 m grid (as float32), so a
12-band BigEarthNet patch comes out as (12, 120, 120); a user's image keeps its own
dtype (prepare reads it to choose the pixel scale). Normalisation happens later, in
the dataset, so that readers stay format-only.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from geodino import storage
from geodino.archive.bands import NATIVE_SIZE
from geodino.errors import GeodinoError

FORMAT_BEN_V1 = "ben_v1"  # one folder per patch, one GeoTIFF per band
FORMAT_BEN_V2 = "ben_v2"  # reBEN LMDB of safetensors blobs
FORMAT_IMAGE = "image"  # a user's multi-band GeoTIFF or JPEG 2000, or a JPEG/PNG


class PatchReadError(GeodinoError, RuntimeError):
    """A patch whose pixels cannot be read; the message names the file and the problem."""


def ben_v1_band_path(data_root: str, patch_dir: str, name: str, band: str) -> str:
    return storage.join(data_root, patch_dir, f"{name}_{band}.tif")


def to_grid(array: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of a (H, W) band, or of (C, H, W) bands, onto the (size, size) or (H, W) grid; a no-op
    when it is already there."""
    grid = (size, size) if isinstance(size, int) else tuple(size)
    if array.shape[-2:] == grid:
        return array.astype(np.float32, copy=False)
    tensor = torch.from_numpy(array.astype(np.float32, copy=False))
    shrinks = grid[0] < array.shape[-2] or grid[1] < array.shape[-1]  # then neighbours are averaged, not skipped
    resized = F.interpolate(tensor.reshape(-1, 1, *array.shape[-2:]), size=grid, mode="bilinear", align_corners=False,
                            antialias=shrinks)
    return resized.reshape(*array.shape[:-2], *grid).numpy()


@contextmanager
def open_raster(path: str):
    """A rasterio dataset of a local or s3:// raster. A plain TIFF (no georeference) is a fine patch: rasterio's
    NotGeoreferencedWarning for it is not shown."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with storage.raster_env(path), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            yield src


# A side beyond this is a scene, not a patch: read whole, a Sentinel-2 scene (10,980 px) is gigabytes per sample.
MAX_IMAGE_SIDE = 4096


def check_patch_size(path: str, width: int, height: int) -> None:
    """Refuse a scene before its pixels are read, saying how to cut it into patches."""
    if max(width, height) > MAX_IMAGE_SIDE:
        raise PatchReadError(f"{path}: the image is {width}x{height} px, a scene rather than a patch (geodino reads "
                             f"images up to {MAX_IMAGE_SIDE} px a side); cut it into tiles: python experiments/tile.py "
                             f"{path} --size 120 --out DIR, then prepare DIR")


def read_geotiff(path: str) -> np.ndarray:
    """All bands of a GeoTIFF as a (bands, H, W) array, with errors that name the file; pixels the file marks as
    no data (its nodata value or mask) come back as their band's mean (`filled_nodata`)."""
    from rasterio.errors import RasterioError

    try:
        with open_raster(path) as src:
            check_patch_size(path, src.width, src.height)
            if not marks_no_data(src.mask_flag_enums):
                return src.read()  # BigEarthNet's band files: nothing to fill
            return filled_nodata(src.read(masked=True), path, src.nodata)
    except (RasterioError, OSError) as error:
        raise PatchReadError(f"{path}: cannot read GeoTIFF ({error})") from error


def declares_rgb(path: str) -> bool:
    """Whether a raster's first three bands are red, green, blue by its colour interpretation (GDAL gives a
    3- or 4-band uint8 GeoTIFF that by default; a band of measurements is gray or undefined)."""
    from rasterio.enums import ColorInterp

    with open_raster(path) as src:
        return tuple(src.colorinterp[:3]) == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)


def band_descriptions(path: str) -> list[str]:
    """The names a raster gives its bands ('' where a band has none): GDAL keeps an exporter's band names there
    (Earth Engine writes B2, B3, B4, ...)."""
    with open_raster(path) as src:
        return [(description or "").strip() for description in src.descriptions]


def marks_no_data(mask_flags) -> bool:
    """Whether a file declares pixels that are not measurements: a nodata value, or a mask of its own. A mask GDAL
    derives from an alpha band does not count: a 4-band uint8 GeoTIFF written with rasterio's defaults
    (photometric RGB) declares its 4th band, the near infrared, as alpha, and its water (NIR 0) would otherwise
    read as no data in every band."""
    from rasterio.enums import MaskFlags

    flags = [set(band_flags) for band_flags in mask_flags]
    return any(MaskFlags.nodata in band for band in flags) or any(
        MaskFlags.per_dataset in band and MaskFlags.alpha not in band for band in flags)


def filled_nodata(pixels: np.ma.MaskedArray, path: str, nodata: float | None) -> np.ndarray:
    """The file's no-data pixels set to the mean of their band's valid pixels, in the file's dtype.

    A swath edge or a DEM void holds a sentinel (-9999, -32768, 65535, ...) that is not a measurement: left in,
    it became the pixel range's end that --normalize max stretches to (prepare's 0.1th percentile was -9999, so
    every real pixel landed in the top fifth of [0, 1]) and it dragged the band statistics. A band's own mean is
    neutral for both normalisations and for the crops; a band with no valid pixel cannot be filled.
    """
    invalid = np.ma.getmaskarray(pixels)
    filled = np.array(pixels.data, copy=True)
    for band, band_invalid in enumerate(invalid):
        if not band_invalid.any():
            continue
        if band_invalid.all():
            marker = f"nodata value {nodata:g}" if nodata is not None else "mask"
            raise PatchReadError(f"{path}: band {band + 1} is all no data (the file's {marker}); leave the image "
                                 "out of the table")
        mean = pixels[band].mean()
        filled[band][band_invalid] = np.round(mean) if np.issubdtype(filled.dtype, np.integer) else mean
    return filled


def read_ben_v1(data_root: str, patch_dir: str, name: str, bands: Sequence[str], size: int = 120) -> np.ndarray:
    planes = []
    for band in bands:
        path = ben_v1_band_path(data_root, patch_dir, name, band)
        array = read_geotiff(path)
        expected = NATIVE_SIZE[band]
        if array.shape != (1, expected, expected):
            raise PatchReadError(f"{path}: band {band} has shape {array.shape[1:]}, expected {expected}x{expected}")
        planes.append(to_grid(array[0], size))
    return np.stack(planes)


@lru_cache(maxsize=4)
def open_lmdb(path: str):
    import lmdb

    return lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True)


def read_ben_v2(lmdb_path: str, key: str, bands: Sequence[str], size: int = 120) -> np.ndarray:
    from safetensors.numpy import load

    with open_lmdb(lmdb_path).begin() as txn:
        blob = txn.get(key.encode())
    if blob is None:
        raise PatchReadError(f"{lmdb_path}: no entry {key!r} in the LMDB")
    arrays = load(blob)
    missing = [band for band in bands if band not in arrays]
    if missing:
        raise PatchReadError(f"{lmdb_path}[{key}]: bands {missing} missing (has {sorted(arrays)})")
    return np.stack([to_grid(arrays[band], size) for band in bands])


def read_image(path: str) -> np.ndarray:
    """A user's image in its own dtype: a GDAL raster (GeoTIFF, JPEG 2000) with all its bands, a 16-bit PNG with
    its values, or any other PIL image as 3 RGB bands (uint8)."""
    if path.lower().endswith(GDAL_SUFFIXES):
        return read_geotiff(path)
    from PIL import Image, UnidentifiedImageError

    try:
        data = storage.read_bytes(path)
        if not data:
            raise PatchReadError(f"{path}: the file is empty (0 bytes)")
        if is_wide_colour_png(data):
            return read_wide_colour_png(data, path)
        with Image.open(io.BytesIO(data)) as image:
            check_patch_size(path, *image.size)
            if image.mode in WIDE_GREY_MODES:
                return wide_grey_as_rgb(np.asarray(image))
            return np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()
    except UnidentifiedImageError as error:  # its message names an in-memory buffer, not the file
        raise PatchReadError(f"{path}: not an image geodino reads (GeoTIFF, JPEG 2000, or a JPEG, PNG or other "
                             "format PIL opens)") from error
    except OSError as error:
        raise PatchReadError(f"{path}: cannot read image ({error})") from error


# Read by GDAL, which keeps every band and dtype: Sentinel-2 products and NAIP tiles come as JPEG 2000, and PIL
# reads a multi-band or 16-bit JPEG 2000 as 8-bit RGB.
GDAL_SUFFIXES = (".tif", ".tiff", ".jp2", ".j2k")
IMAGE_SUFFIXES = GDAL_SUFFIXES + (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # what a folder's images may be


def is_wide_colour_png(data: bytes) -> bool:
    """A PNG of 16-bit colour or grey+alpha (IHDR bit depth 16, colour type 2, 4 or 6): PIL opens those in an
    8-bit mode and keeps each value's high byte, so reflectances of 0-4,000 became 0-15 without a word."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[24] == 16 and data[25] in (2, 4, 6)


def read_wide_colour_png(data: bytes, path: str) -> np.ndarray:
    """A 16-bit colour PNG as its 3 colour bands in uint16 (grey+alpha as 3 equal bands); the alpha band is
    dropped, as PIL's convert("RGB") drops it from an 8-bit PNG."""
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(data) as memory, memory.open() as src:
                check_patch_size(path, src.width, src.height)
                bands = src.read()
    except (RasterioError, OSError) as error:
        raise PatchReadError(f"{path}: cannot read image ({error})") from error
    return bands[:3].copy() if len(bands) >= 3 else wide_grey_as_rgb(bands[0])


# PIL's single-band modes wider than 8 bits (16-bit PNGs open as I;16): convert("RGB") clips them at 255, which
# turned a 16-bit PNG of values up to 4,000 into 93 % white pixels.
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def wide_grey_as_rgb(grey: np.ndarray) -> np.ndarray:
    """A 16-bit, 32-bit or float grey image as three equal bands in a dtype that holds its values (as an 8-bit
    grey image becomes three equal uint8 bands): prepare then takes its pixel scale from the data."""
    if np.issubdtype(grey.dtype, np.integer) and grey.min() >= 0 and grey.max() <= np.iinfo(np.uint16).max:
        grey = grey.astype(np.uint16)
    elif grey.dtype != np.float32:
        grey = grey.astype(np.float32)
    return np.repeat(grey[None], 3, axis=0)


def read_patch(fmt: str, data_root: str, path: str, name: str, bands: Sequence[str],
               size: tuple[int, int] | None = None) -> np.ndarray:
    """Dispatch on the metadata's `format` column. size: a user's image of another size is resized to it (the
    table's common size, from the card), as BigEarthNet's 20 and 60 m bands are to the 10 m grid."""
    if fmt == FORMAT_BEN_V1:
        return read_ben_v1(data_root, path, name, bands)
    if fmt == FORMAT_BEN_V2:
        return read_ben_v2(data_root, path, bands)
    if fmt == FORMAT_IMAGE:
        pixels = image_channels(read_image(storage.join(data_root, path)), bands, path)
        return pixels if size is None or pixels.shape[1:] == tuple(size) else to_grid(pixels, size)
    raise PatchReadError(f"{name}: unknown format {fmt!r} in metadata")


def image_channels(pixels: np.ndarray, bands: Sequence[str], path: str) -> np.ndarray:
    """The channels `bands` names (prepare calls an image's channels band1..bandN); every channel when `bands` is
    empty or names them all in order."""
    wanted = [int(band[len("band"):]) - 1 for band in bands]
    if not wanted or wanted == list(range(len(pixels))):
        return pixels
    if max(wanted) >= len(pixels):
        raise PatchReadError(f"{path}: has {len(pixels)} channels, not the band{max(wanted) + 1} asked for")
    return pixels[wanted]
