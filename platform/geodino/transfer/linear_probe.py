"""From a backbone SOURCE to transfer numbers: features per split (cached), probe, k-NN, report."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from geodino.archive.card import load_card
from geodino.archive.splits import SPLITS
from geodino.cli import flag
from geodino.data.config import NORMALIZATIONS, DataConfig, dataset_size, unprobeable_split
from geodino.dino.models import ARCHS, VIT_DEPTH
from geodino.errors import ConfigError, DamagedInputError
from geodino.metrics import knn_report
from geodino.outputs import claim_outputs
from geodino.ray_cluster import init_ray
from geodino.storage import default_home, first_location_problem
from geodino.transfer.contract import contract_of, resolve_inputs
from geodino.transfer.features import FeatureConfig, extract_splits, fitted_image_size, source_identity
from geodino.transfer.probe import OPTIMIZERS, ProbeConfig, evaluate_probe, train_probe, validation_from_train


@dataclass
class LinearProbeConfig:
    # --- the seed's names
    pretrained_weights: str = flag(
        "random:vit_small",
        "Backbone to probe: a checkpoint folder or .pth (pretrain's teacher; add #student for the "
        "student), random:ARCH[/PATCH], timm:NAME, hf:REPO")
    arch: str | None = flag(
        None, "Architecture of weights that do not record it (bare state dicts); default: read from the weights")
    patch_size: int | None = flag(None, "Patch size of weights that do not record it; default: read from the weights")
    num_labels: int | None = flag(None, "Expected number of classes; checked against the prepared data's card")
    epochs: int = flag(50, "Epochs of probe training on the frozen features (cached, so cheap: 50-100)")
    lr: float = flag(0.01, "Probe learning rate. 0.01 with sgd; sweep_probe.py searches it")
    metadata_dir: str | None = flag(None, "Metadata parquet written by prepare.py (or its folder), local or s3://")
    data_dir: str | None = flag(
        None, "The pixel archive or pack, if it moved since prepare; default: where prepare found it")
    output_dir: str = flag("runs/probe", "Folder for probe.pth and metrics.json")
    # --- probe and features
    weight_decay: float = flag(0.0, "Probe weight decay")
    optimizer: str = flag("sgd", "Probe optimizer: sgd (momentum 0.9, as DINO's eval) or adamw", choices=OPTIMIZERS)
    batch_size_per_gpu: int = flag(256, "Feature rows per probe step")
    label_fraction: float = flag(
        1.0, "Share of the training split the probe sees, in (0, 1]: 0.01 and 0.1 measure label efficiency")
    n_last_blocks: int = flag(4, "Concatenate the CLS token of the last N blocks (DINO: 4 for ViT-S, 1 for ViT-B)")
    avgpool_patchtokens: bool = flag(False, "Also concatenate the average of the last block's patch tokens")
    image_size: int | None = flag(
        None,
        "Input side in pixels (a multiple of the patch); default: the weights' training crop size, else "
        "the data's own size")
    bands: str | None = flag(None, "Input bands; default: the weights' own bands (their data contract), else rgb")
    normalize: str | None = flag(None, "max or stats; default: the weights' own normalisation, else max", choices=NORMALIZATIONS)
    force: bool = flag(False, "Run even when --bands or --normalize contradict what the weights were trained on")
    cache_dir: str | None = flag(
        None,
        "Folder for cached features, keyed by weights, data and settings; default: "
        "$GEODINO_HOME/features (~/.cache/geodino)")
    knn_k: int = flag(20, "Neighbours of the k-NN probe (DINO: 20)")
    seed: int = flag(0, "Random seed of the probe and of --label_fraction's sample")

    def validate(self) -> None:
        """Refuse values that cannot work, naming the flag, before data, Ray or weights are touched."""
        for name in ("epochs", "lr", "batch_size_per_gpu", "n_last_blocks", "knn_k"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be greater than 0, not {getattr(self, name)}")
        if self.n_last_blocks > VIT_DEPTH:
            raise ConfigError(f"--n_last_blocks {self.n_last_blocks}: geodino's ViTs ({', '.join(ARCHS)}) have "
                              f"{VIT_DEPTH} blocks; DINO concatenates the last 4 for ViT-S, 1 for ViT-B")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight_decay must not be negative, not {self.weight_decay}")
        if not 0 < self.label_fraction <= 1:
            raise ConfigError(f"--label_fraction must lie in (0, 1], not {self.label_fraction}")
        for name, allowed in (("optimizer", ("sgd", "adamw")), ("normalize", ("max", "stats"))):
            if getattr(self, name) is not None and getattr(self, name) not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError(f"--image_size must be greater than 0, not {self.image_size}")
        problem = first_location_problem({f"--{name}": getattr(self, name) for name in (
            "metadata_dir", "data_dir", "output_dir", "cache_dir")}, folders=("--output_dir", "--cache_dir"),
            local=("--output_dir", "--cache_dir"), existing=("--data_dir",))
        if problem:
            raise ConfigError(problem)

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
    splits = {split: DataConfig(metadata=cfg.metadata_dir, data_dir=cfg.data_dir, split=split, bands=cfg.bands,
                                normalize=cfg.normalize, labelled_only=True) for split in SPLITS}
    if dataset_size(splits["validation"]) == 0:
        del splits["validation"]
    result, extracted_splits = extract_splits(source, splits, cfg.features(), cfg.resolved_cache_dir(),
                                              arch=cfg.arch, patch_size=cfg.patch_size)
    extracted = len(extracted_splits)
    if "validation" not in result:
        train = result["train"]
        keep, held_out = validation_from_train(len(train["features"]), seed=cfg.seed)
        result["validation"] = {key: value[held_out] for key, value in train.items()}
        result["train"] = {key: value[keep] for key, value in train.items()}
    return result, extracted


def with_image_size(source: str, cfg: LinearProbeConfig) -> LinearProbeConfig:
    """`cfg` with the bands, normalisation and image size the features of SOURCE are computed with: what was
    typed, else the weights' data contract (geodino.transfer.contract), the size made a multiple of the patch."""
    inputs = resolve_inputs(source, load_card(cfg.metadata_dir), cfg.bands, cfg.normalize, cfg.image_size, cfg.force)
    cfg = dataclasses.replace(cfg, bands=inputs.bands, normalize=inputs.normalize, image_size=inputs.image_size)
    return dataclasses.replace(cfg, image_size=probe_image_size(source, cfg))


def probe_image_size(source: str, cfg: LinearProbeConfig) -> int | None:
    """cfg's image size made a multiple of the backbone's patch size (see fitted_image_size)."""
    data = DataConfig(metadata=cfg.metadata_dir, data_dir=cfg.data_dir, split="train", bands=cfg.bands,
                      normalize=cfg.normalize)
    return fitted_image_size(source, data, cfg.image_size, cfg.arch, cfg.patch_size)


def check_num_labels(cfg: LinearProbeConfig, classes: list[str]) -> None:
    """--num_labels against the card; data without labels (images for pretraining only) cannot be probed."""
    if not classes:
        raise ConfigError(f"--metadata_dir {cfg.metadata_dir}: these images have no labels (prepared for pretraining "
                          "only), so there is nothing to probe; give the metadata of labelled images (a table with a "
                          "label column, or a folder of class folders, through experiments/prepare.py)")
    if cfg.num_labels is not None and cfg.num_labels != len(classes):
        raise ConfigError(f"--num_labels {cfg.num_labels} but {cfg.metadata_dir} has {len(classes)} classes: {classes}")


def check_labelled_splits(cfg: LinearProbeConfig) -> None:
    """Before Ray starts: labelled images in the splits a probe needs (images without labels serve pretraining
    only, and a split may hold nothing else); found after extraction, this was 'the split is empty after filters'."""
    problem = unprobeable_split(cfg.metadata_dir)
    if problem:
        raise ConfigError(f"--metadata_dir {cfg.metadata_dir}: {problem}; a probe is fitted on labelled train images "
                          "and measured on labelled test images: give labelled images those splits (a split column, or "
                          "none for a hash split) and prepare again")

PROBE_KEYS = ("state_dict", "classes", "task", "config")
PROBE_SETTINGS = ("arch", "patch_size", "n_last_blocks", "avgpool_patchtokens", "image_size", "bands", "normalize")


def load_probe(path: str) -> dict:
    """A probe.pth as run_linear_probe saved it, or an error naming the file and what it lacks: predict is the
    step where a user hands over a file, and a wrong one must not end in a KeyError inside a Ray actor."""
    from geodino.transfer.backbones import why_unloadable

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DamagedInputError(f"--probe {path}: {why_unloadable(path, error)}") from error
    lacking = [key for key in PROBE_KEYS if not isinstance(saved, dict) or key not in saved]
    lacking += [key for key in PROBE_SETTINGS if not lacking and key not in saved["config"]]
    if lacking:
        raise DamagedInputError(f"--probe {path}: not a probe written by linear_probe.py (it has no "
                                f"{', '.join(repr(key) for key in lacking)}); give the probe.pth in linear_probe.py's "
                                "--output_dir")
    return saved


def run_linear_probe(cfg: LinearProbeConfig) -> dict:
    """Train the probe on train, report validation and test, plus k-NN; writes probe.pth and metrics.json."""
    cfg.validate()
    card = load_card(cfg.metadata_dir)
    check_num_labels(cfg, card["classes"])
    cfg = with_image_size(cfg.pretrained_weights, cfg)  # checks the weights against the data before Ray starts
    check_labelled_splits(cfg)
    paths = claim_outputs(cfg.output_dir, ("probe.pth", "metrics.json"), "linear_probe.py", "--output_dir")
    init_ray()
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
    torch.save({"state_dict": probe.state_dict(), "classes": card["classes"], "task": task, "config": asdict(cfg),
                "backbone": source_identity(cfg.pretrained_weights), "contract": contract_of(cfg.pretrained_weights)},
               paths["probe.pth"])
    with open(paths["metrics.json"], "w") as handle:
        json.dump(report, handle, indent=2, default=lambda v: None if isinstance(v, float) and np.isnan(v) else v)
    return report
