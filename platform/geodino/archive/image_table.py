"""A user's table of images (CSV or parquet): a path and labels per row, optionally a split.

Images are multi-band GeoTIFFs or JPEG/PNG (read as RGB), at paths relative to the table's folder or
--data_dir. Rows are checked like BigEarthNet patches: a row that fails is rejected with its line
number and the reason, and images must share one band count.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import pandas as pd

from geodino import storage
from geodino.archive.pixels import FORMAT_IMAGE, PatchReadError, read_image
from geodino.errors import RejectedPatch


def read_image_table(table_path: str) -> pd.DataFrame:
    if table_path.lower().endswith(".parquet"):
        table = pd.read_parquet(table_path)
    else:
        table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    if "path" not in table.columns or not ({"labels", "label"} & set(table.columns)):
        raise ValueError(
            f"{table_path}: needs a 'path' column and a 'labels' (';'-separated or list) or 'label' column; "
            f"has {list(table.columns)}"
        )
    return table


def _labels_of(record: dict) -> list[str]:
    value = record.get("labels", record.get("label"))
    if isinstance(value, str):
        return [part.strip() for part in value.split(";") if part.strip()]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(part) for part in value]


def parse_image_chunk(data_root: str, records: list[dict], verify: str):
    rows, rejects = [], []
    for number, record in records:
        path = str(record["path"])
        try:
            if ".." in path.replace("\\", "/").split("/") or os.path.isabs(path):
                raise RejectedPatch(f"row {number}: path {path!r} leaves the data folder")
            labels = _labels_of(record)
            if not labels:
                raise RejectedPatch(f"row {number}: no label")
            channels = None
            if verify == "pixels":
                pixels = read_image(storage.join(data_root, path))
                if not np.isfinite(pixels).all():
                    raise RejectedPatch(f"row {number}: image {path} has NaN or infinite pixels")
                if not pixels.any():
                    raise RejectedPatch(f"row {number}: image {path} is all zero (no data)")
                channels = pixels.shape[0]
            elif not storage.exists(storage.join(data_root, path)):
                raise RejectedPatch(f"row {number}: image file {path} missing")
            split = str(record.get("split") or "") or None
            if split == "val":
                split = "validation"
            rows.append(
                {
                    "name": os.path.splitext(path)[0].replace("/", "_"),
                    "path": path,
                    "format": FORMAT_IMAGE,
                    "labels": labels,
                    "labels_43": [],
                    "original_split": split,
                    "_channels": channels,
                }
            )
        except PatchReadError as error:
            rejects.append({"name": path, "path": path, "reason": f"row {number}: {error}"})
        except RejectedPatch as reason:
            rejects.append({"name": path, "path": path, "reason": str(reason)})
    return rows, rejects



def reject_mixed_channels(rows: list[dict], rejects: list[dict]):
    """Images must share one band count; the most common count wins, the others are rejected."""
    counts = Counter(row["_channels"] for row in rows if row["_channels"] is not None)
    if not counts:
        return rows, rejects, None
    channels = counts.most_common(1)[0][0]
    kept = []
    for row in rows:
        if row["_channels"] not in (None, channels):
            rejects.append(
                {
                    "name": row["name"],
                    "path": row["path"],
                    "reason": f"image has {row['_channels']} bands; the others have {channels}",
                }
            )
        else:
            kept.append(row)
    return kept, rejects, channels

