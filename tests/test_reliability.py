"""Faults injected for real: killed workers and drivers, damaged checkpoints, poisoned batches, collapse."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import torch
from conftest import REPO
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


@pytest.mark.timeout(600)
def test_killed_driver_resumes_when_the_same_command_runs_again(eurosat_metadata, tmp_path):
    flags = [f"--{k}={v}" for k, v in TINY.items()]
    command = [sys.executable, str(REPO / "experiments" / "pretrain.py"), f"--metadata_dir={eurosat_metadata}",
               "--epochs=3", "--batch_size_per_gpu=8", f"--storage_path={tmp_path / 'runs'}", "--run_name=driver",
               *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "runs" / "driver" / "log.txt"
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    wait_for_checkpoints(tmp_path / "runs" / "driver", 1, alive=lambda: driver.poll() is None)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    before = log_epochs(log)
    assert before[:1] == [0] and len(before) < 3

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=500)
    assert again.returncode == 0, again.stderr[-3000:]
    epochs = log_epochs(log)
    assert epochs[: len(before)] == before and sorted(set(epochs)) == [0, 1, 2]
    assert epochs.count(0) == 1  # the checkpointed epoch was not trained again
    final = read_checkpoint(str(tmp_path / "runs" / "driver" / "final"))
    assert final["epoch"] == 3 and [m["epoch"] for m in final["metrics"]] == [0, 1, 2]


@pytest.mark.timeout(600)
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(ray_session, eurosat_metadata, tmp_path):
    config = PretrainConfig(**TINY, metadata_dir=eurosat_metadata, epochs=2, batch_size_per_gpu=8,
                            storage_path=str(tmp_path / "runs"), run_name="damaged")
    first = run_pretraining(config)
    latest = os.path.join(first.storage_checkpoint, "checkpoint.pth")
    with open(latest, "r+b") as handle:  # what a kill in the middle of writing would leave
        handle.truncate(os.path.getsize(latest) // 3)
    resumed = run_pretraining(PretrainConfig(**{**config.__dict__, "epochs": 3}))
    assert [m["epoch"] for m in resumed.metrics] == [0, 1, 2]
    assert resumed.metrics[0] == first.metrics[0]  # epoch 0 came from the intact checkpoint
    assert resumed.metrics[1] != first.metrics[1]  # epoch 1 was trained again: its checkpoint was damaged
    assert read_checkpoint(resumed.checkpoint_dir)["epoch"] == 3
    assert log_epochs(tmp_path / "runs" / "damaged" / "log.txt") == [0, 1, 1, 2]


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
