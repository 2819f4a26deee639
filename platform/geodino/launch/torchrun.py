"""The DINO loop without Ray: one process per GPU started by torchrun or mpirun.

Why a second launcher: SMDDP's AllReduce only runs under SageMaker's mpirun-based
launchers (its documentation: "If you choose to replace NCCL AllReduce with SMDDP
AllReduce, you must choose one of the mpirun-based options"), and Ray Train
starts its workers itself. So a SageMaker job with ``--backend smddp`` runs
``dino_loop`` here, fed by a torch DataLoader over the same metadata and pixel
readers as the Ray Data pipeline, and checkpoints into the local folder that
SageMaker syncs to S3. It is also the plain-PyTorch baseline the training-step
benchmark compares Ray Train against.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from geodino.data.config import DataConfig
from geodino.data.indexed import PatchDataset
from geodino.dino.checkpoint import CHECKPOINT_FILE, read_checkpoint, write_checkpoint
from geodino.dino.config import PretrainConfig, collective_backend, steps_per_epoch_for
from geodino.dino.loop import dino_loop
from geodino.errors import ConfigError
from geodino.launch.inputs import input_spec, knn_monitor
from geodino.launch.result import PretrainResult

CHECKPOINT_PREFIX = "checkpoint_epoch_"


def init_distributed(backend: str) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's or SMDDP's environment; one process needs neither."""
    if backend == "smddp":
        importlib.import_module("smdistributed.dataparallel.torch.torch_smddp")  # registers the smddp backend
        dist.init_process_group(backend="smddp")
    elif int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group(backend=backend)
    if not dist.is_initialized():
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size(), local_rank


class TorchRuntime:
    """The runtime dino_loop needs, from torch.distributed and a DataLoader; checkpoints in a local folder."""

    def __init__(self, cfg: PretrainConfig, dataset: Dataset, backend: str, loader_workers: int):
        self.rank, self.world_size, local_rank = init_distributed(backend)
        use_gpu = bool(cfg.use_gpu)
        self.device = torch.device(f"cuda:{local_rank}" if use_gpu else "cpu")
        if use_gpu:
            torch.cuda.set_device(self.device)
        self.sampler = DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=True)
        self.loader = DataLoader(dataset, batch_size=cfg.batch_size_per_gpu, sampler=self.sampler, drop_last=True,
                                 num_workers=loader_workers, pin_memory=use_gpu,
                                 persistent_workers=loader_workers > 0)
        self.run_dir = cfg.resolved_run_dir()
        self.keep = cfg.keep_checkpoints

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def epoch_batches(self, epoch: int):
        self.sampler.set_epoch(epoch)
        return self.loader

    def latest_state(self) -> dict | None:
        folder = latest_checkpoint(self.run_dir)
        return read_checkpoint(folder, map_location=self.device) if folder else None

    def report(self, metrics: dict, state: dict | None, teacher_backbone: dict | None) -> None:
        if state is not None:
            final = os.path.join(self.run_dir, f"{CHECKPOINT_PREFIX}{state['epoch']:06d}")
            partial = final + ".partial"  # written whole, then renamed: a crash never leaves half a checkpoint
            shutil.rmtree(partial, ignore_errors=True)
            write_checkpoint(partial, state, teacher_backbone)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            for older in checkpoints(self.run_dir)[:-self.keep] if self.keep else []:
                shutil.rmtree(older)
        if self.world_size > 1:
            dist.barrier()  # nobody starts the next epoch (or exits) before the checkpoint is in place


def checkpoints(run_dir: str) -> list[str]:
    """The run's complete checkpoint folders, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    names = sorted(name for name in os.listdir(run_dir) if name.startswith(CHECKPOINT_PREFIX)
                   and not name.endswith(".partial") and os.path.exists(os.path.join(run_dir, name, CHECKPOINT_FILE)))
    return [os.path.join(run_dir, name) for name in names]


def latest_checkpoint(run_dir: str) -> str | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def with_local_gpu(cfg: PretrainConfig) -> PretrainConfig:
    """--use_gpu auto decided by this machine; --use_gpu true without a CUDA device is a mistake, not the CPU."""
    available = torch.cuda.is_available()
    if cfg.use_gpu and not available:
        raise ConfigError("--use_gpu true but torch sees no CUDA device on this machine; drop --use_gpu (auto) or "
                          "--use_gpu false to train on the CPU, or check the CUDA driver (nvidia-smi)")
    return dataclasses.replace(cfg, use_gpu=available if cfg.use_gpu is None else cfg.use_gpu)


def run_torchrun(cfg: PretrainConfig, loader_workers: int | None = None) -> PretrainResult | None:
    """Run this process's share of the job; rank 0 returns the result, the others None."""
    if not cfg.metadata_dir:
        raise ConfigError("--metadata_dir is required")
    cfg = with_local_gpu(cfg)
    backend = collective_backend(cfg)
    data_config = DataConfig(metadata=cfg.metadata_dir, data_dir=cfg.data_dir, split="train", bands=cfg.bands,
                             normalize=cfg.normalize, limit=cfg.limit)
    dataset = PatchDataset(data_config)
    if loader_workers is None:
        loader_workers = min(8, max(1, (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
    runtime = TorchRuntime(cfg, dataset, backend, loader_workers)
    cfg = dataclasses.replace(cfg, num_workers=runtime.world_size, crops_on="device")
    steps = steps_per_epoch_for(len(dataset), cfg)
    try:
        knn = knn_monitor(cfg) if runtime.rank == 0 else None
        dino_loop(cfg, runtime, steps, input_spec(cfg), knn)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if runtime.rank != 0:
        return None
    folder = latest_checkpoint(runtime.run_dir)
    final = os.path.join(cfg.resolved_output_dir(), "final")
    if os.path.abspath(final) != os.path.abspath(folder):
        shutil.copytree(folder, final, dirs_exist_ok=True)
    state = read_checkpoint(final)
    return PretrainResult(checkpoint_dir=final, storage_checkpoint=folder, metrics=state["metrics"])
