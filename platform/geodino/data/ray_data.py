"""The Ray Data pipeline: metadata parquet + pixel archive -> stream of training-ready tensors.

Rows come out as ``{"image": float32 (C, H, W), "labels": float32 multi-hot (K,),
"name": str}``; with ``raw=True`` a pack's images keep its integer type, for a consumer that normalises
them on its device (``geodino.data.normalize.Normalizer``). Only the metadata (or a pack's list of shards) is
read up front; pixels are read in ``map_batches`` tasks as the consumer pulls, so memory does not grow with the
archive. With a ``shuffle_seed`` the order of that small list changes every epoch (every execution), before any
pixel is read: shuffling the pixel blocks themselves would be a barrier that reads the whole split into the
object store before the first batch.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import ray
from ray.data import RandomSeedConfig
from ray.data.expressions import col

from geodino import storage
from geodino.archive.card import METADATA_COLUMNS, check_metadata_columns, image_size, load_card, metadata_file
from geodino.archive.packed import (
    check_shards_exist,
    packed_channels,
    packed_manifest,
    shard_batches,
    shard_paths,
    split_condition,
)
from geodino.cli import user_error
from geodino.data.config import DataConfig, normalizer, pixel_root, resolve_bands
from geodino.data.decode import decode_packed, read_pixels


class UserErrorsSaidOnce(logging.Filter):
    """Ray Data logs a failed task's exception with its traceback (170 lines for a file gone since prepare, called
    an error "in Ray Data or Ray Core internal code") before it reaches the script, which says such a user's
    mistake in one line: those records are left out; errors of Ray's own keep their traceback. Installed where
    Ray Data's executor runs: the driver, or the actor that feeds Ray Train's workers (it imports this module to
    unpickle the reading functions). A record without an exception is judged by the one being handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return error is None or user_error(error) is None


for _logger in ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions"):
    logging.getLogger(_logger).addFilter(UserErrorsSaidOnce())

PACKED_BATCH = 256  # decoding a pack is vectorised: bigger tasks, less per-task overhead
METADATA_BLOCK_ROWS = 256  # patches per pixel-reading block of an archive of files: work for every core
PACK_COLUMNS = ["name", "labels", "pixels"]  # what decode_packed reads of a shard


def _filtered(dataset: ray.data.Dataset, config: DataConfig) -> ray.data.Dataset:
    if config.split:
        dataset = dataset.filter(expr=col("original_split") == config.split)
    if config.recommended_only:
        dataset = dataset.filter(expr=col("recommended") == True)  # noqa: E712 (an expression, not a test)
    if config.labelled_only:
        dataset = dataset.filter(expr=col("labels").list.len() > 0)
    return dataset


def _limited(dataset: ray.data.Dataset, config: DataConfig) -> ray.data.Dataset:
    return dataset.limit(config.limit) if config.limit else dataset


def shuffled_blocks(dataset: ray.data.Dataset, seed: int | None) -> ray.data.Dataset:
    """Blocks in a new order every execution (epoch), reproducible from the seed; unchanged without one."""
    if seed is None:
        return dataset
    return dataset.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))


def build_dataset(config: DataConfig, raw: bool = False, shuffle_seed: int | None = None) -> ray.data.Dataset:
    """A lazily evaluated Ray Dataset of one split; nothing is read until it is iterated.

    raw: a pack's pixels are handed on undecoded (an archive of files, whose files may differ in type, is
    always decoded to float32): training reads every row every epoch, so bytes moved are what limits it.
    shuffle_seed: training's order; the shards (or metadata blocks) are read in an order new every epoch.
    """
    # A read that fails (a file gone since prepare, a wrong --data_dir) raises geodino's own error, which names the
    # file and ends the script in one line: Ray Data's UserCodeException wrapper loses its cause between processes.
    ray.data.DataContext.get_current().raise_original_map_exception = True
    card = load_card(config.metadata)
    bands = resolve_bands(card, config.bands)
    offset, scale = normalizer(card, bands, config.normalize)
    data_root = pixel_root(config, card)
    common = {"classes": list(card["classes"]), "offset": offset, "scale": scale, "clip": config.normalize == "max"}
    manifest = packed_manifest(config.metadata, data_root)
    if manifest is not None:
        fs, shards = shard_paths(data_root, manifest)
        check_shards_exist(fs, shards)
        listing = ray.data.from_items([{"shard": shard} for shard in shards], override_num_blocks=len(shards))
        return _limited(shuffled_blocks(listing, shuffle_seed).map_batches(
            read_shards, batch_size=1,  # one shard per task; it streams the shard's batches as it decodes them
            fn_kwargs={"filesystem": fs, "condition": split_condition(config.split, config.recommended_only,
                                                                      config.labelled_only),
                       "shape": manifest["shape"], "dtype": manifest["dtype"],
                       "channels": packed_channels(manifest, bands, data_root), "raw": raw, **common}), config)
    parquet = metadata_file(config.metadata)
    rows = check_metadata_columns(parquet)
    fs, inner = storage.filesystem(parquet)
    dataset = ray.data.read_parquet(inner, filesystem=fs).select_columns(METADATA_COLUMNS)
    # The metadata is one small file, i.e. one block: without splitting it, one task would read every patch.
    dataset = _limited(_filtered(dataset, config), config).repartition(max(1, -(-rows // METADATA_BLOCK_ROWS)))
    return shuffled_blocks(dataset, shuffle_seed).map_batches(
        read_pixels, batch_size=config.read_batch_size,
        fn_kwargs={"data_root": data_root, "bands": bands, "size": image_size(card), **common})


def read_shards(batch: dict, filesystem, condition, **decode) -> Iterator[dict]:
    """Shard paths in, decoded rows of the split out, PACKED_BATCH rows at a time (decode_packed's columns);
    `condition` is split_condition's filter."""
    for shard in batch["shard"]:
        for rows in shard_batches(filesystem, shard, PACK_COLUMNS, condition, PACKED_BATCH):
            yield decode_packed(rows, **decode)


def tensor_columns(dataset: ray.data.Dataset) -> ray.data.Dataset:
    """Drop the patch names, which torch cannot batch, before iter_torch_batches."""
    return dataset.select_columns(["image", "labels"])
