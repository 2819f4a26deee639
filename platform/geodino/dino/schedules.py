"""Per-iteration schedules, precomputed as arrays as in DINO: linear warm-up, then a cosine."""

from __future__ import annotations

import numpy as np


def cosine_schedule(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                    warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    if warmup_epochs > epochs:
        raise ValueError(f"--warmup_epochs {warmup_epochs} is longer than the run's --epochs {epochs}: lower it")
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def schedules(cfg, steps_per_epoch: int, world_size: int) -> dict[str, np.ndarray]:
    """DINO's three per-iteration schedules for a PretrainConfig: lr (scaled by the global batch), weight decay,
    teacher momentum."""
    global_batch = cfg.batch_size_per_gpu * world_size
    return {
        "lr": cosine_schedule(cfg.lr * global_batch / 256.0, cfg.min_lr, cfg.epochs, steps_per_epoch,
                              warmup_epochs=cfg.warmup_epochs),
        "wd": cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, steps_per_epoch),
        "momentum": cosine_schedule(cfg.momentum_teacher, 1.0, cfg.epochs, steps_per_epoch),
    }
