"""BigEarthNet-S2 v1.0 folders: one folder per patch, one GeoTIFF per band, a JSON of 43-class labels.

Each patch is checked before it is listed (every band present, of the right size and dtype, readable
to the last pixel with --verify pixels, not all zero; labels present and in the nomenclature); a
patch that fails becomes a row of the rejects file, never an error.
"""

from __future__ import annotations

import json
import os

import numpy as np

from geodino import storage
from geodino.archive.bands import NATIVE_SIZE
from geodino.archive.labels import UnknownLabelError, to_ben19
from geodino.archive.pixels import FORMAT_BEN_V1, PatchReadError, ben_v1_band_path, read_geotiff
from geodino.errors import RejectedPatch

LABELS_SUFFIX = "_labels_metadata.json"


def list_patch_dirs(archive: str) -> list[str]:
    """Names of the sub-folders of the archive (one per patch), sorted for determinism."""
    import pyarrow.fs as pafs

    fs, inner = storage.filesystem(archive)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)


def nested_archive(archive: str, patch_dirs: list[str]) -> str | None:
    """The folder one level down that holds the patch folders, when the archive given holds it instead (a tar
    unpacked into a folder of its own name); None otherwise."""
    for folder in patch_dirs[:5]:
        inner = storage.join(archive, folder)
        sample = list_patch_dirs(inner)[:1]
        if sample and storage.exists(storage.join(inner, sample[0], f"{sample[0]}_labels_metadata.json")):
            return inner
    return None


def check_band(path: str, band: str, verify: str) -> None:
    import rasterio
    from rasterio.errors import RasterioError

    if not storage.exists(path):
        raise RejectedPatch(f"missing band file {os.path.basename(path)}")
    expected = NATIVE_SIZE[band]
    if verify == "pixels":
        try:
            array = read_geotiff(path)
        except PatchReadError as error:
            raise RejectedPatch(f"corrupt or truncated band file {os.path.basename(path)}: {error}") from error
        shape, dtype = array.shape[1:], array.dtype
    else:
        try:
            with storage.raster_env(path), rasterio.open(path) as src:
                shape, dtype = (src.height, src.width), np.dtype(src.dtypes[0])
        except (RasterioError, OSError) as error:
            raise RejectedPatch(f"corrupt band file {os.path.basename(path)}: {error}") from error
    if shape != (expected, expected):
        raise RejectedPatch(
            f"band {band} in {os.path.basename(path)} is {shape[0]}x{shape[1]}, expected {expected}x{expected}"
        )
    if dtype != np.uint16:
        raise RejectedPatch(f"band {band} in {os.path.basename(path)} has dtype {dtype}, expected uint16")
    if verify == "pixels" and not array.any():
        raise RejectedPatch(f"band {band} in {os.path.basename(path)} is all zero (no data)")


def parse_ben_v1_patch(archive: str, name: str, bands: tuple[str, ...], verify: str) -> dict:
    json_path = storage.join(archive, name, name + LABELS_SUFFIX)
    if not storage.exists(json_path):
        raise RejectedPatch(f"label file {name + LABELS_SUFFIX} missing")
    try:
        info = json.loads(storage.read_bytes(json_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RejectedPatch(f"label file {name + LABELS_SUFFIX} is not valid JSON: {error}") from error
    labels_43 = info.get("labels") if isinstance(info, dict) else None
    if not isinstance(labels_43, list) or not labels_43:
        raise RejectedPatch(f"label file {name + LABELS_SUFFIX} has no 'labels' list")
    try:
        labels_19 = to_ben19(labels_43)
    except UnknownLabelError as error:
        raise RejectedPatch(f"label file {name + LABELS_SUFFIX}: {error}") from error
    for band in bands:
        check_band(ben_v1_band_path(archive, name, name, band), band, verify)
    return {
        "name": name,
        "path": name,
        "format": FORMAT_BEN_V1,
        "labels": labels_19,
        "labels_43": list(labels_43),
        "acquisition_date": info.get("acquisition_date"),
    }


def parse_ben_v1_chunk(archive: str, names: list[str], bands: tuple[str, ...], verify: str):
    rows, rejects = [], []
    # No directory listing per open: GDAL would otherwise list the patch folder on every band.
    with storage.raster_env(archive, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        for name in names:
            try:
                rows.append(parse_ben_v1_patch(archive, name, bands, verify))
            except RejectedPatch as reason:
                rejects.append({"name": name, "path": name, "reason": str(reason)})
    return rows, rejects

