"""BigEarthNet v2.0 (reBEN): its metadata.parquet (patch_id, labels, split, ...) and its pixels, either as the
official download unpacks them (BigEarthNet-S2.tar.zst: TILE/PATCH/PATCH_B02.tif, one GeoTIFF per band, the
layout of v1's patch folders one level deeper) or as an LMDB of safetensors (ConfigILM's rico-hdl encoding)."""

from __future__ import annotations

import os

import pandas as pd

from geodino import storage
from geodino.archive.ben_v1 import check_band
from geodino.archive.labels import BEN19_CLASSES, UnknownLabelError, check_labels
from geodino.archive.pixels import FORMAT_BEN_V1, FORMAT_BEN_V2, PatchReadError, ben_v1_band_path, read_ben_v2
from geodino.errors import RejectedPatch


def find_lmdb(archive: str) -> str | None:
    """The folder holding data.mdb: the archive or one of its folders (ConfigILM's BigEarthNet-V2-LMDB), or None.
    No deeper: beside the GeoTIFFs of the download, a walk would list all 549,488 patch folders."""
    for folder in folder_and_subfolders(archive):
        if os.path.exists(os.path.join(folder, "data.mdb")):
            return folder
    return None


def patch_folder(patch_id: str) -> str:
    """A reBEN patch's folder below the GeoTIFF root: its tile (the id without the trailing _ROW_COL), then itself."""
    return f"{patch_id.rsplit('_', 2)[0]}/{patch_id}"


def find_geotiff_root(candidates: list[str], patch_ids: list[str]) -> str | None:
    """The first candidate folder holding TILE/PATCH/PATCH_B02.tif for one of the first patches: the archive
    itself, the folder the tar unpacks into (BigEarthNet-S2), or --data_dir."""
    for root in candidates:
        for patch_id in patch_ids[:20]:
            if storage.exists(ben_v1_band_path(root, patch_folder(patch_id), patch_id, "B02")):
                return root
    return None


def folder_and_subfolders(folder: str) -> list[str]:
    """`folder` and the folders in it: where reBEN's pixels lie once unpacked (BigEarthNet-S2, BigEarthNet-V2-LMDB)."""
    subfolders = sorted(entry.path for entry in os.scandir(folder) if entry.is_dir()) if os.path.isdir(folder) else []
    return [folder, *subfolders]


def geotiff_root_candidates(archive: str, data_dir: str | None) -> list[str]:
    return ([data_dir] if data_dir else []) + folder_and_subfolders(archive)


def read_ben_v2_table(archive: str) -> pd.DataFrame:
    frames = [pd.read_parquet(storage.join(archive, "metadata.parquet"))]
    noisy = storage.join(archive, "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    if storage.exists(noisy):
        frames.append(pd.read_parquet(noisy))
    table = pd.concat(frames, ignore_index=True)
    missing = {"patch_id", "labels", "split"} - set(table.columns)
    if missing:
        raise ValueError(f"{archive}/metadata.parquet lacks columns {sorted(missing)}")
    return table


def parse_ben_v2_chunk(pixel_root: str, records: list[dict], bands: tuple[str, ...], verify: str,
                       geotiffs: bool = False):
    """Rows of reBEN's table whose labels and pixels check out, and rejects with their reasons. With `geotiffs`,
    `pixel_root` is the GeoTIFF root and rows read as v1's patch folders (format ben_v1, path TILE/PATCH);
    otherwise it is the LMDB."""
    rows, rejects = [], []
    with storage.raster_env(pixel_root, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):  # as v1: no listing per band
        for record in records:
            try:
                rows.append(parse_ben_v2_record(pixel_root, record, bands, verify, geotiffs))
            except (UnknownLabelError, PatchReadError, RejectedPatch) as reason:
                rejects.append({"name": record["patch_id"], "path": record["patch_id"], "reason": str(reason)})
    return rows, rejects


def parse_ben_v2_record(pixel_root: str, record: dict, bands: tuple[str, ...], verify: str, geotiffs: bool) -> dict:
    name = record["patch_id"]
    labels = check_labels(list(record["labels"]), BEN19_CLASSES)
    path = patch_folder(name) if geotiffs else name
    for band in bands if geotiffs else ():
        check_band(ben_v1_band_path(pixel_root, path, name, band), band, verify)
    if verify == "pixels" and not geotiffs:
        read_ben_v2(pixel_root, name, bands)
    return {
        "name": name,
        "path": path,
        "format": FORMAT_BEN_V1 if geotiffs else FORMAT_BEN_V2,
        "labels": labels,
        "labels_43": [],
        "original_split": record.get("split"),
        "country": record.get("country"),
        "snow": bool(record.get("contains_seasonal_snow", False)),
        "cloud_or_shadow": bool(record.get("contains_cloud_or_shadow", False)),
    }
