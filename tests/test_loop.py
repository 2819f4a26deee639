"""The loop's state checked tensor by tensor: resume, the EMA teacher, DDP, schedules, frozen last layer, precisions.

These run dino_loop in this process on small in-memory batches (or two gloo processes for DDP), so
each breakage of the loop shows as a tensor that is not what it must be.
"""

import copy
import dataclasses
import json
import os
import re
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_pretrain import TINY

from geodino.dino import DinoState, PretrainConfig, dino_loop
from geodino.dino.augment import MultiCrop
from geodino.dino.config import InputSpec
from geodino.dino.loop import train_one_epoch
from geodino.dino.models import build_student_teacher
from geodino.dino.runtime import BatchRuntime

RGB = InputSpec(bands=("red", "green", "blue"), rgb=True, zero_level=(0.0, 0.0, 0.0))


def image_batches(count=8, batch=4, seed=0):
    images = torch.from_numpy(np.random.default_rng(seed).random((count, 3, 32, 32), dtype=np.float32))
    return [{"image": chunk} for chunk in images.split(batch)]


def config(tmp_path, **changes) -> PretrainConfig:
    return PretrainConfig(**{**TINY, "epochs": 1, "batch_size_per_gpu": 4, "knn_every": 0,
                             "output_dir": str(tmp_path / "out"), "storage_path": str(tmp_path / "runs"), **changes})


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_restores_student_teacher_centre_and_optimizer_exactly(tmp_path):
    cfg = config(tmp_path)
    first = BatchRuntime(image_batches())
    dino_loop(cfg, first, steps_per_epoch=2, inputs=RGB)
    saved = first.reports[-1][1]
    assert saved["epoch"] == 1

    # Resumed with nothing allowed to move (lr 0, teacher momentum 1): what comes out is what went in.
    frozen = dataclasses.replace(cfg, epochs=2, lr=0.0, min_lr=0.0, momentum_teacher=1.0)

    def resume(checkpoint):
        runtime = BatchRuntime(image_batches(), checkpoint=copy.deepcopy(checkpoint))
        dino_loop(frozen, runtime, steps_per_epoch=2, inputs=RGB)
        return runtime.reports[-1][1]

    after = resume(saved)
    assert tensors_equal(after["student"], saved["student"])
    assert tensors_equal(after["teacher"], saved["teacher"])
    steps = [int(s["step"]) for s in after["optimizer"]["state"].values()]
    assert steps and set(steps) == {2 * 2}  # 2 steps before the checkpoint, 2 after: the count continued
    for key, moment in after["optimizer"]["state"].items():  # AdamW's moments continued from the saved ones
        assert not torch.equal(moment["exp_avg"], saved["optimizer"]["state"][key]["exp_avg"])
    # The centre is an EMA: c_n = 0.9^n c_0 + (terms that do not depend on c_0). So resuming from a
    # checkpoint whose centre was zeroed must end exactly 0.9^2 * saved centre apart.
    zeroed = copy.deepcopy(saved)
    zeroed["dino_loss"]["center"].zero_()
    other = resume(zeroed)
    torch.testing.assert_close(after["dino_loss"]["center"] - other["dino_loss"]["center"],
                               0.9**2 * saved["dino_loss"]["center"], rtol=1e-4, atol=1e-7)


def test_the_teacher_moves_by_ema_and_stays_apart_from_the_student(tmp_path):
    cfg = config(tmp_path, epochs=2)
    torch.manual_seed(cfg.seed)  # what dino_loop builds its networks from
    _, initial_teacher = build_student_teacher(cfg.arch, cfg.patch_size, 3, cfg.out_dim, cfg.norm_last_layer,
                                               cfg.drop_path_rate)
    state = dino_loop(cfg, BatchRuntime(image_batches()), steps_per_epoch=2, inputs=RGB)
    teacher, student = state.teacher.state_dict(), state.student_plain.state_dict()
    moved = [k for k, v in teacher.items() if not torch.equal(v, initial_teacher.state_dict()[k])]
    assert len(moved) > 0.9 * len(teacher)
    assert not tensors_equal(teacher, student)
    # with momentum 0.9 over 4 steps the teacher lies between its start and the student
    key = "backbone.blocks.0.attn.qkv.weight"
    start, end, target = initial_teacher.state_dict()[key], teacher[key], student[key]
    assert (end - start).norm() < (target - start).norm()


def test_logged_lr_wd_and_momentum_are_the_schedules_at_each_epoch_end(tmp_path):
    cfg = config(tmp_path, epochs=3, warmup_epochs=1, lr=0.004, min_lr=1e-5, momentum_teacher=0.95)
    runtime = BatchRuntime(image_batches())
    dino_loop(cfg, runtime, steps_per_epoch=2, inputs=RGB)
    total, warmup = 3 * 2, 1 * 2
    peak = 0.004 * 4 / 256  # scaled by the global batch (4 images, one process)

    def cosine(base, final, i, length):
        return final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / length))

    for epoch, (metrics, _) in enumerate(runtime.reports):
        it = (epoch + 1) * 2 - 1
        lr = np.linspace(0, peak, warmup)[it] if it < warmup else cosine(peak, 1e-5, it - warmup, total - warmup)
        assert metrics["lr"] == pytest.approx(lr)
        assert metrics["wd"] == pytest.approx(cosine(0.04, 0.4, it, total))
        assert metrics["momentum_teacher"] == pytest.approx(cosine(0.95, 1.0, it, total))


def test_progress_inside_an_epoch_and_the_log_in_the_runs_folder(tmp_path, capsys):
    """Without a terminal, rank 0 prints a plain progress line (steps, images/s, ETA) every --progress_every_s;
    log.txt and the events land in STORAGE/RUN_NAME, not in --output_dir."""
    cfg = config(tmp_path, epochs=2, progress_every_s=1e-9, run_name="watched")
    dino_loop(cfg, BatchRuntime(image_batches()), steps_per_epoch=2, inputs=RGB)
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if " step " in line]
    assert len(progress) == 2, lines
    for epoch, line in enumerate(progress):
        # the ETA's form, not its value: a step's time is the machine's (a busy CI machine took 11 s)
        assert re.fullmatch(rf"epoch +{epoch}  step 1/2  [\d.]+ img/s  ETA \d+m\d\ds", line), line
    assert sum(line.startswith("epoch ") and "loss" in line for line in lines) == 2  # one line per epoch
    run = tmp_path / "runs" / "watched"
    assert [json.loads(line)["epoch"] for line in open(run / "log.txt")] == [0, 1]
    assert list((run / "tensorboard").glob("events.out.tfevents.*")) and not (tmp_path / "out" / "log.txt").exists()

    quiet = config(tmp_path, progress_every_s=0, run_name="quiet")
    dino_loop(quiet, BatchRuntime(image_batches()), steps_per_epoch=2, inputs=RGB)
    assert " step " not in capsys.readouterr().err


def test_weight_decay_only_on_weight_matrices_and_the_last_layer_frozen_in_epoch_zero(tmp_path):
    cfg = config(tmp_path, freeze_last_layer=1, norm_last_layer=False)
    runtime = BatchRuntime(image_batches())
    multicrop = MultiCrop(cfg.multicrop(RGB))
    state = DinoState.create(cfg, 3, multicrop.ncrops, runtime, steps_per_epoch=2)
    before = {k: v.clone() for k, v in state.student_plain.state_dict().items()}
    metrics = train_one_epoch(state, runtime, cfg, multicrop, epoch=0)
    decayed, plain = state.optimizer.param_groups
    assert decayed["weight_decay"] == pytest.approx(metrics["wd"]) and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in state.student_plain.named_parameters()}
    # DINO's rule: biases and 1-D parameters (norms) are not decayed; matrices (and cls_token) are
    assert {names[id(p)] for p in plain["params"]} >= {"backbone.norm.weight", "backbone.blocks.0.norm1.bias",
                                                        "head.mlp.0.bias"}
    assert all(names[id(p)].endswith(".bias") or p.ndim == 1 for p in plain["params"])
    assert all(not names[id(p)].endswith(".bias") and p.ndim > 1 for p in decayed["params"])
    after = state.student_plain.state_dict()
    for key in ("head.last_layer.weight_v", "head.last_layer.weight_g"):  # frozen in epoch 0
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["head.mlp.0.weight"], before["head.mlp.0.weight"])
    later = dataclasses.replace(cfg, epochs=2)
    state = DinoState.create(later, 3, multicrop.ncrops, runtime, steps_per_epoch=2)
    before = state.student_plain.state_dict()["head.last_layer.weight_v"].clone()
    train_one_epoch(state, runtime, later, multicrop, epoch=1)  # after --freeze_last_layer epochs it learns
    assert not torch.equal(state.student_plain.state_dict()["head.last_layer.weight_v"], before)


def reference_epoch(state: DinoState, cfg: PretrainConfig, multicrop: MultiCrop, batches,
                    epoch: int) -> tuple[list[float], int]:
    """The step as facebookresearch/dino's main_dino.py writes it: Python loops over the parameters for clipping
    and the EMA, the loss checked on the host before the backward pass. The loop's own step (foreach kernels, no
    host sync for bookkeeping, the check after backward) must land on the same tensors. Returns the losses and
    how many gradients were clipped."""
    losses, clipped = [], 0
    for step, batch in enumerate(batches):
        it = epoch * state.steps_per_epoch + step
        for i, group in enumerate(state.optimizer.param_groups):
            group["lr"] = float(state.plan["lr"][it])
            if i == 0:
                group["weight_decay"] = float(state.plan["wd"][it])
        crops = multicrop(batch["image"])
        teacher_output = state.teacher(crops[:2])
        student_output, _ = state.student(crops, with_features=True)
        loss = state.dino_loss(student_output, teacher_output, epoch)
        assert np.isfinite(loss.item())
        state.optimizer.zero_grad()
        loss.backward()
        for parameter in state.student.parameters():
            if parameter.grad is not None:
                factor = cfg.clip_grad / (parameter.grad.data.norm(2) + 1e-6)
                if factor < 1:
                    parameter.grad.data.mul_(factor)
                    clipped += 1
        if epoch < cfg.freeze_last_layer:
            for name, parameter in state.student.named_parameters():
                if "last_layer" in name:
                    parameter.grad = None
        state.optimizer.step()
        momentum = float(state.plan["momentum"][it])
        with torch.no_grad():
            for p_student, p_teacher in zip(state.student.parameters(), state.teacher.parameters()):
                p_teacher.mul_(momentum).add_((1 - momentum) * p_student.detach())
        losses.append(loss.item())
    return losses, clipped


def test_the_optimised_step_lands_on_the_reference_steps_tensors(tmp_path):
    # clip_grad small enough that most gradients are clipped and some are not; the last layer frozen in epoch 0
    cfg = config(tmp_path, epochs=2, clip_grad=0.05, freeze_last_layer=1, momentum_teacher=0.9, norm_last_layer=False)
    multicrop = MultiCrop(cfg.multicrop(RGB))
    batches = image_batches(count=12)
    states, clipped = [], 0
    for _ in range(2):
        torch.manual_seed(0)
        states.append(DinoState.create(cfg, 3, multicrop.ncrops, BatchRuntime(batches), steps_per_epoch=3))
    optimised, reference = states
    for epoch in range(2):
        torch.manual_seed(epoch)  # the same crops for both
        metrics = train_one_epoch(optimised, BatchRuntime(batches), cfg, multicrop, epoch)
        torch.manual_seed(epoch)
        losses, clipped_now = reference_epoch(reference, cfg, multicrop, batches, epoch)
        clipped += clipped_now
        assert metrics["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    for ours, theirs in ((optimised.student, reference.student), (optimised.teacher, reference.teacher),
                         (optimised.dino_loss, reference.dino_loss)):
        for key, value in ours.state_dict().items():
            torch.testing.assert_close(value, theirs.state_dict()[key], rtol=1e-5, atol=1e-6, msg=key)
    parameters = sum(1 for p in reference.student.parameters())
    assert 0 < clipped < 6 * parameters  # some gradients were clipped and some were not: both branches compared


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_steps_run_on_cpu(tmp_path, precision):
    cfg = config(tmp_path, precision=precision)
    runtime = BatchRuntime(image_batches())
    multicrop = MultiCrop(cfg.multicrop(RGB))
    state = DinoState.create(cfg, 3, multicrop.ncrops, runtime, steps_per_epoch=2)
    assert state.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert (state.scaler is not None) == (precision == "fp16")  # fp16 steps go through a grad scaler
    before = state.student_plain.state_dict()["backbone.blocks.0.mlp.fc1.weight"].clone()
    metrics = train_one_epoch(state, runtime, cfg, multicrop, epoch=0)
    assert np.isfinite(metrics["loss"]) and metrics["skipped_steps"] == 0
    assert not torch.equal(state.student_plain.state_dict()["backbone.blocks.0.mlp.fc1.weight"], before)
    if state.scaler is not None:
        assert state.scaler.get_scale() > 0 and "scale" in state.state_dict()["fp16_scaler"]


class PoisonedFirstBatch(torch.utils.data.Dataset):
    """16 images; on rank 1 the first batch read is NaN (a bad patch on one worker only)."""

    def __init__(self, rank: int, batch: int):
        self.images = torch.from_numpy(np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32))
        self.poisoned_reads = batch if rank == 1 else 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index].clone()
        if self.poisoned_reads:
            self.poisoned_reads -= 1
            image[:] = float("nan")
        return {"image": image}


def _ddp_worker(rank: int, port: int, folder: str, results):
    from geodino.launch.torchrun import TorchRuntime

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = PretrainConfig(**{**TINY, "epochs": 2, "batch_size_per_gpu": 4, "knn_every": 0, "nonfinite_loss": "skip",
                            "output_dir": folder, "storage_path": folder, "run_name": "ddp", "launcher": "torchrun"})
    runtime = TorchRuntime(cfg, PoisonedFirstBatch(rank, 4), backend="gloo", loader_workers=0)
    state = dino_loop(cfg, runtime, steps_per_epoch=2, inputs=RGB)
    results[rank] = {"student": {k: v.clone() for k, v in state.student_plain.state_dict().items()},
                     "skipped": state.optimizer.state_dict()["state"][0]["step"].item(),
                     "wrapped": type(state.student).__name__}
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)
def test_ddp_ranks_hold_equal_students_and_skip_a_bad_step_together(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_ddp_worker, args=(port, str(tmp_path), results), nprocs=2, join=True)
    assert results[0]["wrapped"] == results[1]["wrapped"] == "DistributedDataParallel"
    assert tensors_equal(results[0]["student"], results[1]["student"])  # different data, one model
    # rank 1's first step was NaN; both ranks dropped it: 2 epochs x 2 steps - 1 optimizer steps each
    assert results[0]["skipped"] == results[1]["skipped"] == 3
