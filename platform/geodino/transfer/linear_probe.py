"""From a backbone SOURCE to transfer numbers: features per split (cached), probe, k-NN, report."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch

from geodino.archive.card import load_card
from geodino.data.config import DataConfig, dataset_size
from geodino.data.indexed import labelled_images
from geodino.metrics import knn_report
from geodino.ray_cluster import init_ray
from geodino.storage import default_home
from geodino.transfer.backbones import load_backbone
from geodino.transfer.features import FeatureConfig, extract_features
from geodino.transfer.probe import ProbeConfig, evaluate_probe, train_probe, validation_from_train

SPLITS = ("train", "validation", "test")


@dataclass
class LinearProbeConfig:
    # --- the seed's names
    pretrained_weights: str = "random:vit_small"
    arch: str | None = None
    patch_size: int | None = None
    num_labels: int | None = None  # checked against the dataset's classes
    epochs: int = 50
    lr: float = 0.01
    metadata_dir: str | None = None
    data_dir: str | None = None
    output_dir: str = "runs/probe"
    # --- probe and features
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    batch_size_per_gpu: int = 256
    label_fraction: float = 1.0
    n_last_blocks: int = 4
    avgpool_patchtokens: bool = False
    image_size: int | None = None
    bands: str = "rgb"
    normalize: str = "max"
    cache_dir: str | None = None
    knn_k: int = 20
    seed: int = 0

    def probe(self) -> ProbeConfig:
        return ProbeConfig(lr=self.lr, weight_decay=self.weight_decay, epochs=self.epochs,
                           batch_size=self.batch_size_per_gpu, optimizer=self.optimizer,
                           label_fraction=self.label_fraction, seed=self.seed)

    def features(self) -> FeatureConfig:
        return FeatureConfig(n_last_blocks=self.n_last_blocks, avgpool_patchtokens=self.avgpool_patchtokens,
                             image_size=self.image_size)

    def resolved_cache_dir(self) -> str:
        return self.cache_dir or os.path.join(default_home(), "features")


def split_features(source: str, cfg: LinearProbeConfig) -> tuple[dict[str, dict], int]:
    """Features of train/validation/test for one backbone, and how many splits were extracted (not cached).

    A dataset without a validation split (EuroSAT's subset has none) gets a seeded 10 % of train.
    """
    extracted, result = 0, {}
    features = cfg.features()
    for split in SPLITS:
        data = DataConfig(metadata=cfg.metadata_dir, data_dir=cfg.data_dir, split=split, bands=cfg.bands,
                          normalize=cfg.normalize)
        if split == "validation" and dataset_size(data) == 0:
            continue
        result[split], cached = extract_features(source, data, features, cfg.resolved_cache_dir(),
                                                 arch=cfg.arch, patch_size=cfg.patch_size)
        extracted += not cached
    if "validation" not in result:
        train = result["train"]
        keep, held_out = validation_from_train(len(train["features"]), seed=cfg.seed)
        result["validation"] = {key: value[held_out] for key, value in train.items()}
        result["train"] = {key: value[keep] for key, value in train.items()}
    return result, extracted


def with_image_size(source: str, cfg: LinearProbeConfig) -> LinearProbeConfig:
    """`cfg` with the image size its features will be computed at (see probe_image_size)."""
    return dataclasses.replace(cfg, image_size=probe_image_size(source, cfg))


def probe_image_size(source: str, cfg: LinearProbeConfig) -> int | None:
    """--image_size, or the data's own size made a multiple of the backbone's patch size (a ViT needs whole
    patches), said on stderr when it had to change. None: the data's size as it is."""
    data = DataConfig(metadata=cfg.metadata_dir, data_dir=cfg.data_dir, split="train", bands=cfg.bands,
                      normalize=cfg.normalize)
    images, _ = labelled_images(data, count=1)
    in_chans = images.shape[1]
    patch = load_backbone(source, cfg.arch, cfg.patch_size, in_chans).patch_size
    size = cfg.image_size or images.shape[-1]
    if size % patch == 0:
        return cfg.image_size
    fitted = max(patch, patch * round(size / patch))
    where = "--image_size" if cfg.image_size else "the images"
    print(f"{where}: {size} px is not a multiple of the backbone's patch size {patch}; features are computed on "
          f"images resized to {fitted} px (pass --image_size to choose another multiple)", file=sys.stderr)
    return fitted


def check_num_labels(cfg: LinearProbeConfig, classes: list[str]) -> None:
    if cfg.num_labels is not None and cfg.num_labels != len(classes):
        raise ValueError(f"--num_labels {cfg.num_labels} but {cfg.metadata_dir} has {len(classes)} classes: {classes}")


def run_linear_probe(cfg: LinearProbeConfig) -> dict:
    """Train the probe on train, report validation and test, plus k-NN; writes probe.pth and metrics.json."""
    init_ray()
    card = load_card(cfg.metadata_dir)
    check_num_labels(cfg, card["classes"])
    cfg = with_image_size(cfg.pretrained_weights, cfg)
    features, _ = split_features(cfg.pretrained_weights, cfg)
    task = card["task"]
    train = features["train"]
    probe = train_probe(train["features"], train["labels"], task, cfg.probe())
    report = {
        "backbone": cfg.pretrained_weights,
        "task": task,
        "classes": card["classes"],
        "metric": "average precision (scikit-learn), macro over classes with positives, and micro",
        "rows": {split: int(len(value["features"])) for split, value in features.items()},
        "linear": {split: evaluate_probe(probe, features[split]["features"], features[split]["labels"], task)
                   for split in ("validation", "test")},
        "knn": {split: knn_report(train["features"], train["labels"], features[split]["features"],
                                  features[split]["labels"], task, k=cfg.knn_k)
                for split in ("validation", "test")},
        "config": asdict(cfg),
    }
    os.makedirs(cfg.output_dir, exist_ok=True)
    torch.save({"state_dict": probe.state_dict(), "classes": card["classes"], "task": task,
                "config": asdict(cfg)}, os.path.join(cfg.output_dir, "probe.pth"))
    with open(os.path.join(cfg.output_dir, "metrics.json"), "w") as handle:
        json.dump(report, handle, indent=2, default=lambda v: None if isinstance(v, float) and np.isnan(v) else v)
    return report
