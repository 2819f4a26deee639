"""One entry to pretraining: pick the launcher the config names and run it.

The choice of launcher is also the choice of whether Ray is needed at all, so Ray Train's module is
imported only when ``--launcher ray`` is chosen: a bare GPU machine without Ray runs ``--launcher
torchrun`` through this same function.
"""

from __future__ import annotations

import dataclasses
import os

from geodino.archive.card import load_card
from geodino.data.config import DataConfig, dataset_size, resolve_bands
from geodino.dino.config import PretrainConfig, steps_per_epoch_for
from geodino.launch.result import PretrainResult
from geodino.launch.torchrun import run_torchrun


def check_data(cfg: PretrainConfig) -> None:
    """The data against the flags, from the metadata alone: a wrong path, a band the data does not have, a batch
    larger than the data, all named here, before Ray or a process group starts."""
    card = load_card(cfg.metadata_dir)
    resolve_bands(card, cfg.bands)
    workers = int(os.environ.get("WORLD_SIZE", 1)) if cfg.launcher == "torchrun" else cfg.num_workers
    data = DataConfig(metadata=cfg.metadata_dir, data_dir=cfg.data_dir, split="train", bands=cfg.bands,
                      normalize=cfg.normalize, limit=cfg.limit)
    steps_per_epoch_for(dataset_size(data), dataclasses.replace(cfg, num_workers=workers))


def run_pretraining(cfg: PretrainConfig) -> PretrainResult | None:
    """Train; returns the result (None on a torchrun/mpirun rank other than 0)."""
    cfg.validate()
    cfg = cfg.with_absolute_paths()
    if cfg.metadata_dir:
        check_data(cfg)
    if cfg.launcher == "torchrun":
        return run_torchrun(cfg)
    if cfg.launcher == "ray":
        from geodino.launch.ray_train import run_ray_train  # the one place that decides Ray is needed

        return run_ray_train(cfg)
    raise AssertionError(f"unchecked launcher {cfg.launcher!r}")  # validate() refuses it
