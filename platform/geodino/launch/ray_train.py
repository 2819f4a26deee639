"""Pretraining on Ray Train: a TorchTrainer whose workers run dino_loop, fed by the Ray Data pipeline.

``run_ray_train`` is the driver (data, resources, trainer); ``train_dino`` is the per-worker function;
``RayTrainRuntime`` is what the loop sees of Ray Train (rank, device, DDP, this worker's data shard,
checkpoints reported to Ray, which copies them to the run's storage, local or S3).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import sys
import tempfile
import warnings
from dataclasses import asdict

import numpy as np
import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
from ray.data import DataContext, ExecutionOptions
from ray.train.torch import TorchConfig, TorchTrainer
from torch import nn

from geodino.archive.card import load_card
from geodino.archive.packed import packed_manifest
from geodino.data.config import DataConfig, dataset_size, pixel_root
from geodino.data.indexed import labelled_images
from geodino.data.normalize import Normalizer
from geodino.data.ray_data import build_dataset, shuffled_blocks
from geodino.dino.augment import crop_columns
from geodino.dino.checkpoint import read_checkpoint, write_checkpoint
from geodino.dino.config import InputSpec, PretrainConfig, collective_backend, steps_per_epoch_for
from geodino.dino.loop import dino_loop
from geodino.errors import ConfigError, DamagedInputError, RunInterrupted
from geodino.launch.inputs import input_spec, knn_monitor
from geodino.launch.result import PretrainResult
from geodino.ray_cluster import cluster_gpus, init_ray, object_store_bytes, ray_log_level, worker_cpus


class RayTrainRuntime:
    """What the loop needs from Ray Train: rank, device, DDP, this worker's data shard, checkpoints."""

    def __init__(self, cfg: PretrainConfig, inputs: InputSpec):
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.shard = ray.train.get_dataset_shard("train")
        self.cfg = cfg
        self.normalize = Normalizer(*inputs.normalizer(), self.device)  # a pack's raw pixels, on the device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)  # DDP when world_size > 1; moves to the device

    def epoch_batches(self, epoch: int):
        cfg = self.cfg
        batches = self.shard.iter_torch_batches(batch_size=cfg.batch_size_per_gpu, drop_last=True, prefetch_batches=2,
                                                local_shuffle_buffer_size=cfg.batch_size_per_gpu * 4,
                                                local_shuffle_seed=cfg.seed + epoch)
        if cfg.crops_on == "data":  # Ray Data made the crops from normalised images
            return batches
        return ({"image": self.normalize(batch["image"])} for batch in batches)

    def latest_state(self) -> dict | None:
        """The newest checkpoint of this run that loads; a damaged one is reported and skipped."""
        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return None
        for candidate in [checkpoint, *earlier_checkpoints(checkpoint)]:
            try:
                with candidate.as_directory() as folder:
                    return read_checkpoint(folder, map_location=self.device)
            except RuntimeError as error:
                warnings.warn(f"{error}; using the previous one", stacklevel=1)
        raise DamagedInputError(f"no checkpoint of this run loads (newest: {checkpoint.path}); move the run folder "
                                "away to start over")

    def report(self, metrics: dict, state: dict | None, teacher_backbone: dict | None) -> None:
        """Every rank reports; rank 0 passes the checkpoint, which Ray copies to the run's storage."""
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if state is not None:
                write_checkpoint(folder, state, teacher_backbone)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


def earlier_checkpoints(checkpoint: ray.train.Checkpoint) -> list[ray.train.Checkpoint]:
    """The run's other checkpoints in its storage, newest first (Ray names them checkpoint_<timestamp>)."""
    parent, name = posixpath.split(checkpoint.path.rstrip("/"))
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    names = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.base_name < name), reverse=True)
    return [ray.train.Checkpoint(posixpath.join(parent, n), filesystem=checkpoint.filesystem) for n in names]


def train_dino(loop_config: dict) -> None:
    """Ray Train's per-worker function."""
    cfg = PretrainConfig(**loop_config["pretrain"])
    torch.set_num_threads(loop_config["threads"])  # the CPUs this worker holds, fractions rounded
    # Ray Train logs a report per epoch through a logger under the root, which it sets to INFO in its workers.
    logging.getLogger().setLevel(loop_config["ray_log_level"])
    inputs = InputSpec(**loop_config["inputs"])
    runtime = RayTrainRuntime(cfg, inputs)
    knn = knn_monitor(cfg) if runtime.rank == 0 else None
    dino_loop(cfg, runtime, loop_config["steps_per_epoch"], inputs, knn)


CACHE_SHARE = 0.3  # --cache_data auto: cache a split whose decoded tensors fit in this share of the object store


def cache_split(cfg: PretrainConfig, data_config: DataConfig, rows: int, item_bytes: int) -> bool:
    """Whether to materialise the training split in the object store (--cache_data); `item_bytes` per pixel value
    as the pipeline hands them on (float32, or a pack's own type)."""
    if cfg.cache_data != "auto":
        return cfg.cache_data == "on"
    sample, _ = labelled_images(dataclasses.replace(data_config, limit=None), count=1)
    return rows * sample[0].numel() * item_bytes < CACHE_SHARE * object_store_bytes()


def ingest_options(preserve_order: bool) -> ExecutionOptions:
    """Ray Train's usual ingest options, with the blocks in the seeded order or as they finish (--preserve_order).

    A seeded shuffle alone does not fix the order training sees: parallel read tasks finish in a different order
    on every run, and the local shuffle buffer fills from whichever block arrives first.
    """
    with warnings.catch_warnings():  # Ray's own defaults set a field Ray deprecates (exclude_resources)
        warnings.filterwarnings("ignore", message=".*exclude_resources.*")
        options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = preserve_order
    return options


def training_dataset(data_config: DataConfig, raw: bool, cached: bool, seed: int,
                     preserve_order: bool = True) -> ray.data.Dataset:
    """The split's images in an order new every epoch (reproducible from the seed), streamed or cached.

    Uncached, the shards are shuffled before they are read, so training starts on the first blocks decoded;
    cached (read and decoded once, every epoch then streams the blocks from the object store), the blocks are.
    """
    dataset = build_dataset(data_config, raw=raw, shuffle_seed=None if cached else seed).select_columns(["image"])
    if cached:
        dataset.context.execution_options = ingest_options(preserve_order)  # cached blocks keep the order read
        dataset = shuffled_blocks(dataset.materialize(), seed)
    return dataset


def raw_dtype(data_config: DataConfig) -> str | None:
    """The pack's pixel type when the split is read from a pack (asked for raw: decode_packed hands integers on as
    they are and normalises floats itself), else None."""
    card = load_card(data_config.metadata)
    manifest = packed_manifest(data_config.metadata, pixel_root(data_config, card))
    return manifest["dtype"] if manifest else None


def with_cluster_gpus(cfg: PretrainConfig) -> PretrainConfig:
    """--use_gpu auto decided by the cluster: a GPU cluster trains on its GPUs without being told."""
    if cfg.use_gpu is not None:
        return cfg
    gpus = cluster_gpus()
    decided = dataclasses.replace(cfg, use_gpu=gpus > 0)
    collective_backend(decided)  # --backend nccl on a CPU cluster: its one-line error, without this note before it
    print(f"--use_gpu auto: the Ray cluster has {gpus} GPUs, so training runs on the "
          f"{'GPU' if gpus else 'CPU'}", flush=True)
    return decided


def check_gpus(cfg: PretrainConfig) -> None:
    """Ray would wait forever for GPUs a fixed cluster does not have; say so before starting."""
    if not cfg.use_gpu or cfg.wait_for_gpus:
        return
    available = cluster_gpus()
    if available < cfg.num_workers:
        raise ConfigError(f"--use_gpu with --num_workers {cfg.num_workers} needs {cfg.num_workers} GPUs; the Ray "
                          f"cluster has {available}. Lower --num_workers, drop --use_gpu, or pass --wait_for_gpus true "
                          "on an autoscaling cluster whose GPU nodes start on demand")


def run_ray_train(cfg: PretrainConfig) -> PretrainResult:
    """Build the dataset and the TorchTrainer, train, and copy the final checkpoint next to the run's logs."""
    if not cfg.metadata_dir:
        raise ConfigError("--metadata_dir is required (experiments/pretrain.py fills it with the demo archive)")
    init_ray()
    if not sys.stderr.isatty():  # per-epoch dataset progress bars flood non-interactive logs
        DataContext.get_current().enable_progress_bars = False
    data_config = DataConfig(metadata=cfg.metadata_dir, data_dir=cfg.data_dir, split="train", bands=cfg.bands,
                             normalize=cfg.normalize, limit=cfg.limit)
    inputs = input_spec(cfg)
    rows = dataset_size(data_config)
    steps = steps_per_epoch_for(rows, cfg)
    pixel_type = raw_dtype(data_config) if cfg.crops_on == "device" else None
    raw = pixel_type is not None  # a pack's pixels go to the workers as they are, normalised on their device
    cached = cache_split(cfg, data_config, rows, np.dtype(pixel_type).itemsize if raw else 4)
    dataset = training_dataset(data_config, raw, cached, cfg.seed, cfg.preserve_order)
    if cfg.crops_on == "data":
        dataset = dataset.map_batches(crop_columns, batch_size=cfg.batch_size_per_gpu,
                                      fn_kwargs={"config": cfg.multicrop(inputs)})

    cfg = with_cluster_gpus(cfg)
    check_gpus(cfg)
    cpus = worker_cpus(cfg.num_workers, use_gpu=cfg.use_gpu, data_cached=cached and cfg.crops_on == "device")
    resources = {"CPU": cpus}
    if cfg.use_gpu:
        resources["GPU"] = 1
    backend = collective_backend(cfg)
    trainer = TorchTrainer(
        train_dino,
        train_loop_config={"pretrain": asdict(cfg), "steps_per_epoch": steps, "inputs": asdict(inputs),
                           "threads": max(1, round(cpus)), "ray_log_level": ray_log_level()},
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(execution_options=ingest_options(cfg.preserve_order)),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        torch_config=TorchConfig(backend=backend),
        run_config=ray.train.RunConfig(
            name=cfg.resolved_run_name(),
            storage_path=cfg.resolved_storage(),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints or None),  # newest kept
            logging_config=ray.train.LoggingConfig(log_level=ray_log_level()),  # the epoch lines are geodino's
        ),
    )
    try:
        result = trainer.fit()
    except (KeyboardInterrupt, SystemExit) as stop:  # Ray Train aborts the run on Ctrl-C; its wait ends in exit(1)
        raise RunInterrupted(f"the run stopped before it finished; its checkpoints stay in {cfg.resolved_run_dir()}, "
                             "and the same command continues from the latest") from stop
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    final = os.path.join(cfg.resolved_output_dir(), "final")
    result.checkpoint.to_directory(final)
    state = read_checkpoint(final)
    return PretrainResult(checkpoint_dir=final, storage_checkpoint=result.checkpoint.path, metrics=state["metrics"])
