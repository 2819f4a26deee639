"""The Ray Data pipeline: metadata parquet + pixel archive -> stream of training-ready tensors.

Rows come out as ``{"image": float32 (C, H, W), "labels": float32 multi-hot (K,),
"name": str}``. Only the metadata is read up front; pixels are read in
``map_batches`` tasks as the consumer pulls, so memory does not grow with the
archive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import ray

from geodino import storage
from geodino.bands import parse_bands
from geodino.labels import multi_hot
from geodino.pixels import FORMAT_IMAGE, read_patch

METADATA_COLUMNS = ["name", "path", "format", "labels", "original_split", "recommended"]
NORMALIZATIONS = ("max", "stats")


@dataclass
class DataConfig:
    metadata: str  # the parquet written by prepare, or the folder holding metadata.parquet
    data_dir: str | None = None  # where pixels live; default: the data_root prepare recorded
    split: str | None = "train"  # train / validation / test, or None for every row
    bands: str = "rgb"
    normalize: str = "max"  # "max": clip(x / pixel_max, 0, 1); "stats": per-band (x - mean) / std
    recommended_only: bool = True  # leave out snow, cloud/shadow and unlabelled patches
    limit: int | None = None
    read_batch_size: int = 16  # patches per pixel-reading task


def metadata_file(metadata: str) -> str:
    """Accept the seed's --metadata_dir (a folder) as well as the parquet itself."""
    if metadata.endswith(".parquet"):
        return metadata
    return storage.join(metadata, "metadata.parquet")


def load_card(metadata: str) -> dict:
    parquet = metadata_file(metadata)
    card_path = parquet[: -len(".parquet")] + ".json"
    try:
        return json.loads(storage.read_bytes(card_path))
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{card_path}: the card that prepare writes next to {parquet} is missing; rerun experiments/prepare.py"
        ) from error


def resolve_bands(card: dict, bands: str) -> tuple[str, ...]:
    """Band selection for this archive; a user's images always use all their channels."""
    if card["format"] == FORMAT_IMAGE:
        return tuple(card["bands"])
    return parse_bands(bands)


def normalizer(card: dict, bands: tuple[str, ...], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) per band so that normalised = (raw - offset) / scale."""
    if mode == "max":
        count = len(bands)
        return np.zeros(count, np.float32), np.full(count, card["pixel_max"], np.float32)
    if mode == "stats":
        stats = card.get("band_stats") or {}
        if not stats:
            raise ValueError("normalize='stats' needs band statistics, and prepare recorded none for this archive")
        index = {band: i for i, band in enumerate(stats["bands"])}
        missing = [band for band in bands if band not in index]
        if missing:
            raise ValueError(f"no statistics for bands {missing}; prepare computed them for {stats['bands']}")
        mean = np.array([stats["mean"][index[b]] for b in bands], np.float32)
        std = np.array([stats["std"][index[b]] for b in bands], np.float32)
        return mean, std
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, not {mode!r}")


def read_pixels(
    batch: dict,
    data_root: str,
    bands: tuple[str, ...],
    classes: list[str],
    offset: np.ndarray,
    scale: np.ndarray,
    clip: bool,
) -> dict:
    """map_batches UDF: metadata rows in, normalised image tensors and multi-hot labels out."""
    images = []
    for fmt, path, name in zip(batch["format"], batch["path"], batch["name"]):
        pixels = read_patch(fmt, data_root, path, name, bands)
        if pixels.shape[0] != len(offset):
            raise ValueError(f"{name}: {pixels.shape[0]} bands read, {len(offset)} expected")
        pixels = (pixels - offset[:, None, None]) / scale[:, None, None]
        images.append(np.clip(pixels, 0.0, 1.0) if clip else pixels)
    return {
        "image": np.stack(images).astype(np.float32),
        "labels": np.stack([multi_hot(labels, classes) for labels in batch["labels"]]),
        "name": np.asarray(batch["name"]),
    }


def build_dataset(config: DataConfig) -> ray.data.Dataset:
    """A lazily evaluated Ray Dataset of one split; nothing is read until it is iterated."""
    from ray.data.expressions import col

    card = load_card(config.metadata)
    bands = resolve_bands(card, config.bands)
    offset, scale = normalizer(card, bands, config.normalize)
    data_root = config.data_dir or card["data_root"]
    parquet = metadata_file(config.metadata)
    check_metadata_columns(parquet)
    fs, inner = storage.filesystem(parquet)
    dataset = ray.data.read_parquet(inner, filesystem=fs).select_columns(METADATA_COLUMNS)
    if config.split:
        dataset = dataset.filter(expr=col("original_split") == config.split)
    if config.recommended_only:
        dataset = dataset.filter(expr=col("recommended") == True)  # noqa: E712 (an expression, not a test)
    if config.limit:
        dataset = dataset.limit(config.limit)
    return dataset.map_batches(
        read_pixels,
        batch_size=config.read_batch_size,
        fn_kwargs={
            "data_root": data_root,
            "bands": bands,
            "classes": list(card["classes"]),
            "offset": offset,
            "scale": scale,
            "clip": config.normalize == "max",
        },
    )


def check_metadata_columns(parquet: str) -> None:
    """Fail with the file and the missing columns, not with a pyarrow error deep inside a Ray task."""
    import pyarrow.parquet as pq

    fs, inner = storage.filesystem(parquet)
    present = set(pq.read_schema(fs.open_input_file(inner)).names)
    missing = [column for column in METADATA_COLUMNS if column not in present]
    if missing:
        raise ValueError(f"{parquet} lacks the columns {missing}; it was not written by experiments/prepare.py "
                         "(or by an older version): run prepare on the archive again")


def metadata_rows(config: DataConfig, columns: list[str] | None = None):
    """The rows build_dataset yields, as a pandas frame of metadata (no pixels read)."""
    import pyarrow.parquet as pq

    check_metadata_columns(metadata_file(config.metadata))
    fs, inner = storage.filesystem(metadata_file(config.metadata))
    frame = pq.read_table(inner, filesystem=fs, columns=columns or METADATA_COLUMNS).to_pandas()
    if config.split:
        frame = frame[frame["original_split"] == config.split]
    if config.recommended_only:
        frame = frame[frame["recommended"]]
    return frame.head(config.limit).reset_index(drop=True) if config.limit else frame.reset_index(drop=True)


def dataset_size(config: DataConfig) -> int:
    """Number of rows the dataset will yield, from the metadata alone (no pixels read)."""
    return len(metadata_rows(config, columns=["original_split", "recommended"]))


def tensor_columns(dataset: ray.data.Dataset) -> ray.data.Dataset:
    """Drop the patch names, which torch cannot batch, before iter_torch_batches."""
    return dataset.select_columns(["image", "labels"])
