"""Samples by index, without Ray: a map-style dataset of one split, and a labelled sample held in memory.

Needs neither Ray nor, for a pack, rasterio: the torchrun/mpirun launcher runs on a bare GPU machine
with this alone. A pack is held in memory at its packed size and normalised per item; an archive of
files is read per item through the same readers as the Ray Data pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from geodino.archive.card import image_size, load_card
from geodino.archive.labels import multi_hot
from geodino.archive.packed import packed_channels, packed_images, packed_manifest, packed_rows
from geodino.data.config import DataConfig, metadata_rows, normalize_in_place, normalizer, pixel_root, resolve_bands
from geodino.data.decode import read_pixels


class PatchDataset(Dataset):
    """Map-style dataset of one split: a pack held in memory, or metadata rows with pixels read per item."""

    def __init__(self, config: DataConfig):
        card = load_card(config.metadata)
        self.bands = resolve_bands(card, config.bands)
        self.offset, self.scale = normalizer(card, self.bands, config.normalize)
        self.data_root = pixel_root(config, card)
        self.classes = list(card["classes"])
        self.clip = config.normalize == "max"
        self.size = image_size(card)
        manifest = packed_manifest(config.metadata, self.data_root)
        self.packed = None if manifest is None else packed_images(
            self.data_root, manifest, packed_channels(manifest, self.bands, self.data_root), config.split,
            config.recommended_only, config.limit)
        self.rows = metadata_rows(config) if manifest is None else None

    def __len__(self) -> int:
        return len(self.packed) if self.packed is not None else len(self.rows)

    def __getitem__(self, index: int) -> dict:
        if self.packed is not None:
            pixels = normalize_in_place(self.packed[index].astype(np.float32), self.offset, self.scale, self.clip)
            return {"image": torch.from_numpy(pixels)}
        row = self.rows.iloc[index]
        batch = {"format": [row["format"]], "path": [row["path"]], "name": [row["name"]], "labels": [row["labels"]]}
        pixels = read_pixels(batch, self.data_root, self.bands, self.classes, self.offset, self.scale, self.clip,
                             self.size)
        return {"image": torch.from_numpy(pixels["image"][0])}


def check_readable(config: DataConfig) -> None:
    """Read one patch of the split here, before Ray starts: a wrong --data_dir or an archive moved since prepare is
    then one line naming the file, not an error inside a Ray Data task (Ray's log of it runs to 200 lines)."""
    labelled_images(config, count=1)


def labelled_images(config: DataConfig, count: int | None = None, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """A seeded random `count` rows of the split (all rows when None), as normalised images and multi-hot labels.

    For monitors and benchmarks that want a labelled sample in memory without reading the whole split.
    """
    card = load_card(config.metadata)
    rows = metadata_rows(config)
    if count is not None and count < len(rows):
        rows = rows.iloc[np.sort(np.random.default_rng(seed).permutation(len(rows))[:count])]
    bands = resolve_bands(card, config.bands)
    offset, scale = normalizer(card, bands, config.normalize)
    data_root = pixel_root(config, card)
    classes = list(card["classes"])
    labels = np.stack([multi_hot(row, classes) for row in rows["labels"]]) if len(rows) else np.empty((0, len(classes)))
    manifest = packed_manifest(config.metadata, data_root)
    clip = config.normalize == "max"
    if manifest is not None:
        raw = packed_rows(data_root, manifest, packed_channels(manifest, bands, data_root), list(rows["name"]))
        images = normalize_in_place(raw.astype(np.float32), offset, scale, clip)
    else:
        batch = {column: list(rows[column]) for column in ("format", "path", "name", "labels")}
        images = read_pixels(batch, data_root, bands, classes, offset, scale, clip, image_size(card))["image"]
    return torch.from_numpy(images), labels.astype(np.float32)
