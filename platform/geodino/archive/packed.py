"""Read a pack (see pack.py for the format) with pyarrow alone: its manifest, its shards, its pixels.

Why separate from the writer: every reader needs this (the Ray Data pipeline, the torchrun launcher's
in-memory dataset, a GPU machine without Ray or rasterio), and none of them needs the writer's
GeoTIFF reading or process pool.
"""

from __future__ import annotations

import json
import posixpath

import numpy as np

from geodino import storage
from geodino.archive.card import check_metadata_columns
from geodino.errors import DamagedInputError

MANIFEST = "pack.json"


def read_manifest(pack_dir: str) -> dict | None:
    """The pack's manifest as written, finished or not; None when there is no pack."""
    path = storage.join(pack_dir, MANIFEST)
    return json.loads(storage.read_bytes(path)) if storage.exists(path) else None


def packed_manifest(metadata: str, data_root: str) -> dict | None:
    """The manifest when data_root is a finished pack of this metadata; None for an archive of files."""
    manifest = read_manifest(data_root)
    if manifest is None:
        return None
    if not manifest.get("complete"):
        raise DamagedInputError(f"{data_root}: packing has not finished (pack.json says complete: false); rerun the "
                                "same prepare --pack command to continue it")
    rows = check_metadata_columns(metadata)
    if rows != manifest["rows"]:
        raise DamagedInputError(f"{data_root} packs {manifest['rows']} patches but {metadata} lists {rows}: the pack "
                         "was made from other metadata; pack again (prepare --pack_only) after preparing")
    return manifest


def packed_channels(manifest: dict, bands: tuple[str, ...], data_root: str) -> list[int]:
    """Indices of the requested bands among the packed ones."""
    missing = [band for band in bands if band not in manifest["bands"]]
    if missing:
        raise DamagedInputError(f"{data_root} packs the bands {manifest['bands']}, not {missing}: pack again with "
                                "those --bands, or pass --data_dir pointing at the original archive")
    return [manifest["bands"].index(band) for band in bands]


def shard_paths(data_root: str, manifest: dict):
    """(pyarrow filesystem, shard paths inside it) of a pack."""
    fs, inner = storage.filesystem(data_root)
    return fs, [posixpath.join(inner, name) for name in manifest["shards"]]


def check_shards_exist(fs, shards: list[str]) -> None:
    """A shard deleted or not yet copied fails here, named, not in a reading task mid-epoch."""
    import pyarrow.fs as pafs

    missing = [info.path for info in fs.get_file_info(shards) if info.type == pafs.FileType.NotFound]
    if missing:
        raise DamagedInputError(f"{missing[0]}: this shard of the pack is missing ({len(missing)} of {len(shards)} "
                                "are); copy it back, or pack again (prepare --pack_only)")


def split_condition(split: str | None, recommended_only: bool, labelled_only: bool = False):
    """A pyarrow filter keeping one split's rows (only recommended ones, only labelled ones); None keeps every
    row."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    conditions = []
    if split:
        conditions.append(pads.field("original_split") == split)
    if recommended_only:
        conditions.append(pads.field("recommended") == True)  # noqa: E712 (an expression, not a test)
    if labelled_only:
        conditions.append(pc.list_value_length(pads.field("labels")) > 0)
    condition = None
    for each in conditions:
        condition = each if condition is None else condition & each
    return condition


def shard_batches(fs, shard: str, columns: list[str], condition, rows: int):
    """One shard's rows that pass `condition`, in record batches of at most `rows` (empty ones skipped).

    Why per shard: a reading task that knows its file needs no listing or footer fetch up front, which Ray Data's
    parquet reader repeats every epoch (about a second per epoch on 2 cores, measured).
    """
    import pyarrow.dataset as pads

    for batch in pads.dataset(shard, filesystem=fs, format="parquet").to_batches(
            columns=columns, filter=condition, batch_size=rows):
        if batch.num_rows:
            yield batch


def binary_as_array(column, shape: list[int], dtype: str) -> np.ndarray:
    """A binary Arrow column of equal-length values as one (N, *shape) array, without a Python object per row."""
    import pyarrow as pa

    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    parts = []
    for array in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]):
        if array.null_count:
            raise DamagedInputError("a packed shard has patches without pixels; pack again")
        offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
        offsets = np.frombuffer(array.buffers()[1], offset_type)[array.offset : array.offset + len(array) + 1]
        if len(array) and not (np.diff(offsets) == expected).all():
            raise DamagedInputError(f"a packed shard holds pixel blobs of other than {expected} bytes; pack again")
        data = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0] : offsets[-1]] if len(array) else np.empty(0, np.uint8)
        parts.append(data.view(np.dtype(dtype).newbyteorder("<")).reshape(len(array), *shape))
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


def packed_images(data_root: str, manifest: dict, channels: list[int], split: str | None, recommended_only: bool,
                  limit: int | None = None) -> np.ndarray:
    """One split of a pack as a (N, C, H, W) array of raw values, read with pyarrow alone (no Ray).

    For launchers that index samples (torch's DistributedSampler); it holds the split in memory at its
    packed size (269,695 RGB BigEarthNet training patches: 23 GB as uint16).
    """
    import pyarrow.dataset as pads

    fs, shards = shard_paths(data_root, manifest)
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    parts, count = [], 0
    scanner = pads.dataset(shards, filesystem=fs, format="parquet").scanner(
        columns=["pixels"], filter=split_condition(split, recommended_only))
    for batch in scanner.to_batches():  # decode batch by batch: peak memory stays near the split's packed size
        pixels = binary_as_array(batch.column("pixels"), manifest["shape"], manifest["dtype"])
        pixels = pixels[: (limit - count) if limit else None, channels]
        parts.append(pixels)
        count += len(pixels)
        if limit and count >= limit:
            break
    return np.concatenate(parts) if parts else np.empty((0, len(channels), *manifest["shape"][1:]), dtype)


def packed_rows(data_root: str, manifest: dict, channels: list[int], names: list[str]) -> np.ndarray:
    """The raw pixels of the named patches, (N, C, H, W) in the order of `names`; streams the shards, so memory
    holds only the chosen patches."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    fs, shards = shard_paths(data_root, manifest)
    wanted = pads.field("name").isin(pa.array(list(names), pa.string()))
    found: dict[str, np.ndarray] = {}
    scanner = pads.dataset(shards, filesystem=fs, format="parquet").scanner(columns=["name", "pixels"], filter=wanted)
    for batch in scanner.to_batches():
        pixels = binary_as_array(batch.column("pixels"), manifest["shape"], manifest["dtype"])[:, channels]
        for name, image in zip(batch.column("name").to_pylist(), pixels):
            found[name] = image
    missing = [name for name in names if name not in found]
    if missing:
        raise DamagedInputError(f"{data_root} holds no pixels for {missing[:3]} ({len(missing)} patches): pack again")
    return np.stack([found[name] for name in names])
