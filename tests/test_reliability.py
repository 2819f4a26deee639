"""Faults injected for real: killed workers and drivers, damaged checkpoints, poisoned batches, collapse."""

import json
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import torch
from test_pretrain import TINY

from geodino.dino.checkpoint import read_checkpoint
from geodino.dino.config import PretrainConfig
from geodino.launch import run_pretraining


def log_epochs(path) -> list[int]:
    if not os.path.exists(path):
        return []
    return [json.loads(line)["epoch"] for line in open(path)]


def checkpoints_in(run_dir) -> int:
    if not os.path.isdir(run_dir):
        return 0
    return len([n for n in os.listdir(run_dir) if n.startswith("checkpoint_") and os.path.isdir(os.path.join(run_dir, n))])


def wait_for_checkpoints(run_dir, count: int, alive=lambda: True) -> None:
    """Until `count` checkpoints are in storage and Ray has registered the last one.

    Ray Train's controller collects reported checkpoints when it polls the workers (every 2 s,
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S); one uploaded but not yet collected is lost with its worker.
    """
    deadline = time.time() + 400
    while time.time() < deadline and checkpoints_in(run_dir) < count and alive():
        time.sleep(0.05)
    time.sleep(2.5)


def ray_train_worker_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"]) if any("RayTrainWorker" in part for part in p.info["cmdline"] or [])]


@pytest.mark.timeout(600)
def test_sigkilled_worker_resumes_from_the_last_checkpoint(ray_session, eurosat_metadata, tmp_path):
    config = PretrainConfig(**TINY, metadata_dir=eurosat_metadata, epochs=3, batch_size_per_gpu=4, max_failures=2,
                            storage_path=str(tmp_path / "runs"), run_name="killed")
    log = tmp_path / "runs" / "killed" / "log.txt"
    killed = {}

    def kill_after_the_first_checkpoint():
        wait_for_checkpoints(tmp_path / "runs" / "killed", 1)
        pids = ray_train_worker_pids()
        if pids:
            killed["pid"], killed["logged"] = pids[0], log_epochs(log)
            os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_after_the_first_checkpoint, daemon=True)
    killer.start()
    result = run_pretraining(config)
    killer.join(5)
    assert killed, "no Ray Train worker process was found to kill"
    assert killed["logged"][:1] == [0]  # the kill came after epoch 0's checkpoint

    assert [m["epoch"] for m in result.metrics] == [0, 1, 2]
    state = read_checkpoint(result.checkpoint_dir)
    assert state["epoch"] == 3
    # AdamW's step count equals the optimizer steps of exactly 3 epochs: nothing was applied twice.
    steps = {int(v["step"]) for v in state["optimizer"]["state"].values()}
    assert steps == {3 * (80 // 4)}
    epochs = log_epochs(log)
    assert epochs.count(0) == 1  # before the registered checkpoint: never repeated
    lost = len(epochs) - 3  # epochs trained twice = work lost to the kill
    assert lost <= config.saveckp_freq, epochs


def test_poisoned_batch_can_be_skipped_instead(ray_session):
    import ray
    from conftest import BatchRuntime

    from geodino.dino.augment import MultiCrop
    from geodino.dino.loop import train_one_epoch
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
