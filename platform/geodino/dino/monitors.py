"""Is the run learning? The teacher's entropies, collapse told from the right ones, and an online k-NN score.

DINO's two failure modes (its paper, section 5.3) show in two different entropies of the teacher's
centred, sharpened output:

* collapse to one prototype: every image gets the same distribution, so the entropy of the batch-mean
  distribution falls towards 0. A healthy teacher is sharp per image (low per-sample entropy) but
  spreads its images over many prototypes (high batch-mean entropy), so per-sample entropy alone
  would flag a healthy run;
* uniform collapse: every image's distribution is flat, the per-sample entropy nears log(out_dim).

The loss is the cross-entropy H(teacher, student) = H(teacher) + KL(teacher || student), so the KL
term (loss minus per-sample entropy) is what the student still has to learn.

The k-NN monitor answers the question the loss cannot: are the teacher's features getting better at
telling land cover apart than the same network at random init? It scores the teacher's CLS features
of a labelled subset with DINO's weighted 20-NN (cosine, T = 0.07), as DINO's eval_knn does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geodino.dino.models import create_backbone
from geodino.metrics import classification_report, knn_scores

COLLAPSE_EPOCHS = 3  # consecutive epochs before a collapse warning
ONE_PROTOTYPE_NATS = 0.5  # batch-mean entropy below this: the batch lands on about one prototype
UNIFORM_SHARE = 0.98  # per-sample entropy above this share of log(out_dim): every output is flat


class CollapseWarning(UserWarning):
    """The teacher's output distribution collapsed; training continues but is probably wasted."""


@torch.no_grad()
def teacher_entropy_pair(teacher_output: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """(mean per-sample entropy, entropy of the batch-mean distribution) of the teacher, in nats, as one tensor
    on the teacher's device: the loop sums them per epoch without a host sync per step."""
    probs = F.softmax((teacher_output.float() - center) / temp, dim=-1)
    per_sample = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
    mean = probs.mean(0)
    batch_mean = -(mean * torch.log(mean.clamp_min(1e-12))).sum()
    return torch.stack([per_sample, batch_mean])


def collapse_state(history: list[dict]) -> str | None:
    """'one_prototype' or 'uniform' when the last COLLAPSE_EPOCHS epochs all collapsed the same way."""
    recent = history[-COLLAPSE_EPOCHS:]
    if len(recent) < COLLAPSE_EPOCHS:
        return None
    if all(m["teacher_batch_entropy"] < ONE_PROTOTYPE_NATS for m in recent):
        return "one_prototype"
    if all(m["teacher_entropy"] > UNIFORM_SHARE * m["max_entropy"] for m in recent):
        return "uniform"
    return None


@dataclass
class KnnSets:
    """Labelled images for the k-NN monitor: a bank of training images and queries held out from it."""

    bank_images: torch.Tensor  # (N, C, H, W) normalised as in training
    bank_labels: np.ndarray  # (N, K) multi-hot
    query_images: torch.Tensor
    query_labels: np.ndarray
    task: str  # single_label or multi_label (decides top-1)


class KnnMonitor:
    """Scores a backbone's CLS features on fixed labelled sets; the same score of random init is the bar."""

    def __init__(self, sets: KnnSets, image_size: int, k: int = 20, temperature: float = 0.07,
                 batch_size: int = 256):
        self.sets, self.image_size, self.k, self.temperature, self.batch_size = sets, image_size, k, temperature, batch_size

    @torch.no_grad()
    def features(self, backbone: nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
        """CLS token after the final norm (what DINO's eval_knn uses), at the training global crop size."""
        was_training = backbone.training
        backbone.eval()
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size].to(device, non_blocking=True)
            if batch.shape[-1] != self.image_size or batch.shape[-2] != self.image_size:
                batch = F.interpolate(batch, size=(self.image_size, self.image_size), mode="bilinear",
                                      align_corners=False, antialias=True)
            parts.append(backbone(batch).float().cpu())
        backbone.train(was_training)
        return torch.cat(parts).numpy()

    def score(self, backbone: nn.Module, device: torch.device) -> dict:
        """{"top1", "ap"} of weighted k-NN (top-1 only for single-label data)."""
        sets = self.sets
        bank = self.features(backbone, sets.bank_images, device)
        queries = self.features(backbone, sets.query_images, device)
        scores = knn_scores(bank, sets.bank_labels, queries, k=self.k, temperature=self.temperature)
        report = classification_report(sets.query_labels, scores, scores, sets.task)
        result = {"ap": report["ap_macro"]}
        if "top1" in report:
            result["top1"] = report["top1"]
        return result

    def random_init_score(self, arch: str, patch_size: int, in_chans: int, seed: int, device: torch.device) -> dict:
        """The bar: the same network at random init (the weights of the probes' `random:ARCH/PATCH` source)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = create_backbone(arch, patch_size, in_chans).to(device)
        return self.score(backbone, device)

    def epoch_metrics(self, backbone: nn.Module, bar: dict, device: torch.device) -> dict:
        """knn_ap / knn_top1 of `backbone`, the random-init bar beside them, and what the measurement cost."""
        started = time.perf_counter()
        score = self.score(backbone, device)
        metrics = {f"knn_{key}": value for key, value in score.items()}
        metrics |= {f"knn_random_{key}": value for key, value in bar.items()}
        return metrics | {"knn_seconds": time.perf_counter() - started}
