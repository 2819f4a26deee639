"""What the DINO loop needs from whatever launched it, as a Protocol: the loop's only view of Ray or torchrun.

Two implementations exist: ``geodino.launch.ray_train.RayTrainRuntime`` (Ray Train workers fed by Ray
Data, checkpoints handed to Ray) and ``geodino.launch.torchrun.TorchRuntime`` (processes started by
torchrun or mpirun, a torch DataLoader, checkpoints in a local folder). ``BatchRuntime`` below drives the loop
over batches already in memory, in one process: the tests and the GPU step benchmark use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn


class Runtime(Protocol):
    rank: int  # this process's rank among the training processes; rank 0 writes logs and checkpoints
    world_size: int
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move the student to the device and wrap it for data-parallel training when world_size > 1."""

    def epoch_batches(self, epoch: int) -> Iterable[dict]:
        """This process's batches of one epoch: dicts with "image" (B, C, H, W) or "crop0".."cropN"."""

    def latest_state(self) -> dict | None:
        """The newest loadable checkpoint of this run (a DINO checkpoint dict), or None to start fresh."""

    def report(self, metrics: dict, state: dict | None, teacher_backbone: dict | None) -> None:
        """Every rank reports each epoch; rank 0 passes the checkpoint to keep when one is due."""


class BatchRuntime:
    """A Runtime over given batches: one process, no DDP, checkpoints kept in `reports` instead of written."""

    def __init__(self, batches: Iterable[dict], device: str | torch.device = "cpu", checkpoint: dict | None = None):
        self.rank, self.world_size, self.device = 0, 1, torch.device(device)
        self.batches = batches
        self.checkpoint = checkpoint
        self.reports: list[tuple[dict, dict | None]] = []

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def epoch_batches(self, epoch: int) -> Iterable[dict]:
        return self.batches

    def latest_state(self) -> dict | None:
        return self.checkpoint

    def report(self, metrics: dict, state: dict | None, teacher_backbone: dict | None) -> None:
        self.reports.append((metrics, state))
