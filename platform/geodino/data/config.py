"""Which patches a pipeline yields and how their pixels are scaled: the data selection shared by every reader.

``DataConfig`` names the metadata, the split, the bands and the normalisation; the functions here turn
it into what readers need (the band list, the per-band offset and scale, the rows of the split) from
the metadata and its card alone, without reading pixels and without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from geodino import storage
from geodino.archive.bands import RGB_BANDS, UnknownBandError, parse_bands, sentinel2_name
from geodino.archive.card import METADATA_COLUMNS, check_metadata_columns, metadata_file
from geodino.archive.pixels import FORMAT_IMAGE
from geodino.archive.splits import SPLITS
from geodino.cli import flag
from geodino.errors import ConfigError

NORMALIZATIONS = ("max", "stats")


@dataclass
class DataConfig:
    metadata: str  # the parquet written by prepare, or the folder holding metadata.parquet
    data_dir: str | None = None  # where pixels live (a pack or the archive); default: what prepare recorded
    split: str | None = "train"  # train / validation / test, or None for every row
    bands: str = "rgb"
    normalize: str = "max"  # "max": clip(x / pixel_max, 0, 1); "stats": per-band (x - mean) / std
    recommended_only: bool = True  # leave out snow, cloud/shadow and BigEarthNet's unlabelled patches
    labelled_only: bool = False  # also leave out a user's images without labels (pretraining takes them, probes not)
    limit: int | None = None
    read_batch_size: int = 16  # patches per pixel-reading task


@dataclass
class StreamConfig:
    """stream.py's flags: a split through the Ray Data pipeline, to see what training would be fed and how fast."""

    metadata_dir: str | None = flag(None, "Metadata parquet (or its folder); default: the embedded demo archive")
    data_dir: str | None = flag(None, "The pixel archive or pack, if it moved since prepare")
    split: str = flag("train", "Split to stream", choices=SPLITS)
    bands: str = flag("rgb", "rgb, all, or a list such as B04,B03,B02,B08")
    normalize: str = flag("max", "max: divide by the card's pixel scale; stats: per-band mean and std",
                          choices=NORMALIZATIONS)
    batch_size_per_gpu: int = flag(32, "Patches per batch", aliases=("--batch_size",))
    batches: int = flag(5, "Batches to stream; 0: all")

    def validate(self) -> None:
        if self.batch_size_per_gpu < 1:
            raise ConfigError(f"--batch_size_per_gpu must be at least 1, not {self.batch_size_per_gpu}")
        if self.batches < 0:
            raise ConfigError(f"--batches must be at least 0 (0: all), not {self.batches}")


def resolve_bands(card: dict, bands: str) -> tuple[str, ...]:
    """Band selection for this archive. A user's images: every channel by default (rgb, all), or some of them by
    the card's names (band4,band3,band2 of a 13-band Sentinel-2 GeoTIFF is its red, green, blue), or by the names
    its files give them (B04,B03,B02, also spelt B4,B3,B2). Always answered in the card's bandN names."""
    if card["format"] == FORMAT_IMAGE:
        own = tuple(card["bands"])
        if bands in (None, "rgb", "all"):
            return own
        named = dict(zip(card.get("band_names") or (), own))
        asked = [band.strip() for band in bands.split(",")]
        chosen = tuple(named.get(band, named.get(sentinel2_name(band) or band, band)) for band in asked)
        unknown = [band for band, channel in zip(asked, chosen) if channel not in own]
        if unknown or len(set(chosen)) != len(chosen):
            problem = f"{unknown[0]!r} is not one of them" if unknown else "a channel is named twice"
            listed = ", ".join(f"{channel} ({name})" if name != channel else channel
                               for channel, name in zip(own, channel_names(card, own)))
            raise UnknownBandError(f"--bands {bands!r}: the images of this table have the channels {listed} "
                                   f"({problem}); give some of them, in the order wanted, or all")
        return chosen
    return parse_bands(bands)


def channel_names(card: dict, bands: tuple[str, ...]) -> tuple[str, ...]:
    """The chosen bands by the names the world knows them by: a user's image channels by what their files call
    them (B04 rather than band3) where they do, so that weights record them so and are matched with BigEarthNet's."""
    names = card.get("band_names") if card["format"] == FORMAT_IMAGE else None
    if not names:
        return tuple(bands)
    return tuple(dict(zip(card["bands"], names)).get(band, band) for band in bands)


def chosen_are_rgb(card: dict, bands: tuple[str, ...]) -> bool:
    """Whether the chosen bands are red, green, blue, in that order: Sentinel-2's B04, B03, B02 (BigEarthNet's, or
    so named by a user's GeoTIFFs), or band1..band3 of an image table whose card says rgb (a card from before the
    flag: a 3-channel table)."""
    if channel_names(card, bands) == RGB_BANDS:
        return True
    return (card["format"] == FORMAT_IMAGE and bool(card.get("rgb", len(card["bands"]) == 3))
            and tuple(bands) == ("band1", "band2", "band3"))


def pixel_root(config: DataConfig, card: dict) -> str:
    """Where the pixels are read from: --data_dir, else the pack prepare made, else the archive itself."""
    return config.data_dir or card.get("packed") or card["data_root"]


def pixel_range(described: dict) -> tuple[float, float]:
    """What --normalize max maps to 0 and 1, from a card or a data contract (pixel_min is 0 where absent: cards and
    contracts written before it, and data that never goes below zero)."""
    return float(described.get("pixel_min") or 0.0), float(described["pixel_max"])


def normalizer(card: dict, bands: tuple[str, ...], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) per band so that normalised = (raw - offset) / scale."""
    if mode == "max":
        low, high = pixel_range(card)
        return np.full(len(bands), low, np.float32), np.full(len(bands), high - low, np.float32)
    if mode == "stats":
        stats = card.get("band_stats") or {}
        if not stats:
            raise ConfigError("normalize='stats' needs band statistics, and prepare recorded none for this archive")
        index = {band: i for i, band in enumerate(stats["bands"])}
        missing = [band for band in bands if band not in index]
        if missing:
            raise ConfigError(f"no statistics for bands {missing}; prepare computed them for {stats['bands']}")
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


def metadata_rows(config: DataConfig, columns: list[str] | None = None):
    """The rows a pipeline over `config` yields, as a pandas frame of metadata (no pixels read)."""
    import pyarrow.parquet as pq

    parquet = metadata_file(config.metadata)
    check_metadata_columns(parquet)
    fs, inner = storage.filesystem(parquet)
    filtered_by = ["original_split", "recommended"] + (["labels"] if config.labelled_only else [])
    if columns is not None:
        columns = columns + [column for column in filtered_by if column not in columns]
    frame = pq.read_table(inner, filesystem=fs, columns=columns or METADATA_COLUMNS).to_pandas()
    if config.split:
        frame = frame[frame["original_split"] == config.split]
    if config.recommended_only:
        frame = frame[frame["recommended"]]
    if config.labelled_only:
        frame = frame[frame["labels"].map(len) > 0]
    return frame.head(config.limit).reset_index(drop=True) if config.limit else frame.reset_index(drop=True)


def empty_split_problem(config: DataConfig) -> str:
    """Why `config`, which its caller counted empty, yields no rows, naming the splits the metadata holds (a folder
    of tiles is all train, while visualize and predict read the test split by default)."""
    listed = held_splits(config)
    if not listed:
        return f"{config.metadata} holds no patches{' that prepare recommends' if config.recommended_only else ''}"
    return f"--split {config.split}: {config.metadata} holds no patches of that split; it holds {listed}: choose one"


def held_splits(config: DataConfig) -> str:
    """The splits the metadata holds under `config`'s other filters, with their counts ('test (4)'); '' if none."""
    every = metadata_rows(replace(config, split=None, limit=None), columns=["original_split"])
    return ", ".join(f"{split} ({count})" for split, count in every["original_split"].value_counts().items())


def unprobeable_split(metadata: str) -> str | None:
    """Why a probe cannot run on this metadata, or None: it is fitted on labelled train images and measured on
    labelled test images (images without labels serve pretraining only, and a split may hold nothing else)."""
    for split in ("train", "test"):
        data = DataConfig(metadata=metadata, split=split)
        if dataset_size(replace(data, labelled_only=True)) == 0:
            unlabelled = dataset_size(data)
            held = f"holds no labelled images ({unlabelled} without labels)" if unlabelled else "is empty"
            return f"its {split} split {held}"
    return None


def dataset_size(config: DataConfig) -> int:
    """Number of rows a pipeline over `config` yields, from the metadata alone (no pixels read)."""
    return len(metadata_rows(config, columns=["original_split", "recommended"]))
