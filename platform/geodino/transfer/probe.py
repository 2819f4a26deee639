"""Linear probe and k-NN on frozen, cached features.

The probe is DINO's linear evaluation: features standardised with training-set
statistics (what a BatchNorm without affine parameters computes at evaluation), one
linear layer, BCE for multi-label sets and cross-entropy for single-label ones, SGD
with momentum (or AdamW) and a cosine learning-rate schedule. Everything runs on
in-memory feature matrices, so a configuration costs seconds, not a backbone pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geodino.errors import GeodinoError
from geodino.metrics import classification_report

OPTIMIZERS = ("sgd", "adamw")  # sgd with momentum 0.9, as DINO's linear evaluation


class LabelFractionError(GeodinoError, ValueError):
    """A label fraction that leaves too few labelled patches to fit a probe."""


@dataclass
class ProbeConfig:
    lr: float = 0.01
    weight_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 256
    optimizer: str = "sgd"  # sgd (momentum 0.9, as DINO) or adamw
    label_fraction: float = 1.0  # share of the training split whose labels are used
    seed: int = 0


def label_subset(count: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded random `fraction` of `count` training rows (at least two)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], not {fraction}")
    rng = np.random.default_rng(seed)
    keep = int(round(count * fraction))
    if keep < 2:
        raise LabelFractionError(f"label fraction {fraction} keeps {keep} of the {count} training patches; the probe "
                                 "needs at least 2 (its features are standardised with their spread): raise it")
    return np.sort(rng.permutation(count)[:keep])


def validation_from_train(count: int, share: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices when a dataset has no validation split (EuroSAT's has none)."""
    order = np.random.default_rng(seed).permutation(count)
    cut = max(1, int(round(count * share)))
    return np.sort(order[cut:]), np.sort(order[:cut])


class LinearProbe(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_labels: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.shape[-1], num_labels)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.softmax(logits, -1) if task == "single_label" else torch.sigmoid(logits)


def train_probe(features: np.ndarray, labels: np.ndarray, task: str, config: ProbeConfig,
                on_epoch: Callable[[int, LinearProbe], None] | None = None) -> LinearProbe:
    """Fit the probe; `on_epoch(epoch, probe)` lets Tune evaluate and report (and stop it early)."""
    torch.manual_seed(config.seed)
    index = label_subset(len(features), config.label_fraction, config.seed)
    x = torch.from_numpy(features[index]).float()
    y = torch.from_numpy(labels[index]).float()
    probe = LinearProbe(x.mean(0), x.std(0).clamp_min(1e-6), y.shape[1])
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(probe.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"optimizer must be sgd or adamw, not {config.optimizer!r}")
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch, eta_min=0)
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        probe.train()
        for batch in torch.randperm(len(x), generator=generator).split(config.batch_size):
            logits = probe(x[batch])
            if task == "single_label":
                loss = F.cross_entropy(logits, y[batch].argmax(1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch(epoch, probe)
    return probe


@torch.no_grad()
def evaluate_probe(probe: LinearProbe, features: np.ndarray, labels: np.ndarray, task: str) -> dict:
    probe.eval()
    logits = probe(torch.tensor(features, dtype=torch.float32))  # a copy: arrays from the object store are read-only
    # Rank by probability, not logit: a softmax logit of one class is not comparable across patches (the other
    # classes' logits shift it), so per-class AP over raw logits understates a single-label probe.
    scores = probabilities(logits, task).numpy()
    return classification_report(labels, scores, scores, task)
