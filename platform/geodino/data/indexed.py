"""A map-style dataset of one split, for launchers that index samples (torch's DistributedSampler).

Needs neither Ray nor, for a pack, rasterio: the torchrun/mpirun launcher runs on a bare GPU machine
with this alone. A pack is held in memory at its packed size and normalised per item; an archive of
files is read per item through the same readers as the Ray Data pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from geodino.archive.card import load_card
from geodino.archive.packed import packed_channels, packed_images, packed_manifest
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
        pixels = read_pixels(batch, self.data_root, self.bands, self.classes, self.offset, self.scale, self.clip)
        return {"image": torch.from_numpy(pixels["image"][0])}
