"""What every launcher reads off the prepared data before the loop starts: the input bands, and the k-NN sets.

The loop (geodino.dino) knows nothing of archives, so the launcher turns the card into an ``InputSpec``
(band names, whether they are R, G, B, where zero signal lies after normalisation) and, when the
metadata has labels, loads the labelled images of the k-NN monitor, on rank 0 only.
"""

from __future__ import annotations

import numpy as np

from geodino.archive.card import load_card
from geodino.data.config import DataConfig, channel_names, chosen_are_rgb, dataset_size, normalizer, resolve_bands
from geodino.data.indexed import labelled_images
from geodino.dino.config import InputSpec, PretrainConfig
from geodino.dino.monitors import KnnMonitor, KnnSets

MIN_QUERIES = 20  # a validation split smaller than this is not used for the k-NN queries


def input_spec(cfg: PretrainConfig) -> InputSpec:
    card = load_card(cfg.metadata_dir)
    bands = resolve_bands(card, cfg.bands)
    offset, scale = normalizer(card, bands, cfg.normalize)
    zero = tuple(float(v) for v in (-offset / scale))
    stats = cfg.normalize == "stats"
    return InputSpec(bands=channel_names(card, bands), rgb=chosen_are_rgb(card, bands), zero_level=zero,
                     normalize=cfg.normalize,
                     pixel_max=float(card["pixel_max"]), pixel_min=float(card.get("pixel_min", 0.0)),
                     format=card["format"],
                     band_mean=tuple(map(float, offset)) if stats else None,
                     band_std=tuple(map(float, scale)) if stats else None)


def knn_monitor(cfg: PretrainConfig) -> KnnMonitor | None:
    """The k-NN monitor: `knn_samples` training images as the bank, queries from the validation split (or,
    without one, other training images). None when the monitor is off or the data has no labels."""
    if not cfg.knn_every or not load_card(cfg.metadata_dir).get("classes"):
        return None
    common = dict(metadata=cfg.metadata_dir, data_dir=cfg.data_dir, bands=cfg.bands, normalize=cfg.normalize,
                  labelled_only=True)
    queries = max(MIN_QUERIES, cfg.knn_samples // 2)
    validation = DataConfig(split="validation", **common)
    if dataset_size(validation) >= MIN_QUERIES:
        bank_images, bank_labels = labelled_images(DataConfig(split="train", **common), cfg.knn_samples, cfg.seed)
        query_images, query_labels = labelled_images(validation, queries, cfg.seed)
    else:  # no validation split (EuroSAT's subset): hold other training images out as queries
        images, labels = labelled_images(DataConfig(split="train", **common), cfg.knn_samples + queries, cfg.seed)
        order = np.random.default_rng(cfg.seed).permutation(len(images))
        cut = min(cfg.knn_samples, len(images) * 2 // 3)
        bank, held_out = np.sort(order[:cut]), np.sort(order[cut:])
        bank_images, bank_labels, query_images, query_labels = images[bank], labels[bank], images[held_out], labels[held_out]
    if not bank_labels.any() or len(query_images) == 0:
        return None
    task = load_card(cfg.metadata_dir)["task"]
    return KnnMonitor(KnnSets(bank_images, bank_labels, query_images, query_labels, task),
                      image_size=cfg.global_crops_size)
