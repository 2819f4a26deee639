"""DINO self-supervised pretraining on Ray Train.

``dino_loop`` is the training loop; it reads top to bottom like
facebookresearch/dino's ``main_dino.py``. What launched it appears only through a
small runtime object: rank and device, DDP wrapping, the batches of an epoch, the
latest checkpoint, and reporting. ``RayTrainRuntime`` is Ray Train's (``train_dino``
is the per-worker function of the ``TorchTrainer`` that ``run_pretraining`` builds);
``geodino.torchrun`` has the same loop under torchrun or mpirun without Ray, which
SMDDP's AllReduce needs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from geodino.augment import MultiCrop, MultiCropConfig, crop_columns
from geodino.checkpoint import BACKBONE_FILE, plain_values, read_checkpoint, write_checkpoint
from geodino.loss import DINOLoss, teacher_entropy
from geodino.models import build_student_teacher
from geodino.schedules import cosine_schedule


@dataclass
class PretrainConfig:
    # --- facebookresearch/dino's names
    arch: str = "vit_small"
    patch_size: int = 16
    out_dim: int = 65536
    norm_last_layer: bool = True
    momentum_teacher: float = 0.996
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    precision: str = "auto"  # auto: bf16 autocast on a GPU that has it, fp32 on CPU; fp16 uses a grad scaler
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    batch_size_per_gpu: int = 64
    epochs: int = 100
    freeze_last_layer: int = 1
    lr: float = 0.0005
    warmup_epochs: int = 10
    min_lr: float = 1e-6
    drop_path_rate: float = 0.1
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_number: int = 8
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    output_dir: str | None = None
    saveckp_freq: int = 20
    seed: int = 0
    # --- the seed's SageMaker names
    metadata_dir: str | None = None
    data_dir: str | None = None
    checkpoint_dir: str | None = None  # SageMaker's local checkpoint folder (synced to S3); used as storage
    # --- geodino's own
    global_crops_size: int = 224
    local_crops_size: int = 96
    bands: str = "rgb"
    normalize: str = "max"
    num_workers: int = 1
    use_gpu: bool = False
    wait_for_gpus: bool = False  # autoscaling clusters: let Ray wait for GPU nodes instead of failing fast
    backend: str | None = None  # gloo | nccl | smddp; default nccl on GPU, gloo on CPU
    launcher: str = "ray"  # ray: Ray Train; torchrun: processes started by torchrun or mpirun (SMDDP), no Ray
    storage_path: str = "runs"
    run_name: str | None = None
    max_failures: int = 0
    nonfinite_loss: str = "stop"  # stop: raise, keeping the last checkpoint; skip: drop the step (counted)
    crops_on: str = "device"  # device: in the training loop; data: in Ray Data CPU tasks
    limit: int | None = None  # use only the first N training patches (smoke runs)

    def resolved_run_name(self) -> str:
        return self.run_name or f"dino_{self.arch}_p{self.patch_size}"

    def resolved_storage(self) -> str:
        storage = self.checkpoint_dir or self.storage_path
        return storage if "://" in storage else os.path.abspath(storage)

    def resolved_output_dir(self) -> str:
        if self.output_dir:
            return os.path.abspath(self.output_dir)
        storage = self.resolved_storage()
        local = storage if "://" not in storage else os.path.abspath("runs")
        return os.path.join(local, self.resolved_run_name())

    def multicrop(self) -> MultiCropConfig:
        return MultiCropConfig(
            global_crops_size=self.global_crops_size,
            local_crops_size=self.local_crops_size,
            local_crops_number=self.local_crops_number,
            global_crops_scale=tuple(self.global_crops_scale),
            local_crops_scale=tuple(self.local_crops_scale),
            solarize_threshold=0.5 if self.normalize == "max" else 0.0,
        )


COLLAPSE_EPOCHS = 3  # consecutive epochs before a collapse warning
COLLAPSE_LOW = 0.1  # teacher entropy (nats) below this: every image maps to one prototype
COLLAPSE_HIGH = 0.98  # share of log(out_dim) above this: the teacher outputs a uniform distribution


def collapse_state(history: list[dict]) -> str | None:
    """'one_prototype' or 'uniform' when the last COLLAPSE_EPOCHS epochs all collapsed the same way.

    DINO's two failure modes (its paper, section 5.3): the teacher's output
    concentrates on one dimension (entropy -> 0) or spreads evenly (entropy ->
    log(out_dim)). Either way the loss can still look fine, so runs die silently.
    """
    recent = history[-COLLAPSE_EPOCHS:]
    if len(recent) < COLLAPSE_EPOCHS:
        return None
    if all(m["teacher_entropy"] < COLLAPSE_LOW for m in recent):
        return "one_prototype"
    if all(m["teacher_entropy"] > COLLAPSE_HIGH * m["max_entropy"] for m in recent):
        return "uniform"
    return None


class CollapseWarning(UserWarning):
    """The teacher's output distribution collapsed; training continues but is probably wasted."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops, the last good checkpoint stays."""


# ============================================================================ helpers of the loop


def param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on weight matrices only, not on biases and norm parameters (as DINO)."""
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (plain if name.endswith(".bias") or parameter.ndim == 1 else decayed).append(parameter)
    return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> None:
    """DINO clips each parameter's gradient norm separately."""
    for parameter in model.parameters():
        if parameter.grad is not None:
            norm = parameter.grad.data.norm(2)
            factor = clip / (norm + 1e-6)
            if factor < 1:
                parameter.grad.data.mul_(factor)


def cancel_last_layer_gradients(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Keep the projection fixed in the first epoch(s): training is unstable otherwise."""
    if epoch >= freeze_last_layer:
        return
    for name, parameter in model.named_parameters():
        if "last_layer" in name:
            parameter.grad = None


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    for p_student, p_teacher in zip(student.parameters(), teacher.parameters()):
        p_teacher.mul_(momentum).add_((1 - momentum) * p_student.detach())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision in ("bf16", "auto"):
        return torch.bfloat16
    raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")


def all_finite(loss: torch.Tensor, world_size: int) -> bool:
    """True when the loss is finite on every worker (one small all-reduce under DDP)."""
    finite = torch.isfinite(loss.detach()).float()
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


def crops_of(batch: dict, multicrop: MultiCrop, device: torch.device) -> list[torch.Tensor]:
    if "image" in batch:
        return multicrop(batch["image"].to(device, non_blocking=True))
    return [batch[f"crop{i}"].to(device, non_blocking=True) for i in range(multicrop.ncrops)]


def schedules(cfg: PretrainConfig, steps_per_epoch: int, world_size: int) -> dict[str, np.ndarray]:
    global_batch = cfg.batch_size_per_gpu * world_size
    return {
        "lr": cosine_schedule(cfg.lr * global_batch / 256.0, cfg.min_lr, cfg.epochs, steps_per_epoch,
                              warmup_epochs=cfg.warmup_epochs),
        "wd": cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, steps_per_epoch),
        "momentum": cosine_schedule(cfg.momentum_teacher, 1.0, cfg.epochs, steps_per_epoch),
    }


# ============================================================================ the training loop


class RayTrainRuntime:
    """What the loop needs from Ray Train: rank, device, DDP, this worker's data shard, checkpoints."""

    def __init__(self, cfg: PretrainConfig):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.shard = ray.train.get_dataset_shard("train")
        self.cfg = cfg

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # DDP when world_size > 1; moves to the device

    def epoch_batches(self, epoch: int):
        cfg = self.cfg
        return self.shard.iter_torch_batches(batch_size=cfg.batch_size_per_gpu, drop_last=True, prefetch_batches=2,
                                             local_shuffle_buffer_size=cfg.batch_size_per_gpu * 4,
                                             local_shuffle_seed=cfg.seed + epoch)

    def latest_state(self) -> dict | None:
        """The newest checkpoint of this run that loads; a damaged one is reported and skipped."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return None
        for candidate in [checkpoint, *earlier_checkpoints(checkpoint)]:
            try:
                with candidate.as_directory() as folder:
                    return read_checkpoint(folder, map_location=self.device)
            except RuntimeError as error:
                warnings.warn(f"{error}; using the previous one", stacklevel=1)
        raise RuntimeError(f"no checkpoint of this run loads (newest: {checkpoint.path}); move the run folder away "
                           "to start over")

    def report(self, metrics: dict, state: dict | None, teacher_backbone: dict | None) -> None:
        """Every rank reports; rank 0 passes the checkpoint, which Ray copies to the run's storage."""
        import ray.train

        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if state is not None:
                write_checkpoint(folder, state, teacher_backbone)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


def earlier_checkpoints(checkpoint) -> list:
    """The run's other checkpoints in its storage, newest first (Ray names them checkpoint_<timestamp>)."""
    import posixpath

    import pyarrow.fs as pafs
    import ray.train

    parent, name = posixpath.split(checkpoint.path.rstrip("/"))
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    names = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.base_name < name), reverse=True)
    return [ray.train.Checkpoint(posixpath.join(parent, n), filesystem=checkpoint.filesystem) for n in names]


def train_dino(loop_config: dict) -> None:
    """Ray Train's per-worker function."""
    cfg = PretrainConfig(**loop_config["pretrain"])
    dino_loop(cfg, RayTrainRuntime(cfg), loop_config["steps_per_epoch"], loop_config["in_chans"])


def dino_loop(cfg: PretrainConfig, runtime, steps_per_epoch: int, in_chans: int) -> None:
    """DINO from start (or the latest checkpoint) to the last epoch, on whatever runtime launched it."""
    rank, world_size, device = runtime.rank, runtime.world_size, runtime.device
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    multicrop = MultiCrop(cfg.multicrop())

    # ============ student and teacher networks ============
    student, teacher = build_student_teacher(cfg.arch, cfg.patch_size, in_chans, cfg.out_dim, cfg.norm_last_layer,
                                             cfg.drop_path_rate)
    teacher = teacher.to(device)
    student = runtime.prepare_model(student)
    student_plain = student.module if hasattr(student, "module") else student

    # ============ loss, optimizer, schedules ============
    dino_loss = DINOLoss(cfg.out_dim, multicrop.ncrops, cfg.warmup_teacher_temp, cfg.teacher_temp,
                         cfg.warmup_teacher_temp_epochs, cfg.epochs).to(device)
    optimizer = torch.optim.AdamW(param_groups(student_plain))  # lr and wd are set by the schedules
    amp_dtype = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    plan = schedules(cfg, steps_per_epoch, world_size)

    # ============ resume from the latest checkpoint of this run, if any ============
    start_epoch, history = 0, []
    state = runtime.latest_state()
    if state:
        student_plain.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        dino_loss.load_state_dict(state["dino_loss"])
        if scaler is not None and state.get("fp16_scaler"):
            scaler.load_state_dict(state["fp16_scaler"])
        start_epoch, history = state["epoch"], list(state.get("metrics", []))

    writer = _tensorboard(cfg) if rank == 0 else None
    for epoch in range(start_epoch, cfg.epochs):
        # ============ one epoch of DINO ============
        metrics = train_one_epoch(student, teacher, student_plain, dino_loss, runtime.epoch_batches(epoch), multicrop,
                                  optimizer, scaler, amp_dtype, plan, epoch, steps_per_epoch, cfg, device, world_size)
        history.append(metrics)
        collapse = collapse_state(history)
        metrics["collapsed"] = float(collapse is not None)
        if collapse and rank == 0:
            warnings.warn(
                f"epoch {epoch}: the teacher's output has been collapsed ({collapse}, entropy "
                f"{metrics['teacher_entropy']:.3f} of max {metrics['max_entropy']:.3f}) for {COLLAPSE_EPOCHS} epochs; "
                "check --teacher_temp, --momentum_teacher and --lr, or the augmentations", CollapseWarning, stacklevel=1)
            print(f"WARNING: teacher output collapsed ({collapse}) at epoch {epoch}", file=sys.stderr, flush=True)
        if writer is not None:
            for key, value in metrics.items():
                writer.add_scalar(f"pretrain/{key}", value, epoch)
            writer.flush()
            _append_log(cfg, metrics)

        # ============ checkpoint (rank 0 writes it) and report ============
        last = epoch + 1 == cfg.epochs
        save = last or (cfg.saveckp_freq and (epoch + 1) % cfg.saveckp_freq == 0)
        state = backbone = None
        if save and rank == 0:
            state = {
                "student": student_plain.state_dict(),
                "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "args": plain_values(asdict(cfg) | {"in_chans": in_chans}),
                "dino_loss": dino_loss.state_dict(),
                "fp16_scaler": scaler.state_dict() if scaler is not None else None,
                "metrics": plain_values(history),
            }
            backbone = teacher.backbone.state_dict()
        runtime.report(metrics, state, backbone)
    if writer is not None:
        writer.close()


def train_one_epoch(student, teacher, student_plain, dino_loss, batches, multicrop, optimizer, scaler, amp_dtype,
                    plan, epoch, steps_per_epoch, cfg, device, world_size) -> dict:
    started = time.perf_counter()
    losses, entropies, waited, skipped = [], [], 0.0, 0
    fetch_started = time.perf_counter()
    for step, batch in enumerate(batches):
        if step >= steps_per_epoch:
            break
        waited += time.perf_counter() - fetch_started
        it = epoch * steps_per_epoch + step  # global iteration, indexes the schedules
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = float(plan["lr"][it])
            if i == 0:  # only the first group is regularised
                group["weight_decay"] = float(plan["wd"][it])

        crops = crops_of(batch, multicrop, device)
        center_before = dino_loss.center.clone()  # the loss updates its centre; a skipped step must not
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            teacher_output = teacher(crops[:2])  # only the 2 global views pass through the teacher
            student_output = student(crops)
            loss = dino_loss(student_output, teacher_output, epoch)
        if not all_finite(loss, world_size):
            if cfg.nonfinite_loss != "skip":
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch}, step {step} (lr {plan['lr'][it]:.2e}); the last good "
                    "checkpoint is kept. Try a lower --lr, a smaller --clip_grad, --precision bf16/fp32 instead of "
                    "fp16, or --nonfinite_loss skip to drop such steps."
                )
            dino_loss.center.copy_(center_before)
            skipped += 1  # every worker skips together, so DDP's all-reduce stays in step
            fetch_started = time.perf_counter()
            continue

        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            if cfg.clip_grad:
                clip_gradients(student_plain, cfg.clip_grad)
            cancel_last_layer_gradients(epoch, student_plain, cfg.freeze_last_layer)
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                clip_gradients(student_plain, cfg.clip_grad)
            cancel_last_layer_gradients(epoch, student_plain, cfg.freeze_last_layer)
            scaler.step(optimizer)
            scaler.update()

        update_teacher(student_plain, teacher, float(plan["momentum"][it]))
        losses.append(loss.item())
        entropies.append(teacher_entropy(teacher_output.float(), dino_loss.center,
                                         dino_loss.teacher_temp_schedule[epoch]))
        fetch_started = time.perf_counter()

    if not losses:
        raise NonFiniteLossError(f"epoch {epoch}: every one of its {skipped} steps had a non-finite loss")
    if len(losses) + skipped < steps_per_epoch:
        raise RuntimeError(f"epoch {epoch}: the data shard gave {len(losses) + skipped} batches, "
                           f"{steps_per_epoch} expected")
    seconds = time.perf_counter() - started
    last_it = (epoch + 1) * steps_per_epoch - 1
    metrics = {
        "epoch": epoch,
        "loss": float(np.mean(losses)),
        "lr": float(plan["lr"][last_it]),
        "wd": float(plan["wd"][last_it]),
        "momentum_teacher": float(plan["momentum"][last_it]),
        "teacher_entropy": float(np.mean(entropies)),
        "max_entropy": math.log(cfg.out_dim),
        "images_per_s": steps_per_epoch * cfg.batch_size_per_gpu * world_size / seconds,
        "data_wait_fraction": waited / seconds,
        "epoch_seconds": seconds,
        "skipped_steps": skipped,
    }
    if device.type == "cuda":
        metrics["gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return metrics


def _tensorboard(cfg: PretrainConfig):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(cfg.resolved_output_dir(), "tensorboard"))


def _append_log(cfg: PretrainConfig, metrics: dict) -> None:
    """DINO's log.txt: one JSON line per epoch, kept beside the TensorBoard events."""
    folder = cfg.resolved_output_dir()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "log.txt"), "a") as handle:
        handle.write(json.dumps(metrics) + "\n")
    print(
        f"epoch {metrics['epoch']:>3}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
        f"entropy {metrics['teacher_entropy']:.2f}/{metrics['max_entropy']:.2f}  "
        f"{metrics['images_per_s']:.1f} img/s",
        file=sys.stderr,
        flush=True,
    )


# ============================================================================ the driver


@dataclass
class PretrainResult:
    checkpoint_dir: str  # local folder with checkpoint.pth and teacher_backbone.pth
    storage_checkpoint: str  # where Ray keeps it (local path or s3:// URI)
    metrics: list[dict]


def steps_per_epoch_for(rows: int, cfg: PretrainConfig) -> int:
    """Ray Train gives each worker an equal share (the remainder is dropped); batches drop their last partial one."""
    if rows == 0:
        raise ValueError("no training patches are left after the filters (split 'train', recommended patches only"
                         f"{f', --limit {cfg.limit}' if cfg.limit else ''}): check the metadata's original_split column")
    steps = (rows // cfg.num_workers) // cfg.batch_size_per_gpu
    if steps == 0:
        raise ValueError(
            f"--batch_size_per_gpu {cfg.batch_size_per_gpu} x --num_workers {cfg.num_workers} is larger than the "
            f"{rows} training patches: lower the batch size or the number of workers"
        )
    return steps


def check_gpus(cfg: PretrainConfig) -> None:
    """Ray would wait forever for GPUs a fixed cluster does not have; say so before starting."""
    from geodino.resources import cluster_gpus

    if not cfg.use_gpu or cfg.wait_for_gpus:
        return
    available = cluster_gpus()
    if available < cfg.num_workers:
        raise ValueError(f"--use_gpu with --num_workers {cfg.num_workers} needs {cfg.num_workers} GPUs; the Ray cluster "
                         f"has {available}. Lower --num_workers, drop --use_gpu, or pass --wait_for_gpus true on an "
                         "autoscaling cluster whose GPU nodes start on demand")


def run_pretraining(cfg: PretrainConfig) -> PretrainResult:
    if cfg.launcher == "torchrun":  # no Ray needed (nor installed, on some GPU machines)
        from geodino.torchrun import run_pretraining_torchrun

        return run_pretraining_torchrun(cfg)
    if cfg.launcher != "ray":
        raise ValueError(f"--launcher must be ray or torchrun, not {cfg.launcher!r}")
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from geodino.data import DataConfig, build_dataset, dataset_size, load_card, resolve_bands
    from geodino.resources import init_ray, worker_cpus

    if not cfg.metadata_dir:
        raise ValueError("--metadata_dir is required (experiments/pretrain.py fills it with the demo archive)")
    init_ray()
    if not sys.stderr.isatty():  # per-epoch dataset progress bars flood non-interactive logs
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    data_config = DataConfig(metadata=cfg.metadata_dir, data_dir=cfg.data_dir, split="train", bands=cfg.bands,
                             normalize=cfg.normalize, limit=cfg.limit)
    card = load_card(cfg.metadata_dir)
    in_chans = len(resolve_bands(card, cfg.bands))
    steps = steps_per_epoch_for(dataset_size(data_config), cfg)
    dataset = build_dataset(data_config).select_columns(["image"]).randomize_block_order(seed=cfg.seed)
    if cfg.crops_on == "data":
        dataset = dataset.map_batches(crop_columns, batch_size=cfg.batch_size_per_gpu,
                                      fn_kwargs={"config": cfg.multicrop()})

    check_gpus(cfg)
    resources = {"CPU": worker_cpus(cfg.num_workers, use_gpu=cfg.use_gpu)}
    if cfg.use_gpu:
        resources["GPU"] = 1
    backend = cfg.backend or ("nccl" if cfg.use_gpu else "gloo")
    if backend == "smddp":
        raise ValueError("SMDDP's AllReduce needs SageMaker's mpirun launcher, not Ray's workers: submit with "
                         "experiments/submit_sagemaker.py --backend smddp (it runs --launcher torchrun under MPI), "
                         "or use --backend nccl on a Ray cluster")
    trainer = TorchTrainer(
        train_dino,
        train_loop_config={"pretrain": asdict(cfg), "steps_per_epoch": steps, "in_chans": in_chans},
        datasets={"train": dataset},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        torch_config=TorchConfig(backend=backend),
        run_config=ray.train.RunConfig(
            name=cfg.resolved_run_name(),
            storage_path=cfg.resolved_storage(),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    final = os.path.join(cfg.resolved_output_dir(), "final")
    result.checkpoint.to_directory(final)
    state = read_checkpoint(final)
    return PretrainResult(checkpoint_dir=final, storage_checkpoint=result.checkpoint.path, metrics=state["metrics"])


def backbone_file(result: PretrainResult) -> str:
    return os.path.join(result.checkpoint_dir, BACKBONE_FILE)
