"""BigEarthNet v2.0 (reBEN): its metadata.parquet (patch_id, labels, split, ...) and an LMDB of safetensors."""

from __future__ import annotations

import os

import pandas as pd

from geodino import storage
from geodino.archive.labels import BEN19_CLASSES, UnknownLabelError, check_labels
from geodino.archive.pixels import FORMAT_BEN_V2, PatchReadError, read_ben_v2


def find_lmdb(archive: str) -> str:
    for dirpath, _, filenames in os.walk(archive):
        if "data.mdb" in filenames:
            return dirpath
    raise FileNotFoundError(f"{archive}: no LMDB (a folder with data.mdb) found next to metadata.parquet")


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


def parse_ben_v2_chunk(lmdb_path: str, records: list[dict], bands: tuple[str, ...], verify: str):
    rows, rejects = [], []
    for record in records:
        name = record["patch_id"]
        try:
            labels = check_labels(list(record["labels"]), BEN19_CLASSES)
            if verify == "pixels":
                read_ben_v2(lmdb_path, name, bands)
            rows.append(
                {
                    "name": name,
                    "path": name,
                    "format": FORMAT_BEN_V2,
                    "labels": labels,
                    "labels_43": [],
                    "original_split": record.get("split"),
                    "country": record.get("country"),
                    "snow": bool(record.get("contains_seasonal_snow", False)),
                    "cloud_or_shadow": bool(record.get("contains_cloud_or_shadow", False)),
                }
            )
        except (UnknownLabelError, PatchReadError) as reason:
            rejects.append({"name": name, "path": name, "reason": str(reason)})
    return rows, rejects

