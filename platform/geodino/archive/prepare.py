"""Turn an archive of overhead imagery into one metadata parquet (plus a JSON card).

Four kinds of archive are understood:

* BigEarthNet-S2 v1.0 folders (one folder per patch, one GeoTIFF per band and a
  ``*_labels_metadata.json`` with 43-class CORINE labels);
* BigEarthNet v2.0 (reBEN): its ``metadata.parquet`` and its GeoTIFFs as downloaded, or an LMDB;
* a user's table (CSV or parquet) of image paths with labels;
* a folder of images, in class folders (EuroSAT's layout) or not (tiles), read as such a table.

Every patch is checked before it is listed, in parallel processes. A patch that
fails a check is never fatal: it goes to ``<out>.rejects.csv`` with the reason,
and the good rows are written. Outputs are written to a temporary name and moved
into place, so a failed run never destroys the result of an earlier one.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
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
from geodino.archive.bands import check_all_channels_of_images, parse_bands
from geodino.archive.ben_v1 import list_patch_dirs, nested_archive, parse_ben_v1_chunk
from geodino.archive.card import card_file, check_prepare_out, metadata_file, rejects_file
from geodino.archive.config import PrepareConfig
from geodino.archive.detect import detect_format
from geodino.archive.image_folder import image_folder_table, nested_image_folder
from geodino.archive.image_table import (
    TABLE_SUFFIXES,
    channel_names_of,
    class_name_problems,
    images_are_rgb,
    parse_image_chunk,
    pixel_form,
    read_image_table,
    reject_duplicates,
    reject_mismatched_images,
    resized_images,
    rooted_paths,
    with_unique_names,
)
from geodino.archive.labels import BEN19_CLASSES
from geodino.archive.pixel_stats import band_stats, choose_pixel_max, choose_pixel_min
from geodino.archive.pixels import FORMAT_BEN_V1, FORMAT_BEN_V2, FORMAT_IMAGE, read_image
from geodino.archive.reben import (
    find_geotiff_root,
    find_lmdb,
    geotiff_root_candidates,
    parse_ben_v2_chunk,
    read_ben_v2_table,
)
from geodino.archive.splits import hash_split, read_exclusion_lists, read_split_lists
from geodino.errors import ConfigError

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


def apply_splits(frame: pd.DataFrame, config: PrepareConfig, warnings: list[str],
                 pretraining_only: pd.Series | None = None) -> str:
    """Fill original_split (and the noise flags for v1); returns where the split came from. Rows marked
    `pretraining_only` (a user's images without labels) go to train where no split is named: they serve no
    probe."""
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
    else:
        named = frame["original_split"].notna()
        to_train = ~named & (False if pretraining_only is None else pretraining_only)
        frame.loc[to_train, "original_split"] = "train"
        missing = frame["original_split"].isna()
        frame.loc[missing, "original_split"] = frame.loc[missing, "name"].map(hash_split)
        if named.any():
            source = "the archive's own split column" + (" (hash split where empty)" if missing.any() else "")
        else:
            source = "hash of the patch name (52/24/24 %)" if missing.any() else ""
        if to_train.any():
            source = "; ".join(filter(None, [source, "train for images without labels"]))
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


def write_outputs(frame: pd.DataFrame, rejects: list[dict], card: dict, config: PrepareConfig) -> tuple[str, str]:
    card_path, rejects_path = card_file(config.out), rejects_file(config.out)
    table = pa.Table.from_pandas(frame[list(COLUMNS)], schema=SCHEMA, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=65536)
    storage.write_bytes_atomic(metadata_file(config.out), sink.getvalue().to_pybytes())
    storage.write_bytes_atomic(card_path, json.dumps(card, indent=2).encode())
    reject_frame = pd.DataFrame(rejects, columns=["name", "path", "reason"])
    storage.write_bytes_atomic(rejects_path, reject_frame.to_csv(index=False).encode())
    return card_path, rejects_path


def prepare(config: PrepareConfig) -> PrepareResult:
    """Parse, check and write; see the module docstring."""
    started = time.perf_counter()
    check_prepare_out(config.out, config.archive)
    workers = config.workers or os.cpu_count() or 1
    fmt = detect_format(config.archive)
    if fmt == FORMAT_IMAGE:
        check_all_channels_of_images(config.bands)
    elif config.band_names:
        raise ConfigError(f"--band_names names the channels of your own images; {config.archive} is BigEarthNet, "
                          "whose bands have their names: leave --band_names out")
    warnings: list[str] = []
    bands = parse_bands(config.bands)
    classes: list[str] = list(BEN19_CLASSES)
    task_type = "multi_label"
    available_bands: list[str] = list(bands)
    is_rgb = False  # BigEarthNet: whether the chosen bands are R, G, B is decided by the reader's band choice
    band_names = None  # BigEarthNet's bands are named by their own names
    form = None  # a user's images: band count, dtype, height, width

    if fmt == FORMAT_BEN_V1:
        data_root = storage.absolute(config.archive)
        names = list_patch_dirs(config.archive)
        task = partial(parse_ben_v1_chunk, config.archive, bands=bands, verify=config.verify)
        rows, rejects = run_parallel(task, names, workers, "prepare")
    elif fmt == FORMAT_BEN_V2:
        records = read_ben_v2_table(config.archive).to_dict("records")
        data_root, geotiffs = find_lmdb(config.archive), False
        if data_root is None:
            data_root = find_geotiff_root(geotiff_root_candidates(config.archive, config.data_dir),
                                          [record["patch_id"] for record in records])
            geotiffs = True
        if data_root is None:
            raise FileNotFoundError(
                f"{config.archive}: beside metadata.parquet there is neither BigEarthNet v2's GeoTIFF folders "
                "(TILE/PATCH/PATCH_B02.tif, as BigEarthNet-S2.tar.zst unpacks) nor an LMDB (a folder with data.mdb); "
                "unpack the S2 archive there, or give its folder as --data_dir")
        data_root = storage.absolute(data_root)
        task = partial(parse_ben_v2_chunk, data_root, bands=bands, verify=config.verify, geotiffs=geotiffs)
        rows, rejects = run_parallel(task, records, workers, "prepare")
    elif storage.is_folder(config.archive):  # a folder of images (in class folders or not): a row each, named by path
        data_root = storage.absolute(config.archive)
        table, folder_warnings = image_folder_table(config.archive)
        warnings += folder_warnings
        records = [(record["path"], record) for record in table.to_dict("records")]
    else:
        data_root = config.data_dir or storage.parent(config.archive)
        table, data_root = rooted_paths(read_image_table(config.archive), data_root, config.data_dir is not None)
        records = [(f"row {line}", record)  # CSV line numbers: header is line 1
                   for line, record in enumerate(table.to_dict("records"), start=2)]
    if fmt == FORMAT_IMAGE:
        task = partial(parse_image_chunk, data_root, verify=config.verify)
        rows, rejects = run_parallel(task, records, workers, "prepare")
        rows, form = reject_mismatched_images(rows, rejects)
        if form is None and rows:  # --verify header read no pixels: the first image tells the table's form
            form = pixel_form(read_image(storage.join(data_root, rows[0]["path"])))
        rows = with_unique_names(reject_duplicates(rows, rejects))
        resized = resized_images(rows, form)
        if resized:
            warnings.append(f"{len(resized)} of {len(rows)} images are not {form[2]}x{form[3]} px like the others and "
                            f"are resized to it when read (e.g. {', '.join(resized[:3])})")
        classes = sorted({label for row in rows for label in row["labels"]})  # none: images for pretraining only
        for problem in class_name_problems(classes):
            if config.strict:
                raise ValueError(f"{config.archive}: {problem}; fix the table (or leave out --strict to prepare it as "
                                 "it is)")
            warnings.append(f"{problem}; each is its own class")
        # one class per image: a 'label' column (or class folders) whose every row names at most one
        task_type = ("single_label" if "labels" not in table.columns and all(len(row["labels"]) <= 1 for row in rows)
                     else "multi_label")
        available_bands = [f"band{i + 1}" for i in range(form[0] if form else 3)]
        is_rgb = images_are_rgb(data_root, [row["path"] for row in rows])
        channels = len(available_bands)
        band_names = channel_names_of(config.band_names, data_root, [row["path"] for row in rows], channels)
        if band_names is None and channels > 3:
            warnings.append(f"the images' {channels} channels have no names (band1..band{channels}): give them with "
                            "--band_names (EuroSAT MS: B01,B02,...,B8A,B09,B10,B11,B12), so that --bands B04,B03,B02 "
                            "and weights of named bands find them")
        bands = tuple(available_bands)
        for row in rows:
            for key in ("_where", "_form", "_digest"):
                row.pop(key, None)

    if not rows and not rejects:
        raise ValueError(f"{config.archive}: found no patches to prepare; give the root folder of BigEarthNet v1 "
                         "(a folder per patch holding NAME_B02.tif, ...), a reBEN folder (metadata.parquet and its "
                         "GeoTIFFs or LMDB), a table of your images (.csv, .tsv or .parquet with path and label "
                         "columns), or a folder of images (FOLDER/Forest/*.jpg: class folders)")
    if not rows and fmt == FORMAT_BEN_V1:
        inner = nested_archive(config.archive, [reject["name"] for reject in rejects])
        if inner:
            raise ValueError(f"{config.archive}: the patch folders are one level down, in {inner}; give that folder")
        inner = None if storage.is_uri(config.archive) else nested_image_folder(config.archive)
        if inner:
            raise ValueError(f"{config.archive}: the class folders are one level down, in {inner}; give that folder"
                             + "".join(f", or the table {storage.join(config.archive, name)}"
                                       for name in sorted(os.listdir(config.archive))
                                       if name.lower().endswith(TABLE_SUFFIXES)))
    if not rows:
        examples = "; ".join(f"{r['name']}: {r['reason']}" for r in rejects[:3])
        raise ValueError(f"{config.archive}: no usable patch ({len(rejects)} rejected, e.g. {examples})")
    frame = finish_frame(rows)
    unlabelled = frame["labels"].map(len) == 0
    if fmt == FORMAT_IMAGE and unlabelled.any():
        warnings.append(f"{int(unlabelled.sum())} of {len(frame)} images have no label: pretraining uses them "
                        "(split train unless the table names one), probes leave them out")
    split_source = apply_splits(frame, config, warnings, unlabelled if fmt == FORMAT_IMAGE else None)
    # BigEarthNet's recommendation leaves out patches without labels; a user's unlabelled images are for pretraining
    usable = ~frame["snow"] & ~frame["cloud_or_shadow"]
    frame["recommended"] = usable if fmt == FORMAT_IMAGE else usable & ~unlabelled
    frame = frame.sort_values("name", kind="stable").reset_index(drop=True)

    size = tuple(form[2:]) if fmt == FORMAT_IMAGE and form else None
    stats, values, dtype = band_stats(frame, data_root, bands, config.stats_patches, size)
    if fmt != FORMAT_IMAGE:
        dtype = "uint16"  # Sentinel-2 L2A as BigEarthNet distributes it (read back resampled, as float32)
    pixel_max, pixel_scale = choose_pixel_max(fmt, dtype, values, config.pixel_max, warnings)
    pixel_min = choose_pixel_min(values) if fmt == FORMAT_IMAGE else 0.0
    if pixel_min >= pixel_max:
        raise ValueError(f"{config.archive}: the sampled pixels run from {pixel_min:g} (0.1th percentile) to "
                         f"{pixel_max:g} (pixel scale, {pixel_scale}): --normalize max has no range to map to [0, 1]; "
                         "pass a --pixel_max above the data's values")
    if pixel_min:
        pixel_scale += f"; values below 0, so {pixel_min:g} (0.1th percentile) maps to 0"
    card = {
        "format": fmt,
        "archive": config.archive,
        "data_root": data_root,
        "classes": classes,
        "task": task_type,
        "bands": available_bands,
        "band_names": band_names,  # a user's images: what their files call band1..bandN (B02, ...), if anything
        "image_size": size,  # a user's images: their common height and width; readers resize others to it
        "rgb": is_rgb,  # band1, band2, band3 are R, G, B (JPEG/PNG, or a GeoTIFF saying so): probes of RGB weights
        "dtype": dtype,
        "pixel_min": pixel_min,  # --normalize max maps this to 0 ...
        "pixel_max": pixel_max,  # ... and this to 1, clipping to [0, 1]
        "pixel_scale": pixel_scale,  # where pixel_max came from
        "band_stats": stats,
        "split_source": split_source,
        "exclusion_lists": config.exclusions_dir,
        "rows": len(frame),
        "rejected": len(rejects),
        "prepare_config": asdict(config),
    }
    card_path, rejects_path = write_outputs(frame, rejects, card, config)
    return PrepareResult(
        metadata_path=metadata_file(config.out),
        card_path=card_path,
        rejects_path=rejects_path,
        rows=len(frame),
        rejected=len(rejects),
        seconds=time.perf_counter() - started,
        warnings=warnings,
    )



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
        rejects = pd.read_csv(result.rejects_path, dtype=str, keep_default_na=False)  # a name "NA" stays NA
        lines.append(f"  rejected {result.rejected} patches (reasons in {result.rejects_path}):")
        for row in rejects.head(10).itertuples():
            lines.append(f"    {row.name}: {row.reason}")
    for warning in result.warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
