"""Turn an archive of overhead imagery into one metadata parquet (plus a JSON card).

Three kinds of archive are understood:

* BigEarthNet-S2 v1.0 folders (one folder per patch, one GeoTIFF per band and a
  ``*_labels_metadata.json`` with 43-class CORINE labels);
* BigEarthNet v2.0 (reBEN): its ``metadata.parquet`` and LMDB pixel store;
* a user's table (CSV or parquet) of image paths with labels.

Every patch is checked before it is listed, in parallel processes. A patch that
fails a check is never fatal: it goes to ``<out>.rejects.csv`` with the reason,
and the good rows are written. Outputs are written to a temporary name and moved
into place, so a failed run never destroys the result of an earlier one.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import math
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from geodino import storage
from geodino.bands import NATIVE_SIZE, OPTICAL_MAX, parse_bands
from geodino.labels import BEN19_CLASSES, UnknownLabelError, check_labels, to_ben19
from geodino.pixels import (
    FORMAT_BEN_V1,
    FORMAT_BEN_V2,
    FORMAT_IMAGE,
    PatchReadError,
    ben_v1_band_path,
    read_ben_v2,
    read_geotiff,
    read_image,
    read_patch,
)
from geodino.splits import hash_split, read_exclusion_lists, read_split_lists

LABELS_SUFFIX = "_labels_metadata.json"
COLUMNS = (
    "name",
    "path",
    "format",
    "labels",
    "labels_43",
    "original_split",
    "acquisition_date",
    "country",
    "snow",
    "cloud_or_shadow",
    "recommended",
)
SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("path", pa.string()),
        ("format", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("labels_43", pa.list_(pa.string())),
        ("original_split", pa.string()),
        ("acquisition_date", pa.string()),
        ("country", pa.string()),
        ("snow", pa.bool_()),
        ("cloud_or_shadow", pa.bool_()),
        ("recommended", pa.bool_()),
    ]
)
CHUNK = 128  # patches per parallel task: large enough to hide process overhead


@dataclass
class PrepareConfig:
    archive: str
    out: str = "metadata.parquet"
    splits_dir: str | None = None
    exclusions_dir: str | None = None
    data_dir: str | None = None  # user tables: where relative image paths start
    bands: str = "all"  # bands every BigEarthNet v1 patch must have
    verify: str = "pixels"  # "pixels" reads every band (catches truncation); "header" opens only
    workers: int = 0  # 0: one process per core; 1: in this process
    strict: bool = False
    stats_patches: int = 1000  # patches sampled (from train) for per-band mean/std


@dataclass
class PrepareResult:
    metadata_path: str
    card_path: str
    rejects_path: str
    rows: int
    rejected: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def patches_per_second(self) -> float:
        return (self.rows + self.rejected) / max(self.seconds, 1e-9)


class RejectedPatch(Exception):
    """Raised by a per-patch parser; the message is the reason written to the rejects file."""


def sidecar_paths(out: str) -> tuple[str, str]:
    """(card JSON, rejects CSV) written next to the metadata parquet."""
    stem = out[: -len(".parquet")] if out.endswith(".parquet") else out
    return stem + ".json", stem + ".rejects.csv"


# --------------------------------------------------------------------------- detection


def detect_format(archive: str) -> str:
    if archive.lower().endswith((".csv", ".parquet")) and not os.path.isdir(archive):
        return FORMAT_IMAGE
    if storage.exists(storage.join(archive, "metadata.parquet")):
        return FORMAT_BEN_V2
    return FORMAT_BEN_V1


# --------------------------------------------------------------------------- BigEarthNet v1


def list_patch_dirs(archive: str) -> list[str]:
    """Names of the sub-folders of the archive (one per patch), sorted for determinism."""
    import pyarrow.fs as pafs

    fs, inner = storage.filesystem(archive)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)


def _check_band(path: str, band: str, verify: str) -> None:
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
        _check_band(ben_v1_band_path(archive, name, name, band), band, verify)
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


# --------------------------------------------------------------------------- BigEarthNet v2 (reBEN)


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


# --------------------------------------------------------------------------- a user's image table


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


# --------------------------------------------------------------------------- parallel driver


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_parallel(task, items: list, workers: int, desc: str):
    """Apply `task(chunk) -> (rows, rejects)` to chunks of `items`, in processes, with a progress bar."""
    rows, rejects = [], []
    chunks = _chunks(items, CHUNK)
    bar = tqdm(total=len(items), desc=desc, unit="patch", disable=None)
    if workers == 1 or len(chunks) <= 1:
        results = map(task, chunks)
        for chunk, (good, bad) in zip(chunks, results):
            rows += good
            rejects += bad
            bar.update(len(chunk))
    else:
        # spawn, not fork: the caller may hold Ray or GDAL threads that must not be forked.
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            submitted = [pool.submit(task, chunk) for chunk in chunks]
            sizes = {future: len(chunk) for future, chunk in zip(submitted, chunks)}
            for future in futures.as_completed(submitted):
                bar.update(sizes[future])
            for future in submitted:  # in submission order, so the output is deterministic
                good, bad = future.result()
                rows += good
                rejects += bad
    bar.close()
    return rows, rejects


# --------------------------------------------------------------------------- assembly


def apply_splits(frame: pd.DataFrame, config: PrepareConfig, warnings: list[str]) -> str:
    """Fill original_split (and the noise flags for v1); returns where the split came from."""
    if config.splits_dir:
        assignment = read_split_lists(config.splits_dir)
        frame["original_split"] = frame["name"].map(assignment)
        unknown = len(set(assignment) - set(frame["name"]))
        if unknown:
            examples = sorted(set(assignment) - set(frame["name"]))[:3]
            warnings.append(
                f"split lists in {config.splits_dir} name {unknown} patches that are not in this archive "
                f"(e.g. {', '.join(examples)}); they are ignored"
            )
        unassigned = int(frame["original_split"].isna().sum())
        if unassigned:
            warnings.append(f"{unassigned} patches are in no split list; their original_split is empty")
        source = "official lists"
    elif frame["original_split"].isna().all():
        frame["original_split"] = frame["name"].map(hash_split)
        source = "hash of the patch name (52/24/24 %)"
    else:
        missing = frame["original_split"].isna()
        frame.loc[missing, "original_split"] = frame.loc[missing, "name"].map(hash_split)
        source = "the archive's own split column" + (" (hash split where empty)" if missing.any() else "")
    if config.exclusions_dir:
        flags = read_exclusion_lists(config.exclusions_dir)
        frame["snow"] = frame["name"].isin(flags["snow"])
        frame["cloud_or_shadow"] = frame["name"].isin(flags["cloud_or_shadow"])
    return source


def finish_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = False if column in ("snow", "cloud_or_shadow") else None
    frame["snow"] = frame["snow"].fillna(False).astype(bool)
    frame["cloud_or_shadow"] = frame["cloud_or_shadow"].fillna(False).astype(bool)
    frame["labels_43"] = frame["labels_43"].map(lambda v: list(v) if isinstance(v, (list, np.ndarray)) else [])
    return frame


def band_stats(frame: pd.DataFrame, data_root: str, bands: tuple[str, ...], limit: int) -> dict:
    """Per-band mean and std of raw values over a deterministic sample of training patches."""
    pool = frame[frame["recommended"] & (frame["original_split"] == "train")]
    if pool.empty:
        pool = frame
    sample = pool.sort_values("name").head(limit) if len(pool) <= limit else pool.sample(limit, random_state=0)
    total = total_sq = None
    count = 0
    for row in sample.itertuples():
        pixels = read_patch(row.format, data_root, row.path, row.name, bands).astype(np.float64)
        flat = pixels.reshape(pixels.shape[0], -1)
        total = flat.sum(1) if total is None else total + flat.sum(1)
        total_sq = (flat**2).sum(1) if total_sq is None else total_sq + (flat**2).sum(1)
        count += flat.shape[1]
    if not count:
        return {}
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return {"bands": list(bands), "mean": mean.round(4).tolist(), "std": std.round(4).tolist(), "patches": len(sample)}


def write_outputs(frame: pd.DataFrame, rejects: list[dict], card: dict, config: PrepareConfig) -> tuple[str, str]:
    card_path, rejects_path = sidecar_paths(config.out)
    table = pa.Table.from_pandas(frame[list(COLUMNS)], schema=SCHEMA, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=65536)
    storage.write_bytes_atomic(config.out, sink.getvalue().to_pybytes())
    storage.write_bytes_atomic(card_path, json.dumps(card, indent=2).encode())
    reject_frame = pd.DataFrame(rejects, columns=["name", "path", "reason"])
    storage.write_bytes_atomic(rejects_path, reject_frame.to_csv(index=False).encode())
    return card_path, rejects_path


def prepare(config: PrepareConfig) -> PrepareResult:
    """Parse, check and write; see the module docstring."""
    started = time.perf_counter()
    workers = config.workers or os.cpu_count() or 1
    fmt = detect_format(config.archive)
    warnings: list[str] = []
    bands = parse_bands(config.bands)
    classes: list[str] = list(BEN19_CLASSES)
    task_type = "multi_label"
    pixel_max = OPTICAL_MAX
    available_bands: list[str] = list(bands)

    if fmt == FORMAT_BEN_V1:
        data_root = config.archive if storage.is_uri(config.archive) else os.path.abspath(config.archive)
        names = list_patch_dirs(config.archive)
        task = partial(parse_ben_v1_chunk, config.archive, bands=bands, verify=config.verify)
        rows, rejects = run_parallel(task, names, workers, "prepare")
    elif fmt == FORMAT_BEN_V2:
        data_root = os.path.abspath(find_lmdb(config.archive))
        records = read_ben_v2_table(config.archive).to_dict("records")
        task = partial(parse_ben_v2_chunk, data_root, bands=bands, verify=config.verify)
        rows, rejects = run_parallel(task, records, workers, "prepare")
    else:
        data_root = config.data_dir or os.path.dirname(os.path.abspath(config.archive))
        table = read_image_table(config.archive)
        records = list(enumerate(table.to_dict("records"), start=2))  # CSV line numbers: header is line 1
        task = partial(parse_image_chunk, data_root, verify=config.verify)
        rows, rejects = run_parallel(task, records, workers, "prepare")
        rows, rejects, channels = _reject_mixed_channels(rows, rejects)
        classes = sorted({label for row in rows for label in row["labels"]})
        task_type = "single_label" if "label" in table.columns and "labels" not in table.columns else "multi_label"
        pixel_max = 255.0
        available_bands = [f"band{i + 1}" for i in range(channels or 3)]
        bands = ()
        for row in rows:
            row.pop("_channels", None)

    if not rows:
        examples = "; ".join(f"{r['name']}: {r['reason']}" for r in rejects[:3])
        raise ValueError(f"{config.archive}: no usable patch ({len(rejects)} rejected, e.g. {examples or 'none found'})")
    frame = finish_frame(rows)
    split_source = apply_splits(frame, config, warnings)
    frame["recommended"] = ~frame["snow"] & ~frame["cloud_or_shadow"] & (frame["labels"].map(len) > 0)
    frame = frame.sort_values("name", kind="stable").reset_index(drop=True)

    stats = band_stats(frame, data_root, bands, config.stats_patches) if bands else {}
    card = {
        "format": fmt,
        "archive": config.archive,
        "data_root": data_root,
        "classes": classes,
        "task": task_type,
        "bands": available_bands,
        "pixel_max": pixel_max,
        "band_stats": stats,
        "split_source": split_source,
        "exclusion_lists": config.exclusions_dir,
        "rows": len(frame),
        "rejected": len(rejects),
        "prepare_config": asdict(config),
    }
    card_path, rejects_path = write_outputs(frame, rejects, card, config)
    return PrepareResult(
        metadata_path=config.out,
        card_path=card_path,
        rejects_path=rejects_path,
        rows=len(frame),
        rejected=len(rejects),
        seconds=time.perf_counter() - started,
        warnings=warnings,
    )


def _reject_mixed_channels(rows: list[dict], rejects: list[dict]):
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


def summarise(result: PrepareResult, frame: pd.DataFrame | None = None) -> str:
    frame = pd.read_parquet(result.metadata_path) if frame is None else frame
    lines = [
        f"wrote {result.rows} rows to {result.metadata_path} "
        f"({result.patches_per_second:.0f} patches/s, {result.seconds:.1f} s)",
        f"  splits: {dict(Counter(frame['original_split'].fillna('none')))}",
        f"  recommended: {int(frame['recommended'].sum())}  snow: {int(frame['snow'].sum())}  "
        f"cloud/shadow: {int(frame['cloud_or_shadow'].sum())}",
        f"  card: {result.card_path}",
    ]
    if result.rejected:
        rejects = pd.read_csv(result.rejects_path)
        lines.append(f"  rejected {result.rejected} patches (reasons in {result.rejects_path}):")
        for row in rejects.head(10).itertuples():
            lines.append(f"    {row.name}: {row.reason}")
    for warning in result.warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
