"""Pack an archive's pixels into a few large Parquet shards, so training opens no per-patch files.

BigEarthNet keeps one small GeoTIFF per band and patch: 590k patches x 3 bands is
1.8 million file opens per epoch, which is what starves a GPU. A pack holds the
chosen bands of every patch already on the 10 m grid, as raw integers, in shards
of a few thousand patches:

    DIR/pack.json            bands, dtype, shape, shard size, rows; "complete" once every shard is written
    DIR/shard-00000.parquet  name, labels, original_split, recommended, pixels (C*H*W raw values, little-endian)

Why Parquet with a plain binary column: pyarrow alone reads it (Ray Data, the torchrun launcher, a GPU
machine without Ray), it streams by row group, and it lives on S3 like the metadata. The shape and
dtype are in pack.json rather than in a Ray tensor type, so nothing but pyarrow is needed to decode.

Resumable and parallel: shard i always holds metadata rows [i*shard_size, (i+1)*shard_size), so a
rerun with the same settings knows what each shard must hold, keeps the shards already in place and
writes the rest, one process per shard. A shard appears under its final name only when it is whole
(local: written to a temporary name and renamed; S3: one upload that completes or leaves nothing).
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geodino import storage
from geodino.archive.bands import check_all_channels_of_images, parse_bands
from geodino.archive.card import image_size, load_card, metadata_file, write_card
from geodino.archive.packed import MANIFEST, read_manifest
from geodino.archive.pixels import FORMAT_IMAGE, PatchReadError, read_patch
from geodino.errors import GeodinoError

ROW_GROUP = 256  # patches per Parquet row group: what one reader holds in memory at a time
CARRIED_COLUMNS = ["name", "labels", "original_split", "recommended"]  # enough to filter and label without a join


@dataclass
class PackConfig:
    metadata: str  # the parquet written by prepare (or its folder)
    out_dir: str  # local folder or s3:// prefix
    bands: str | None = None  # BigEarthNet's bands to pack (None: rgb); image archives keep all their channels
    shard_size: int = 2048  # patches per shard
    workers: int = 0  # 0: one process per core


@dataclass
class PackResult:
    out_dir: str
    shards: int
    written: int  # shards written by this run (the others were already there)
    rows: int
    seconds: float


class PackMismatchError(GeodinoError, ValueError):
    """DIR already holds a pack made with other settings; continuing would mix them."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


PACKED_IMAGE_DTYPES = ("uint8", "uint16", "int16", "float32")  # a user's images in their own type; others as float32


def storage_dtype(card: dict) -> str:
    """The type that holds the archive's values as they are: a user's images' own (8 or 16 bit, signed 16 bit for
    SAR or elevations, float32 for reflectances or dB; wider types as float32), 16 bit for Sentinel-2."""
    dtype = card.get("dtype")
    if card["format"] == FORMAT_IMAGE and dtype is not None:
        return dtype if dtype in PACKED_IMAGE_DTYPES else "float32"
    if dtype in ("uint8", "uint16"):
        return dtype
    return "uint8" if card["pixel_max"] <= 255 else "uint16"


def packed_bands(config: PackConfig, card: dict) -> list[str]:
    """Image archives keep all their channels; BigEarthNet packs the chosen bands."""
    if card["format"] == FORMAT_IMAGE:
        check_all_channels_of_images(config.bands)
        return list(card["bands"])
    return list(parse_bands(config.bands or "rgb"))


def plan_for(config: PackConfig, card: dict, names: list[str], shape: tuple[int, ...]) -> dict:
    """Everything a rerun must agree on before it may continue an existing pack."""
    bands = packed_bands(config, card)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return {
        "bands": bands,
        "dtype": storage_dtype(card),
        "shape": list(shape),
        "shard_size": config.shard_size,
        "rows": len(names),
        "names_sha256": digest,
        "shards": [shard_name(i) for i in range(-(-len(names) // config.shard_size))],
        "format": card["format"],
    }


def check_same_plan(out_dir: str, existing: dict, plan: dict) -> None:
    different = [key for key in plan if existing.get(key) != plan[key]]
    if different:
        details = "; ".join(f"{key}: pack has {existing.get(key)!r}, now {plan[key]!r}" for key in different
                            if key not in ("shards",))
        raise PackMismatchError(f"{out_dir} already holds a pack made with other settings ({details}); "
                                "pack into a new folder, or delete this one to start over")


def to_storage(pixels: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """Round resampled values back to integers, refusing values the storage type cannot hold; floats as float32."""
    if np.dtype(dtype).kind == "f":
        return pixels.astype(np.dtype(dtype).newbyteorder("<"))
    info = np.iinfo(dtype)
    low, high = float(pixels.min()), float(pixels.max())
    if low < info.min or high > info.max:
        raise PatchReadError(f"{name}: values {low:g}..{high:g} do not fit {dtype}; this archive cannot be packed "
                             "as integers")
    return np.rint(pixels).astype(np.dtype(dtype).newbyteorder("<"))


SHARD_SCHEMA = pa.schema([("name", pa.string()), ("labels", pa.list_(pa.string())),
                          ("original_split", pa.string()), ("recommended", pa.bool_()), ("pixels", pa.binary())])


def write_shard(index: int, rows: list[dict], data_root: str, read_bands: list[str] | tuple, plan: dict,
                out_dir: str) -> str:
    """Read the pixels of one shard's rows and write the shard; runs in a worker process."""
    final = storage.join(out_dir, shard_name(index))
    fs, inner = storage.filesystem(final)
    target = inner if storage.is_uri(final) else inner + ".partial"
    try:
        # Pixels stored plain: no dictionary (it would only pay off for duplicated patches) and no compression
        # (reflectances barely compress, and decompressing costs the readers' CPU).
        with fs.open_output_stream(target) as stream, pq.ParquetWriter(
                stream, SHARD_SCHEMA, use_dictionary=CARRIED_COLUMNS,
                compression={**{column: "snappy" for column in CARRIED_COLUMNS}, "pixels": "none"}) as writer:
            for start in range(0, len(rows), ROW_GROUP):
                group = rows[start : start + ROW_GROUP]
                blobs = [packed_pixels(row, data_root, read_bands, plan) for row in group]
                columns = {column: [row[column] for row in group] for column in CARRIED_COLUMNS}
                writer.write_table(pa.table({**columns, "pixels": blobs}, schema=SHARD_SCHEMA))
    except BaseException:
        if target != inner:
            fs.delete_file(target)  # a killed process leaves it; the next run overwrites it
        raise
    if target != inner:
        fs.move(target, inner)
    return final


def packed_pixels(row: dict, data_root: str, bands: list[str] | tuple, plan: dict) -> bytes:
    size = tuple(plan["shape"][1:]) if row["format"] == FORMAT_IMAGE else None  # a user's images: one size
    pixels = read_patch(row["format"], data_root, row["path"], row["name"], bands, size)
    if list(pixels.shape) != plan["shape"]:
        raise PatchReadError(f"{row['name']}: pixels of shape {tuple(pixels.shape)}, the pack holds "
                             f"{tuple(plan['shape'])}; a pack needs one patch size")
    return to_storage(pixels, plan["dtype"], row["name"]).tobytes()


def _shard_task(args: tuple) -> str:
    return write_shard(*args)


def pack(config: PackConfig) -> PackResult:
    """Write every missing shard of the pack, in parallel; see the module docstring."""
    started = time.perf_counter()
    card = load_card(config.metadata)
    fs, inner = storage.filesystem(metadata_file(config.metadata))
    records = pq.read_table(inner, filesystem=fs, columns=["path", "format", *CARRIED_COLUMNS]).to_pylist()
    names = [record["name"] for record in records]
    if not names:
        raise ValueError(f"{config.metadata}: no rows to pack")
    read_bands = () if card["format"] == FORMAT_IMAGE else packed_bands(config, card)  # images: every channel
    first = records[0]
    shape = read_patch(first["format"], card["data_root"], first["path"], first["name"], read_bands,
                       image_size(card)).shape
    plan = plan_for(config, card, names, shape)
    existing = read_manifest(config.out_dir)
    if existing is not None:
        check_same_plan(config.out_dir, existing, plan)
    elif not storage.is_uri(config.out_dir) and os.path.isdir(config.out_dir) and os.listdir(config.out_dir):
        raise PackMismatchError(f"{config.out_dir} holds {len(os.listdir(config.out_dir))} files and no {MANIFEST}: "
                                "pack only into an empty or new folder, or into a pack made with the same settings")
    storage.write_bytes_atomic(storage.join(config.out_dir, MANIFEST),
                               json.dumps({**plan, "complete": False}, indent=1).encode())

    todo = [i for i, name in enumerate(plan["shards"]) if not storage.exists(storage.join(config.out_dir, name))]
    tasks = [(i, records[i * config.shard_size : (i + 1) * config.shard_size], card["data_root"], read_bands, plan,
              config.out_dir) for i in todo]
    workers = min(config.workers or os.cpu_count() or 1, max(1, len(tasks)))
    if workers == 1:
        for task in tasks:
            _shard_task(task)
    else:
        # spawn, not fork: the caller may hold Ray or GDAL threads that must not be forked.
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for future in futures.as_completed([pool.submit(_shard_task, task) for task in tasks]):
                future.result()  # the first failure stops the run; finished shards stay for the rerun

    storage.write_bytes_atomic(storage.join(config.out_dir, MANIFEST),
                               json.dumps({**plan, "complete": True, "pack_config": asdict(config)}, indent=1).encode())
    # Record the pack in the card, so training reads it without being told (--data_dir still overrides).
    write_card(config.metadata, {**card, "packed": storage.absolute(config.out_dir)})
    return PackResult(out_dir=config.out_dir, shards=len(plan["shards"]), written=len(todo), rows=len(names),
                      seconds=time.perf_counter() - started)
