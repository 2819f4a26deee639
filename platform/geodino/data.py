"""The Ray Data pipeline: metadata parquet + pixel archive -> stream of training-ready tensors.

Rows come out as ``{"image": float32 (C, H, W), "labels": float32 multi-hot (K,),
"name": str}``. Only the metadata is read up front; pixels are read in
``map_batches`` tasks as the consumer pulls, so memory does not grow with the
archive.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

import numpy as np

from geodino import storage
from geodino.bands import parse_bands
from geodino.labels import multi_hot
from geodino.pixels import FORMAT_IMAGE, read_patch

METADATA_COLUMNS = ["name", "path", "format", "labels", "original_split", "recommended"]
NORMALIZATIONS = ("max", "stats")


@dataclass
class DataConfig:
    metadata: str  # the parquet written by prepare, or the folder holding metadata.parquet
    data_dir: str | None = None  # where pixels live (a pack or the archive); default: what prepare recorded
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


def card_file(metadata: str) -> str:
    """The JSON card prepare writes beside the metadata parquet (classes, bands, pixel range, pack)."""
    return metadata_file(metadata)[: -len(".parquet")] + ".json"


def load_card(metadata: str) -> dict:
    parquet = metadata_file(metadata)
    card_path = card_file(metadata)
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


def normalize_in_place(images: np.ndarray, offset: np.ndarray, scale: np.ndarray, clip: bool) -> np.ndarray:
    """(raw - offset) / scale per band, clipped to [0, 1] for "max"; on a float32 (C, H, W) or (N, C, H, W) array
    the caller owns, in place: every reader runs this on every sample of every epoch."""
    images -= offset[:, None, None]
    images /= scale[:, None, None]
    if clip:
        np.clip(images, 0.0, 1.0, out=images)
    return images


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
        images.append(pixels.astype(np.float32))
    return {
        "image": normalize_in_place(np.stack(images), offset, scale, clip),
        "labels": np.stack([multi_hot(labels, classes) for labels in batch["labels"]]),
        "name": np.asarray(batch["name"]),
    }


def pixel_root(config: DataConfig, card: dict) -> str:
    """Where the pixels are read from: --data_dir, else the pack prepare made, else the archive itself."""
    return config.data_dir or card.get("packed") or card["data_root"]


def packed_manifest(config: DataConfig, data_root: str) -> dict | None:
    """The pack's manifest when data_root is a finished pack of this metadata; None for an archive of files."""
    from geodino.pack import MANIFEST

    path = storage.join(data_root, MANIFEST)
    if not storage.exists(path):
        return None
    manifest = json.loads(storage.read_bytes(path))
    if not manifest.get("complete"):
        raise ValueError(f"{data_root}: packing has not finished (pack.json says complete: false); rerun the same "
                         "prepare --pack command to continue it")
    rows = check_metadata_columns(metadata_file(config.metadata))
    if rows != manifest["rows"]:
        raise ValueError(f"{data_root} packs {manifest['rows']} patches but {config.metadata} lists {rows}: the pack "
                         "was made from other metadata; pack again (prepare --pack_only) after preparing")
    return manifest


def packed_channels(manifest: dict, bands: tuple[str, ...], data_root: str) -> list[int]:
    """Indices of the requested bands among the packed ones."""
    missing = [band for band in bands if band not in manifest["bands"]]
    if missing:
        raise ValueError(f"{data_root} packs the bands {manifest['bands']}, not {missing}: pack again with those "
                         "--bands, or pass --data_dir pointing at the original archive")
    return [manifest["bands"].index(band) for band in bands]


def binary_as_array(column, shape: list[int], dtype: str) -> np.ndarray:
    """A binary Arrow column of equal-length values as one (N, *shape) array, without a Python object per row."""
    import pyarrow as pa

    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    parts = []
    for array in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]):
        if array.null_count:
            raise ValueError("a packed shard has patches without pixels; pack again")
        offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
        offsets = np.frombuffer(array.buffers()[1], offset_type)[array.offset : array.offset + len(array) + 1]
        if len(array) and not (np.diff(offsets) == expected).all():
            raise ValueError(f"a packed shard holds pixel blobs of other than {expected} bytes; pack again")
        data = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0] : offsets[-1]] if len(array) else np.empty(0, np.uint8)
        parts.append(data.view(np.dtype(dtype).newbyteorder("<")).reshape(len(array), *shape))
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


def decode_packed(table, shape: list[int], dtype: str, channels: list[int], classes: list[str],
                  offset: np.ndarray, scale: np.ndarray, clip: bool) -> dict:
    """map_batches UDF over pack rows (an Arrow table): the same columns read_pixels gives out."""
    raw = binary_as_array(table.column("pixels"), shape, dtype)
    images = (raw if channels == list(range(shape[0])) else raw[:, channels]).astype(np.float32)
    return {
        "image": normalize_in_place(images, offset, scale, clip),
        "labels": np.stack([multi_hot(labels, classes) for labels in table.column("labels").to_pylist()]),
        "name": np.asarray(table.column("name").to_pylist()),
    }


def _filtered(dataset, config: DataConfig):
    from ray.data.expressions import col

    if config.split:
        dataset = dataset.filter(expr=col("original_split") == config.split)
    if config.recommended_only:
        dataset = dataset.filter(expr=col("recommended") == True)  # noqa: E712 (an expression, not a test)
    return dataset.limit(config.limit) if config.limit else dataset


PACKED_BATCH = 256  # decoding a pack is vectorised: bigger tasks, less per-task overhead
METADATA_BLOCK_ROWS = 256  # patches per pixel-reading block of an archive of files: work for every core


def build_dataset(config: DataConfig):
    """A lazily evaluated Ray Dataset of one split; nothing is read until it is iterated."""
    import ray

    card = load_card(config.metadata)
    bands = resolve_bands(card, config.bands)
    offset, scale = normalizer(card, bands, config.normalize)
    data_root = pixel_root(config, card)
    common = {"classes": list(card["classes"]), "offset": offset, "scale": scale, "clip": config.normalize == "max"}
    manifest = packed_manifest(config, data_root)
    if manifest is not None:
        fs, shards = shard_paths(data_root, manifest)
        dataset = ray.data.read_parquet(shards, filesystem=fs).select_columns(
            ["name", "labels", "original_split", "recommended", "pixels"])
        return _filtered(dataset, config).map_batches(
            decode_packed, batch_size=PACKED_BATCH, batch_format="pyarrow",
            fn_kwargs={"shape": manifest["shape"], "dtype": manifest["dtype"],
                       "channels": packed_channels(manifest, bands, data_root), **common})
    parquet = metadata_file(config.metadata)
    rows = check_metadata_columns(parquet)
    fs, inner = storage.filesystem(parquet)
    dataset = ray.data.read_parquet(inner, filesystem=fs).select_columns(METADATA_COLUMNS)
    # The metadata is one small file, i.e. one block: without splitting it, one task would read every patch.
    dataset = _filtered(dataset, config).repartition(max(1, -(-rows // METADATA_BLOCK_ROWS)))
    return dataset.map_batches(
        read_pixels, batch_size=config.read_batch_size, fn_kwargs={"data_root": data_root, "bands": bands, **common})


def packed_images(config: DataConfig, card: dict, data_root: str, manifest: dict) -> np.ndarray:
    """One split of a pack as a (N, C, H, W) array of raw values, read with pyarrow alone (no Ray).

    For launchers that index samples (torch's DistributedSampler); it holds the split in memory at its
    packed size (269,695 RGB BigEarthNet training patches: 23 GB as uint16).
    """
    import pyarrow.dataset as pads

    fs, shards = shard_paths(data_root, manifest)
    condition = None
    if config.split:
        condition = pads.field("original_split") == config.split
    if config.recommended_only:
        recommended = pads.field("recommended") == True  # noqa: E712 (an expression, not a test)
        condition = recommended if condition is None else condition & recommended
    channels = packed_channels(manifest, resolve_bands(card, config.bands), data_root)
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    parts, count = [], 0
    scanner = pads.dataset(shards, filesystem=fs, format="parquet").scanner(columns=["pixels"], filter=condition)
    for batch in scanner.to_batches():  # decode batch by batch: peak memory stays near the split's packed size
        pixels = binary_as_array(batch.column("pixels"), manifest["shape"], manifest["dtype"])
        pixels = pixels[: (config.limit - count) if config.limit else None, channels]
        parts.append(pixels)
        count += len(pixels)
        if config.limit and count >= config.limit:
            break
    return np.concatenate(parts) if parts else np.empty((0, len(channels), *manifest["shape"][1:]), dtype)


def shard_paths(data_root: str, manifest: dict):
    """(pyarrow filesystem, shard paths inside it) of a pack."""
    fs, inner = storage.filesystem(data_root)
    return fs, [posixpath.join(inner, name) for name in manifest["shards"]]


def check_metadata_columns(parquet: str) -> int:
    """Fail with the file and the missing columns, not with a pyarrow error deep inside a Ray task.

    Returns the row count, read from the same footer (one request on S3).
    """
    import pyarrow.parquet as pq

    fs, inner = storage.filesystem(parquet)
    footer = pq.read_metadata(fs.open_input_file(inner))
    present = set(footer.schema.to_arrow_schema().names)
    missing = [column for column in METADATA_COLUMNS if column not in present]
    if missing:
        raise ValueError(f"{parquet} lacks the columns {missing}; it was not written by experiments/prepare.py "
                         "(or by an older version): run prepare on the archive again")
    return footer.num_rows


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


def tensor_columns(dataset):
    """Drop the patch names, which torch cannot batch, before iter_torch_batches."""
    return dataset.select_columns(["image", "labels"])
