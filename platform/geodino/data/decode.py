"""Rows in, training-ready tensors out: the one place where raw pixels become normalised float32 images.

Both pipelines use it: the Ray Data pipeline in its map_batches tasks and the indexed dataset the
torchrun launcher reads, so a sample is the same tensor whichever launcher trains on it.
"""

from __future__ import annotations

import numpy as np

from geodino.archive.labels import multi_hot
from geodino.archive.packed import binary_as_array
from geodino.archive.pixels import read_patch
from geodino.data.config import normalize_in_place
from geodino.errors import DamagedInputError


def read_pixels(
    batch: dict,
    data_root: str,
    bands: tuple[str, ...],
    classes: list[str],
    offset: np.ndarray,
    scale: np.ndarray,
    clip: bool,
    size: tuple[int, int] | None = None,
) -> dict:
    """Metadata rows in (an archive of files), normalised image tensors and multi-hot labels out; size: the card's
    image_size, to which a user's image of another size is resized."""
    images = []
    for fmt, path, name in zip(batch["format"], batch["path"], batch["name"]):
        pixels = read_patch(fmt, data_root, path, name, bands, size)
        if pixels.shape[0] != len(offset):
            raise DamagedInputError(f"{name}: {pixels.shape[0]} bands read, {len(offset)} expected (the image "
                                    "changed since prepare: prepare again)")
        images.append(pixels.astype(np.float32))
    return {
        "image": normalize_in_place(np.stack(images), offset, scale, clip),
        "labels": np.stack([multi_hot(labels, classes) for labels in batch["labels"]]),
        "name": np.asarray(batch["name"]),
    }


def decode_packed(table, shape: list[int], dtype: str, channels: list[int], classes: list[str],
                  offset: np.ndarray, scale: np.ndarray, clip: bool, raw: bool = False) -> dict:
    """Pack rows in (an Arrow table or record batch), the same columns read_pixels gives out.

    raw: the pixels stay in the pack's integer type (a half or a quarter of float32's bytes through the object
    store and the cache); the consumer normalises them on its device with Normalizer. A pack of floats (a user's
    float32 images) is normalised here all the same: Normalizer takes floats as normalised already.
    """
    pixels = binary_as_array(table.column("pixels"), shape, dtype)
    images = pixels if channels == list(range(shape[0])) else pixels[:, channels]
    raw = raw and np.dtype(dtype).kind in "ui"
    return {
        "image": np.ascontiguousarray(images) if raw else normalize_in_place(images.astype(np.float32), offset,
                                                                               scale, clip),
        "labels": np.stack([multi_hot(labels, classes) for labels in table.column("labels").to_pylist()]),
        "name": np.asarray(table.column("name").to_pylist()),
    }
