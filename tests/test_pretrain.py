"""Real Ray Train runs (gloo on CPU) on real imagery: learning, checkpoints, a restart after a worker is killed,
and the torchrun launcher. (A 12-band run, a damaged checkpoint and a warm restart: test_s3.py, on S3.)"""

import json
import math
import os
import signal
import threading

import pytest
import timm
import torch

from geodino.dino.checkpoint import read_checkpoint, strip_prefixes
from geodino.dino.config import PretrainConfig, steps_per_epoch_for
from geodino.launch import run_pretraining

TINY = dict(arch="vit_tiny", patch_size=8, out_dim=256, global_crops_size=32, local_crops_size=16,
            local_crops_number=2, drop_path_rate=0.0, warmup_epochs=0, lr=0.002, saveckp_freq=1,
            momentum_teacher=0.9, freeze_last_layer=0,  # a fast-moving teacher: learning shows within 12 steps
            knn_every=0)  # the k-NN monitor is checked once, in test_s3.py's 12-band run


@pytest.mark.timeout(600)
def test_two_gloo_workers_learn_and_survive_a_sigkill(ray_session, eurosat_metadata, tmp_path):
    """Two gloo workers on the 2-CPU cluster; one is SIGKILLed after the first registered checkpoint and Ray Train
    (--max_failures) restarts the group from it. Ray Data reads every epoch (--cache_data off) beside the workers at
    0.5 CPU each (the regression: 2 workers x 1 CPU left Ray Data none and hung)."""
    from test_reliability import log_epochs, ray_train_worker_pids, wait_for_checkpoints

    config = PretrainConfig(**TINY, metadata_dir=eurosat_metadata, epochs=3, batch_size_per_gpu=8, num_workers=2,
                            max_failures=2, keep_checkpoints=2, storage_path=str(tmp_path / "runs"), run_name="gloo2",
                            cache_data="off")
    log = tmp_path / "runs" / "gloo2" / "log.txt"
    killed = {}

    def kill_after_the_first_checkpoint():
        wait_for_checkpoints(tmp_path / "runs" / "gloo2", 1)
        pids = ray_train_worker_pids()
        if pids:
            killed["pid"], killed["logged"] = pids[0], log_epochs(log)
            os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_after_the_first_checkpoint, daemon=True)
    killer.start()
    first = run_pretraining(config)
    killer.join(5)
    assert killed and killed["logged"][:1] == [0], killed  # the kill came after epoch 0's checkpoint
    assert [m["epoch"] for m in first.metrics] == [0, 1, 2]
    first_log = log_epochs(log)
    assert first_log.count(0) == 1 and len(first_log) - 3 <= config.saveckp_freq, first_log  # work lost: <= 1 epoch
    state = read_checkpoint(first.checkpoint_dir)
    assert {int(v["step"]) for v in state["optimizer"]["state"].values()} == {3 * 5}  # none applied twice
    losses = [m["loss"] for m in first.metrics]
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
    entropy = first.metrics[-1]["teacher_entropy"]
    assert 0.1 < entropy < 0.98 * first.metrics[-1]["max_entropy"], "teacher output collapsed"

    assert state["epoch"] == 3 and state["args"]["arch"] == "vit_tiny"
    assert {"student", "teacher", "optimizer", "dino_loss", "fp16_scaler", "args"} <= set(state)
    assert state["dino_loss"]["center"].shape == (1, 256)
    backbone_path = os.path.join(first.checkpoint_dir, "teacher_backbone.pth")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, patch_size=8,
                              pretrained_cfg_overlay=dict(file=backbone_path))
    teacher_backbone = strip_prefixes({k: v for k, v in state["teacher"].items() if k.startswith("backbone.")})
    torch.testing.assert_close(model.state_dict()["blocks.11.mlp.fc2.weight"], teacher_backbone["blocks.11.mlp.fc2.weight"])

    # lr is DINO's lr x global batch / 256: 8 images on each of 2 workers (80 images: 5 steps per epoch)
    peak = TINY["lr"] * 16 / 256
    for metrics in first.metrics:
        progress = ((metrics["epoch"] + 1) * 5 - 1) / 15
        assert metrics["lr"] == pytest.approx(1e-6 + 0.5 * (peak - 1e-6) * (1 + math.cos(math.pi * progress)))
    kept = sorted((tmp_path / "runs" / "gloo2").glob("checkpoint_*/checkpoint.pth"))
    assert [read_checkpoint(str(path.parent))["epoch"] for path in kept] == [2, 3]  # --keep_checkpoints 2: the newest


def test_batch_larger_than_the_dataset_is_refused_before_starting():
    config = PretrainConfig(batch_size_per_gpu=64, num_workers=2)
    with pytest.raises(ValueError, match="larger than the 100 training patches"):
        steps_per_epoch_for(100, config)
    assert steps_per_epoch_for(1000, config) == 7


def test_non_finite_loss_stops_naming_epoch_and_step(ray_session):
    """A poisoned batch (NaN pixels) through the real loop body, fed by a real Ray Dataset."""
    import numpy as np
    import ray

    from geodino.dino.augment import MultiCrop
    from geodino.dino.loop import NonFiniteLossError, train_one_epoch
    from geodino.dino.runtime import BatchRuntime
    from geodino.dino.state import DinoState

    cfg = PretrainConfig(**TINY, batch_size_per_gpu=2, epochs=1)
    images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    images[2:] = np.nan  # the second batch is poisoned
    runtime = BatchRuntime(ray.data.from_numpy(images).rename_columns({"data": "image"}).iter_torch_batches(batch_size=2))
    multicrop = MultiCrop(cfg.multicrop())
    state = DinoState.create(cfg, in_chans=3, ncrops=multicrop.ncrops, runtime=runtime, steps_per_epoch=2)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, step [01] .*lower --lr"):
        train_one_epoch(state, runtime, cfg, multicrop, epoch=0)


@pytest.mark.timeout(600)
def test_torchrun_launcher_runs_the_same_loop_without_ray(eurosat_metadata, tmp_path):
    """Two processes started by torchrun (as mpirun starts SMDDP's), gloo, checkpoints in a local folder, resume."""
    import subprocess
    import sys

    from conftest import REPO

    def torchrun(epochs: int) -> subprocess.CompletedProcess:
        flags = [f"--{k}={v}" for k, v in TINY.items()]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(REPO / "experiments" / "pretrain.py"), "--launcher", "torchrun", "--backend", "gloo",
                   f"--metadata_dir={eurosat_metadata}", f"--epochs={epochs}", "--batch_size_per_gpu=8",
                   f"--storage_path={tmp_path / 'runs'}", "--run_name=plain", "--keep_checkpoints=2", *flags]
        env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "OMP_NUM_THREADS": "1"}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=500)

    first = torchrun(2)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "plain"
    assert sorted(p.name for p in run_dir.glob("checkpoint_epoch_*")) == ["checkpoint_epoch_000001",
                                                                         "checkpoint_epoch_000002"]
    state = read_checkpoint(str(run_dir / "checkpoint_epoch_000002"))
    assert state["epoch"] == 2 and state["args"]["launcher"] == "torchrun" and state["args"]["num_workers"] == 2
    # 80 images, 2 processes, batch 8: 5 steps of 16 images per epoch
    assert [round(m["images_per_s"] * m["epoch_seconds"]) for m in state["metrics"]] == [80, 80]

    resumed = torchrun(3)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = read_checkpoint(str(run_dir / "checkpoint_epoch_000003"))
    assert final["metrics"][:2] == state["metrics"] and len(final["metrics"]) == 3
    log = [json.loads(line) for line in open(run_dir / "log.txt")]
    assert [m["epoch"] for m in log] == [0, 1, 2]
    assert sorted(p.name for p in run_dir.glob("checkpoint_epoch_*")) == ["checkpoint_epoch_000002",
                                                                         "checkpoint_epoch_000003"]  # keep 2


@pytest.mark.timeout(300)
def test_ctrl_c_ends_the_main_job_in_one_line_keeping_its_checkpoints(ray_address, eurosat_metadata, tmp_path):
    """Ctrl-C (SIGINT) to `python experiments/pretrain.py`, here joining the session's cluster as a submitted job
    does: Ray Train aborts the run, and its driver ended with exit status 1 and not a word. Now one line says
    where the checkpoints are and how to continue, status 130; the run's checkpoints stay registered."""
    import subprocess
    import sys

    from conftest import REPO
    from test_reliability import registered_checkpoints, wait_for_checkpoints

    run_dir = tmp_path / "runs" / "stopped"
    command = [sys.executable, str(REPO / "experiments" / "pretrain.py"), f"--metadata_dir={eurosat_metadata}",
               "--epochs=50", "--batch_size_per_gpu=8", f"--storage_path={tmp_path / 'runs'}", "--run_name=stopped",
               *[f"--{key}={value}" for key, value in TINY.items()]]
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "RAY_ADDRESS": ray_address}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoints(run_dir, 1, alive=lambda: driver.poll() is None)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"pretrain.py: interrupted: the run stopped before it finished; its "
                                            f"checkpoints stay in {run_dir}, and the same command continues from "
                                            "the latest")
    assert "Traceback" not in err and registered_checkpoints(run_dir)
