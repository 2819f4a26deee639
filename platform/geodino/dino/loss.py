"""The DINO objective: student predictions on every crop match the centred, sharpened teacher on the global crops."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class DINOLoss(nn.Module):
    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        # A low teacher temperature at the start keeps the first epochs from collapsing.
        warmup = min(warmup_teacher_temp_epochs, nepochs)
        self.teacher_temp_schedule = np.concatenate(
            (np.linspace(warmup_teacher_temp, teacher_temp, warmup), np.ones(nepochs - warmup) * teacher_temp)
        )

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        """student_output: (ncrops * B, K); teacher_output: (2 * B, K), global crops first.

        DINO's loss is the mean over pairs (teacher global view iq, student view v != iq) of H(teacher_iq,
        student_v). Cross-entropy is linear in the teacher's probabilities, so the pairs of one student view add
        up to a single term against the sum of its partners (the other global view for a global crop, both for
        a local one): with 2 + 10 crops, 12 log-softmaxes and products over the K-wide head instead of 22, and
        about half the memory kept for the backward pass. The value is the pairwise one (tests/test_dino_math.py).
        """
        student_log_probs = F.log_softmax(student_output / self.student_temp, dim=-1).chunk(self.ncrops)
        temp = self.teacher_temp_schedule[epoch]
        first, second = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(2)
        both = first + second
        total = 0.0
        for v, log_probs in enumerate(student_log_probs):
            partners = (second, first)[v] if v < 2 else both  # a view never teaches itself
            total = total + torch.sum(-partners * log_probs, dim=-1).mean()
        self.update_center(teacher_output)
        pairs = 2 * (self.ncrops - 1)
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA of the teacher's mean output over the global batch (all workers)."""
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        count = torch.tensor([float(len(teacher_output))], device=teacher_output.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = batch_center / count
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DINOv2's KoLeo regulariser: -mean log distance of each L2-normalised feature to its nearest neighbour
    in the batch (the Kozachenko-Leonenko entropy estimator, up to constants).

    Why: with augmentations that keep colour, a few directions (the mean spectrum, brightness) suffice to
    match two views of an image, and DINO's features collapse onto them (effective rank about 4 of 192 on
    EuroSAT, benchmarks/RESULTS.md). Pushing each image away from its nearest neighbour spreads the batch
    over more dimensions.
    """
    x = F.normalize(features.float(), dim=-1)
    with torch.no_grad():
        similarity = x @ x.T
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distances + eps).mean()
