"""The DINO training loop; it reads top to bottom like facebookresearch/dino's ``main_dino.py``.

What launched it appears only through a ``Runtime`` (geodino.dino.runtime): rank and device, DDP
wrapping, the batches of an epoch, the latest checkpoint, and reporting. Ray Train's runtime and the
torchrun launcher's live in geodino.launch; this module imports neither Ray nor torch.distributed's
launch machinery.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from geodino.dino.augment import MultiCrop
from geodino.dino.checkpoint import plain_values
from geodino.dino.config import InputSpec, PretrainConfig
from geodino.dino.flops import peak_tflops
from geodino.dino.loss import koleo_loss
from geodino.dino.monitors import COLLAPSE_EPOCHS, CollapseWarning, KnnMonitor, collapse_state, teacher_entropy_pair
from geodino.dino.run_log import RunLog, StepProgress, say
from geodino.dino.runtime import Runtime
from geodino.dino.state import DinoState
from geodino.errors import GeodinoError


class NonFiniteLossError(GeodinoError, RuntimeError):
    """The loss became NaN or infinite; training stops, the last good checkpoint stays."""


# ============================================================================ the training loop


def dino_loop(cfg: PretrainConfig, runtime: Runtime, steps_per_epoch: int, inputs: InputSpec,
              knn: KnnMonitor | None = None) -> DinoState:
    """DINO from start (or the latest checkpoint) to the last epoch, on whatever runtime launched it.

    `knn` (rank 0's, when the data has labels) scores the teacher's features every --knn_every epochs
    against the same network at random init, measured once here at the start.
    """
    torch.manual_seed(cfg.seed + runtime.rank)
    np.random.seed(cfg.seed + runtime.rank)
    multicrop = MultiCrop(cfg.multicrop(inputs))
    knn_bar = knn.random_init_score(cfg.arch, cfg.patch_size, inputs.in_chans, cfg.seed, runtime.device) if knn else None

    # ============ student, teacher, loss, optimizer, schedules ============
    state = DinoState.create(cfg, inputs.in_chans, multicrop.ncrops, runtime, steps_per_epoch)

    # ============ resume from the latest checkpoint of this run, if any ============
    start_epoch, history = 0, []
    checkpoint = runtime.latest_state()
    if checkpoint:
        state.load_state_dict(checkpoint)
        start_epoch, history = checkpoint["epoch"], list(checkpoint.get("metrics", []))
        if runtime.rank == 0:
            say(f"resuming at epoch {start_epoch} from the run's latest checkpoint")

    log = RunLog(cfg) if runtime.rank == 0 else None
    for epoch in range(start_epoch, cfg.epochs):
        # ============ one epoch of DINO ============
        metrics = train_one_epoch(state, runtime, cfg, multicrop, epoch)
        if knn is not None and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
            metrics |= knn.epoch_metrics(state.teacher.backbone, knn_bar, runtime.device)
        history.append(metrics)
        collapse = collapse_state(history)
        metrics["collapsed"] = float(collapse is not None)
        if collapse and runtime.rank == 0:
            warnings.warn(
                f"epoch {epoch}: the teacher's output has been collapsed ({collapse}; per-sample entropy "
                f"{metrics['teacher_entropy']:.3f} of max {metrics['max_entropy']:.3f}, batch-mean entropy "
                f"{metrics['teacher_batch_entropy']:.3f}) for {COLLAPSE_EPOCHS} epochs; "
                "check --teacher_temp, --momentum_teacher and --lr, or the augmentations", CollapseWarning, stacklevel=1)
            say(f"WARNING: teacher output collapsed ({collapse}) at epoch {epoch}")
        if log is not None:
            log.epoch(metrics)

        # ============ checkpoint (rank 0 writes it) and report ============
        last = epoch + 1 == cfg.epochs
        save = last or (cfg.saveckp_freq and (epoch + 1) % cfg.saveckp_freq == 0)
        saved = backbone = None
        if save and runtime.rank == 0:
            saved = state.state_dict() | {
                "epoch": epoch + 1,
                "args": plain_values(asdict(cfg) | {"in_chans": inputs.in_chans, "inputs": asdict(inputs)}),
                "metrics": plain_values(history),
            }
            backbone = state.teacher.backbone.state_dict()
        runtime.report(metrics, saved, backbone)
    if log is not None:
        log.close()
    return state


def train_one_epoch(state: DinoState, runtime: Runtime, cfg: PretrainConfig, multicrop: MultiCrop,
                    epoch: int) -> dict:
    """One pass over this process's batches: multi-crop, teacher on the globals, student on all, step, EMA."""
    steps_per_epoch, plan, device = state.steps_per_epoch, state.plan, runtime.device
    started = time.perf_counter()
    losses, koleos, entropies, waited, skipped = [], [], [], 0.0, 0
    progress = StepProgress(epoch, steps_per_epoch, cfg.batch_size_per_gpu * runtime.world_size,
                            cfg.progress_every_s if runtime.rank == 0 else 0)
    fetch_started = time.perf_counter()
    for step, batch in enumerate(runtime.epoch_batches(epoch)):
        if step >= steps_per_epoch:
            break
        waited += time.perf_counter() - fetch_started
        it = epoch * steps_per_epoch + step  # global iteration, indexes the schedules
        for i, group in enumerate(state.optimizer.param_groups):
            group["lr"] = float(plan["lr"][it])
            if i == 0:  # only the first group is regularised
                group["weight_decay"] = float(plan["wd"][it])

        crops = crops_of(batch, multicrop, device)
        center_before = state.dino_loss.center.clone()  # the loss updates its centre; a skipped step must not
        with torch.autocast(device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
            teacher_output = state.teacher(crops[:2])  # only the 2 global views pass through the teacher
            student_output, student_features = state.student(crops, with_features=True)
            dino = state.dino_loss(student_output, teacher_output, epoch)
            koleo = torch.zeros((), device=device)
            if cfg.koleo_weight:  # per global view, as DINOv2 does
                batch = crops[0].shape[0]
                koleo = sum(koleo_loss(student_features[i * batch:(i + 1) * batch]) for i in range(2))
            loss = dino + cfg.koleo_weight * koleo
        backward(state, loss)
        # The step's one wait for the device: after the backward pass is queued, so the device is never idle
        # while the host queues the backward kernels.
        if not all_finite(loss, runtime.world_size):
            if cfg.nonfinite_loss != "skip":
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch}, step {step} (lr {plan['lr'][it]:.2e}); the last good "
                    "checkpoint is kept. Try a lower --lr, a smaller --clip_grad, --precision bf16/fp32 instead of "
                    "fp16, or --nonfinite_loss skip to drop such steps."
                )
            state.dino_loss.center.copy_(center_before)
            state.optimizer.zero_grad(set_to_none=True)
            skipped += 1  # every worker skips together, so DDP's all-reduce stays in step
            fetch_started = time.perf_counter()
            continue

        optimizer_step(state, cfg, epoch)
        update_teacher(state.student_plain, state.teacher, float(plan["momentum"][it]))
        # Per-step values stay on the device until the epoch ends: no host sync for bookkeeping.
        losses.append(dino.detach().float())
        koleos.append(koleo.detach().float())
        entropies.append(teacher_entropy_pair(teacher_output, state.dino_loss.center,
                                              state.dino_loss.teacher_temp_schedule[epoch]))
        progress.update(step + 1)
        fetch_started = time.perf_counter()
    progress.close()

    if not losses:
        raise NonFiniteLossError(f"epoch {epoch}: every one of its {skipped} steps had a non-finite loss")
    if len(losses) + skipped < steps_per_epoch:
        raise RuntimeError(f"epoch {epoch}: the data shard gave {len(losses) + skipped} batches, "
                           f"{steps_per_epoch} expected")
    loss, koleo = (torch.stack(values).double().mean().item() for values in (losses, koleos))
    per_sample_entropy, batch_entropy = torch.stack(entropies).double().mean(0).tolist()
    seconds = time.perf_counter() - started  # after the sync above: the epoch's last step has finished
    last_it = (epoch + 1) * steps_per_epoch - 1
    metrics = {
        "epoch": epoch,
        "loss": loss,  # the DINO loss (without --koleo_weight's term)
        "koleo": koleo,
        "lr": float(plan["lr"][last_it]),
        "wd": float(plan["wd"][last_it]),
        "momentum_teacher": float(plan["momentum"][last_it]),
        "teacher_entropy": per_sample_entropy,  # per sample: near log(out_dim) is uniform collapse
        "teacher_batch_entropy": batch_entropy,  # of the batch mean: near 0 is one prototype
        "kl": loss - per_sample_entropy,  # loss = H(teacher) + KL(teacher || student)
        "max_entropy": math.log(cfg.out_dim),
        "images_per_s": steps_per_epoch * cfg.batch_size_per_gpu * runtime.world_size / seconds,
        "data_wait_fraction": waited / seconds,
        "epoch_seconds": seconds,
        "skipped_steps": skipped,
    }
    if device.type == "cuda":
        metrics["gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        metrics["images_per_s_per_gpu"] = metrics["images_per_s"] / runtime.world_size
    if state.flops_per_step:
        metrics["tflops_per_gpu"] = state.flops_per_step * steps_per_epoch / seconds / 1e12
        peak = peak_tflops(device)
        if peak:
            metrics["mfu"] = metrics["tflops_per_gpu"] / peak
    return metrics


# ============================================================================ the parts of a step


def crops_of(batch: dict, multicrop: MultiCrop, device: torch.device) -> list[torch.Tensor]:
    """Multi-crop on the device, or the crops Ray Data already made (--crops_on data)."""
    if "image" in batch:
        return multicrop(batch["image"].to(device, non_blocking=True))
    return [batch[f"crop{i}"].to(device, non_blocking=True) for i in range(multicrop.ncrops)]


def all_finite(loss: torch.Tensor, world_size: int) -> bool:
    """True when the loss is finite on every worker (one small all-reduce under DDP)."""
    finite = torch.isfinite(loss.detach()).float()
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


def backward(state: DinoState, loss: torch.Tensor) -> None:
    """Gradients of this step's loss (scaled, under fp16)."""
    state.optimizer.zero_grad(set_to_none=True)
    (loss if state.scaler is None else state.scaler.scale(loss)).backward()


def optimizer_step(state: DinoState, cfg: PretrainConfig, epoch: int) -> None:
    """Per-parameter clipping, the frozen last layer, the AdamW step (through the fp16 scaler if any)."""
    student, scaler = state.student_plain, state.scaler
    if scaler is not None and cfg.clip_grad:
        scaler.unscale_(state.optimizer)  # clip the true gradients
    if cfg.clip_grad:
        clip_gradients(student, cfg.clip_grad)
    cancel_last_layer_gradients(epoch, student, cfg.freeze_last_layer)
    if scaler is None:
        state.optimizer.step()
    else:
        scaler.step(state.optimizer)
        scaler.update()


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> None:
    """DINO clips each parameter's gradient norm separately: factor clip / (norm + 1e-6) where it is below 1.

    All parameters at once (torch._foreach_*): a Python loop would wait on the device once per parameter.
    """
    grads = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads, 2))
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(factors.unbind()))


def cancel_last_layer_gradients(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Keep the projection fixed in the first epoch(s): training is unstable otherwise."""
    if epoch >= freeze_last_layer:
        return
    for name, parameter in model.named_parameters():
        if "last_layer" in name:
            parameter.grad = None


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """The teacher is an exponential moving average of the student: t = m t + (1 - m) s, for all tensors at once."""
    teacher_params = list(teacher.parameters())
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, [p.detach() for p in student.parameters()], alpha=1 - momentum)
