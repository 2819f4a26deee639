"""Faults injected for real: killed workers and drivers, damaged checkpoints, poisoned batches, collapse."""

import json
import os
import time

import numpy as np
import psutil
import torch
from test_pretrain import TINY

from geodino.dino.config import PretrainConfig


def log_epochs(path) -> list[int]:
    if not os.path.exists(path):
        return []
    return [json.loads(line)["epoch"] for line in open(path)]



def registered_checkpoints(run_dir) -> set[str]:
    """The checkpoint folders Ray Train's controller has recorded in the run's snapshot: what a restart resumes."""
    snapshot = os.path.join(run_dir, "checkpoint_manager_snapshot.json")
    try:
        with open(snapshot) as handle:
            return {result["checkpoint_dir_name"] for result in json.load(handle)["checkpoint_results"]}
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced
        return set()


def wait_for_checkpoints(run_dir, count: int, alive=lambda: True) -> None:
    """Until `count` checkpoints are in storage and Ray has registered them.

    Ray Train's controller collects reported checkpoints when it polls the workers (every 2 s,
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S) and records them in checkpoint_manager_snapshot.json; one uploaded but
    not yet recorded is lost with its worker. On a loaded machine that takes longer than any fixed wait.
    """
    deadline = time.time() + 400
    while time.time() < deadline and len(registered_checkpoints(run_dir)) < count and alive():
        time.sleep(0.05)


def ray_train_worker_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"]) if any("RayTrainWorker" in part for part in p.info["cmdline"] or [])]


def test_poisoned_batch_can_be_skipped_instead(ray_session):
    import ray

    from geodino.dino.augment import MultiCrop
    from geodino.dino.loop import train_one_epoch
    from geodino.dino.runtime import BatchRuntime
    from geodino.dino.state import DinoState

    cfg = PretrainConfig(**TINY, batch_size_per_gpu=2, epochs=1, nonfinite_loss="skip")
    images = np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32)
    images[2:4] = np.nan
    runtime = BatchRuntime(ray.data.from_numpy(images).rename_columns({"data": "image"}).iter_torch_batches(batch_size=2))
    multicrop = MultiCrop(cfg.multicrop())
    state = DinoState.create(cfg, in_chans=3, ncrops=multicrop.ncrops, runtime=runtime, steps_per_epoch=3)
    metrics = train_one_epoch(state, runtime, cfg, multicrop, epoch=0)
    assert metrics["skipped_steps"] == 1 and np.isfinite(metrics["loss"])
    assert all(torch.isfinite(p).all() for p in state.student.parameters())
