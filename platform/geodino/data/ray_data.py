"""The Ray Data pipeline: metadata parquet + pixel archive -> stream of training-ready tensors.

Rows come out as ``{"image": float32 (C, H, W), "labels": float32 multi-hot (K,),
"name": str}``; with ``raw=True`` a pack's images keep its integer type, for a consumer that normalises
them on its device (``geodino.data.normalize.Normalizer``). Only the metadata is read up front; pixels are read in
``map_batches`` tasks as the consumer pulls, so memory does not grow with the
archive.
"""

from __future__ import annotations

import ray
from ray.data.expressions import col

from geodino import storage
from geodino.archive.card import METADATA_COLUMNS, check_metadata_columns, load_card, metadata_file
from geodino.archive.packed import packed_channels, packed_manifest, shard_paths
from geodino.data.config import DataConfig, normalizer, pixel_root, resolve_bands
from geodino.data.decode import decode_packed, read_pixels

PACKED_BATCH = 256  # decoding a pack is vectorised: bigger tasks, less per-task overhead
METADATA_BLOCK_ROWS = 256  # patches per pixel-reading block of an archive of files: work for every core


def _filtered(dataset: ray.data.Dataset, config: DataConfig) -> ray.data.Dataset:
    if config.split:
        dataset = dataset.filter(expr=col("original_split") == config.split)
    if config.recommended_only:
        dataset = dataset.filter(expr=col("recommended") == True)  # noqa: E712 (an expression, not a test)
    return dataset.limit(config.limit) if config.limit else dataset


def build_dataset(config: DataConfig, raw: bool = False) -> ray.data.Dataset:
    """A lazily evaluated Ray Dataset of one split; nothing is read until it is iterated.

    raw: a pack's pixels are handed on undecoded (an archive of files, whose files may differ in type, is
    always decoded to float32): training reads every row every epoch, so bytes moved are what limits it.
    """
    card = load_card(config.metadata)
    bands = resolve_bands(card, config.bands)
    offset, scale = normalizer(card, bands, config.normalize)
    data_root = pixel_root(config, card)
    common = {"classes": list(card["classes"]), "offset": offset, "scale": scale, "clip": config.normalize == "max"}
    manifest = packed_manifest(config.metadata, data_root)
    if manifest is not None:
        fs, shards = shard_paths(data_root, manifest)
        dataset = ray.data.read_parquet(shards, filesystem=fs).select_columns(
            ["name", "labels", "original_split", "recommended", "pixels"])
        return _filtered(dataset, config).map_batches(
            decode_packed, batch_size=PACKED_BATCH, batch_format="pyarrow",
            fn_kwargs={"shape": manifest["shape"], "dtype": manifest["dtype"],
                       "channels": packed_channels(manifest, bands, data_root), "raw": raw, **common})
    parquet = metadata_file(config.metadata)
    rows = check_metadata_columns(parquet)
    fs, inner = storage.filesystem(parquet)
    dataset = ray.data.read_parquet(inner, filesystem=fs).select_columns(METADATA_COLUMNS)
    # The metadata is one small file, i.e. one block: without splitting it, one task would read every patch.
    dataset = _filtered(dataset, config).repartition(max(1, -(-rows // METADATA_BLOCK_ROWS)))
    return dataset.map_batches(
        read_pixels, batch_size=config.read_batch_size, fn_kwargs={"data_root": data_root, "bands": bands, **common})


def tensor_columns(dataset: ray.data.Dataset) -> ray.data.Dataset:
    """Drop the patch names, which torch cannot batch, before iter_torch_batches."""
    return dataset.select_columns(["image", "labels"])
