"""PretrainConfig: every setting of a DINO pretraining run, with facebookresearch/dino's names where it has them.

The entry script's flags are generated 1:1 from these fields (geodino.cli), and the dict of this
dataclass is what a checkpoint records as ``args``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from geodino import storage
from geodino.cli import flag
from geodino.dino.augment import AUGMENTATIONS, MultiCropConfig
from geodino.dino.models import ARCHS
from geodino.errors import ConfigError
from geodino.tracking import absolute_tracking_uri, check_tracking_uri

# Every flag of pretraining that takes one of a few values, and those values (checked before anything starts).
CHOICES = {
    "arch": ARCHS,
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "backend": ("gloo", "nccl", "smddp"),
    "launcher": ("ray", "torchrun"),
    "nonfinite_loss": ("stop", "skip"),
    "crops_on": ("device", "data"),
    "augment": AUGMENTATIONS,
    "normalize": ("max", "stats"),
    "cache_data": ("auto", "on", "off"),
}
POSITIVE = ("patch_size", "out_dim", "batch_size_per_gpu", "epochs", "global_crops_size", "local_crops_size",
            "num_workers", "knn_samples", "lr", "teacher_temp", "warmup_teacher_temp")
NOT_NEGATIVE = ("local_crops_number", "warmup_epochs", "freeze_last_layer", "saveckp_freq", "knn_every", "max_failures",
                "keep_checkpoints", "progress_every_s", "warmup_teacher_temp_epochs", "min_lr", "weight_decay",
                "weight_decay_end", "clip_grad", "drop_path_rate", "koleo_weight", "jitter")


@dataclass
class InputSpec:
    """The network's input channels, read off the prepared data by the launcher and recorded in checkpoints."""

    bands: tuple[str, ...]
    rgb: bool = False  # red, green, blue in that order (colour jitter and grayscale are allowed)
    zero_level: tuple[float, ...] | None = None  # per band, the normalised value of zero signal
    normalize: str = "max"
    pixel_max: float | None = None  # what --normalize max mapped to 1 (the card's pixel scale)
    pixel_min: float = 0.0  # and to 0 (below zero only for data with negative values)
    band_mean: tuple[float, ...] | None = None  # what --normalize stats subtracted, per band
    band_std: tuple[float, ...] | None = None  # and divided by
    format: str | None = None  # the archive format the bands came from (ben_v1, ben_v2, image)

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    def normalizer(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(offset, scale, clip) that turned raw pixels into the network's input: normalised = (raw - offset) / scale."""
        if self.normalize == "stats":
            return np.asarray(self.band_mean, np.float32), np.asarray(self.band_std, np.float32), False
        count = len(self.bands)
        return (np.full(count, self.pixel_min, np.float32), np.full(count, self.pixel_max - self.pixel_min, np.float32),
                True)


@dataclass
class PretrainConfig:
    # --- facebookresearch/dino's names
    arch: str = flag("vit_small", "ViT size. vit_small for real runs (the reference result); vit_tiny on a CPU", choices=CHOICES["arch"])
    patch_size: int = flag(
        16,
        "ViT patch side in pixels. 16 for 224 px crops; 8 gives 4x the tokens (better on 120 px "
        "BigEarthNet patches) at about 4x the compute")
    out_dim: int = flag(65536, "Prototypes in the DINO head. 65536 as published; 1024-4096 for small data and CPU runs")
    norm_last_layer: bool = flag(
        True,
        "Weight-normalise the head's last layer. true is more stable; DINO used false for vit_small, "
        "which learns faster but can be unstable")
    momentum_teacher: float = flag(
        0.996,
        "Teacher EMA momentum at the start, raised to 1 by a cosine. 0.996 for long runs with batch 256; "
        "0.99 for short runs or small batches")
    warmup_teacher_temp: float = flag(
        0.04, "Teacher softmax temperature at the start. 0.04; lower it if the loss does not fall")
    teacher_temp: float = flag(
        0.04,
        "Teacher temperature after --warmup_teacher_temp_epochs. 0.04-0.07; above 0.07 training tends to "
        "collapse")
    warmup_teacher_temp_epochs: int = flag(
        0, "Epochs over which the teacher temperature rises linearly (DINO: 30 of 300)")
    precision: str = flag(
        "auto", "auto: bf16 autocast on a GPU that has it, fp32 on a CPU; fp16 uses a gradient scaler", choices=CHOICES["precision"])
    compile: bool = flag(
        False,
        "torch.compile the student and teacher: 1.44x eager for ViT-S/16 on an H100 (benchmarks/RESULTS.md). "
        "Recommended on GPUs for runs longer than a few minutes; the first steps take a minute or more to compile")
    weight_decay: float = flag(
        0.04, "AdamW weight decay at the start (weight matrices only), cosine to --weight_decay_end")
    weight_decay_end: float = flag(0.4, "Weight decay at the end of the run. 0.4 as published")
    clip_grad: float = flag(
        3.0, "Clip each parameter's gradient norm to this; 0 turns clipping off. 3.0 keeps ViTs stable")
    batch_size_per_gpu: int = flag(
        64, "Images per worker per step. The lr is scaled by the global batch (all workers) / 256")
    epochs: int = flag(
        100, "Epochs to train. DINO trained 100-800; the same command with more epochs continues a finished run")
    freeze_last_layer: int = flag(
        1, "Epochs with the head's last layer frozen. 1 as published; 0 for runs of a few epochs")
    lr: float = flag(
        0.0005,
        "Peak learning rate for a global batch of 256, reached after --warmup_epochs and scaled with the "
        "real global batch")
    warmup_epochs: int = flag(10, "Epochs of linear lr warm-up (DINO: 10 of 100); must fit in --epochs")
    min_lr: float = flag(1e-6, "Learning rate at the end of the cosine schedule")
    drop_path_rate: float = flag(
        0.1, "Stochastic depth of the student. 0.1 as published; 0 for vit_tiny and short runs")
    global_crops_scale: tuple[float, float] = flag(
        (0.4, 1.0),
        "Area range of the two global crops, fractions of the image. 0.4 1.0 as published; 0.14 1.0 "
        "without local crops")
    local_crops_number: int = flag(8, "Small local crops per image. 8 as published; 0 turns multi-crop off")
    local_crops_scale: tuple[float, float] = flag((0.05, 0.4), "Area range of the local crops, fractions of the image")
    output_dir: str | None = flag(
        None, "Where the final checkpoint (checkpoint.pth, teacher_backbone.pth) is copied; default: the run's folder")
    saveckp_freq: int = flag(
        20, "Save a checkpoint every N epochs (the last epoch always; 0: only the last); a restart resumes from the "
        "latest")
    seed: int = flag(
        0, "Random seed of initialisation, crops and data order: the same command repeats all three (with the Ray "
        "launcher while --preserve_order is true; on a CPU measured to the last bit of the loss)")
    # --- the seed's SageMaker names
    metadata_dir: str | None = flag(
        None,
        "Metadata parquet written by prepare.py (or its folder), local or s3://; default: the embedded "
        "demo archive")
    data_dir: str | None = flag(
        None, "The pixel archive or pack, if it moved since prepare; default: where prepare found it")
    checkpoint_dir: str | None = flag(
        None, "SageMaker's local checkpoint folder (synced to S3), used instead of --storage_path")
    # --- geodino's own
    global_crops_size: int = flag(
        224,
        "Side of the global crops in pixels, a multiple of --patch_size. 224 as published; 112-120 for "
        "BigEarthNet patches")
    local_crops_size: int = flag(96, "Side of the local crops in pixels, a multiple of --patch_size. 96 as published")
    bands: str = flag("rgb", "Input bands: rgb, all (every band of the archive) or a list such as B04,B03,B02,B08; "
                      "an image table: every channel, or a list of its card's band1...bandN (or of the names its "
                      "GeoTIFFs give them, such as B04)")
    normalize: str = flag(
        "max",
        "max: map the card's pixel range (0, or pixel_min for data below zero, to its pixel scale) to [0, 1]; "
        "stats: subtract the training split's per-band mean and "
        "divide by its std", choices=CHOICES["normalize"])
    num_workers: int = flag(1, "Training processes: one per GPU with --use_gpu; on a CPU, 1-2 per machine")
    use_gpu: bool | None = flag(
        None, "Train on GPUs, one per worker. auto (the default): on when the Ray cluster (with --launcher "
        "torchrun: this machine) has a GPU; true fails fast where there is none; false trains on the CPU")
    wait_for_gpus: bool = flag(
        False, "Autoscaling clusters: let Ray wait for GPU nodes to start instead of failing fast")
    backend: str | None = flag(
        None,
        "Collective backend: nccl (GPUs), gloo (CPUs) or smddp (SageMaker, with --launcher torchrun); "
        "default nccl with --use_gpu, else gloo", choices=CHOICES["backend"])
    launcher: str = flag(
        "ray",
        "ray: Ray Train workers fed by Ray Data; torchrun: processes started by torchrun or mpirun "
        "(SMDDP), no Ray", choices=CHOICES["launcher"])
    storage_path: str = flag(
        "runs",
        "Folder or s3:// prefix of runs: checkpoints, log.txt and TensorBoard events go to "
        "STORAGE_PATH/RUN_NAME")
    run_name: str | None = flag(
        None,
        "The run's folder; running again with the same name resumes it. Default: from the preset, arch "
        "and patch size")
    max_failures: int = flag(0, "Times Ray Train restarts failed workers, each time from the latest checkpoint")
    keep_checkpoints: int = flag(
        3, "Checkpoints kept in the run's folder, the newest always among them (a damaged newest one falls back "
        "to the one before); 0 keeps every one")
    nonfinite_loss: str = flag(
        "stop",
        "stop: raise on a NaN or inf loss, keeping the last checkpoint; skip: drop that step on every "
        "rank and count it", choices=CHOICES["nonfinite_loss"])
    crops_on: str = flag(
        "device",
        "device: multi-crop inside the training loop; data: in Ray Data's CPU tasks (frees GPU time when "
        "CPUs are spare; those crops do not follow --seed)", choices=CHOICES["crops_on"])
    cache_data: str = flag(
        "auto", "Ray launcher: keep the decoded training split in the object store; auto: when it fits in 30% of it", choices=CHOICES["cache_data"])
    preserve_order: bool = flag(
        True, "Ray launcher: batches come in the order --seed decides, so a rerun repeats the run; false lets Ray "
        "Data hand on blocks as they finish (Ray's preserve_order), which can be faster when reads vary in time")
    limit: int | None = flag(None, "Train on the first N training patches only (smoke runs)")
    augment: str = flag(
        "overhead",
        "overhead: keeps the spectrum (one gain for all bands, blur scaled to the crop); dino: "
        "ImageNet's colour recipe", choices=CHOICES["augment"])
    jitter: float | None = flag(
        None, "Brightness and contrast spread; default 0.2 with --augment overhead, 0.4 with dino")
    koleo_weight: float = flag(
        0.0,
        "DINOv2's KoLeo regulariser on the student's CLS features; 0.1 keeps features spread on small "
        "data (0: DINO as published)")
    knn_every: int = flag(
        1, "k-NN monitor on labelled data every N epochs, against random init measured at the start (0: off)")
    knn_samples: int = flag(1000, "Training images in the k-NN monitor's bank (queries: half as many)")
    preset: str | None = flag(
        None, "Named recipe to start from: seed, bigearthnet120, small_cpu or demo; flags you type win over it")
    progress_every_s: float = flag(
        30.0, "Inside an epoch, rank 0 reports steps, images/s and ETA: a bar in a terminal, else a line every N "
        "seconds (0: only the line per epoch)")
    mlflow_tracking_uri: str | None = flag(
        None, "Also track the run in MLflow: a folder (file store), http(s):// server or SageMaker MLflow ARN; "
        "parameters once, metrics per epoch; a restart continues the same MLflow run")
    mlflow_experiment: str = flag("geodino", "MLflow experiment of the run (with --mlflow_tracking_uri)")

    def validate(self) -> None:
        """Refuse values that cannot work, naming the flag, before data, Ray or weights are touched."""
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, not {value!r}")
        for name in POSITIVE:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be greater than 0, not {getattr(self, name)}")
        for name in NOT_NEGATIVE:
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"--{name} must not be negative, not {getattr(self, name)}")
        if not 0 <= self.momentum_teacher <= 1:
            raise ConfigError(f"--momentum_teacher must lie in [0, 1] (0.996 for long runs, 0.99 for short ones), "
                              f"not {self.momentum_teacher}")
        for name in ("global_crops_scale", "local_crops_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ConfigError(f"--{name} must be two fractions of the image, 0 < min <= max <= 1, not {low} {high}")
        for name in ("warmup_epochs", "warmup_teacher_temp_epochs"):
            if getattr(self, name) > self.epochs:
                raise ConfigError(f"--{name} {getattr(self, name)} is longer than the run's --epochs {self.epochs}: "
                                  "lower it")
        for name in ("global_crops_size", "local_crops_size"):
            if getattr(self, name) % self.patch_size:
                raise ConfigError(f"--{name} {getattr(self, name)} is not a multiple of --patch_size {self.patch_size}: "
                                  "a ViT sees whole patches")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"--limit must be a number of patches greater than 0, not {self.limit}")
        problem = storage.first_location_problem({f"--{name}": getattr(self, name) for name in (
            "metadata_dir", "data_dir", "checkpoint_dir", "output_dir", "storage_path")},
            folders=("--checkpoint_dir", "--output_dir", "--storage_path"), existing=("--data_dir",),
            local=("--checkpoint_dir", "--output_dir")) \
            or storage.name_problem("--run_name", self.run_name)
        if problem:
            raise ConfigError(problem)
        check_tracking_uri(self.mlflow_tracking_uri)
        if self.launcher == "torchrun" and storage.is_uri(self.checkpoint_dir or self.storage_path):
            raise ConfigError("the torchrun/mpirun launcher checkpoints to a local folder (SageMaker syncs it to S3); "
                              "give --checkpoint_dir or a local --storage_path, or use --launcher ray for S3")
        if self.backend == "smddp" and self.launcher == "ray":
            raise ConfigError("--backend smddp: SMDDP's AllReduce needs SageMaker's mpirun launcher, not Ray's "
                              "workers: submit with experiments/submit_sagemaker.py --backend smddp (it runs "
                              "--launcher torchrun under MPI), or use --backend nccl on a Ray cluster")
        if self.backend in ("nccl", "smddp") and self.use_gpu is False:
            collective_backend(self)
        if self.drop_path_rate >= 1:
            raise ConfigError(f"--drop_path_rate must be below 1 (0.1 for ViT-S), not {self.drop_path_rate}")

    def with_absolute_paths(self) -> PretrainConfig:
        """Local paths made absolute where the user typed them: workers run in other folders (Ray Train's run in
        its session's artifacts folder), where a relative `runs` or metadata path would mean something else."""
        changes = {name: storage.absolute(getattr(self, name)) for name in
                   ("metadata_dir", "data_dir", "checkpoint_dir", "output_dir", "storage_path") if getattr(self, name)}
        return dataclasses.replace(self, **changes, mlflow_tracking_uri=absolute_tracking_uri(self.mlflow_tracking_uri))

    def resolved_run_name(self) -> str:
        return self.run_name or f"dino_{self.arch}_p{self.patch_size}"

    def resolved_storage(self) -> str:
        return storage.absolute(self.checkpoint_dir or self.storage_path)

    def resolved_run_dir(self) -> str:
        """The run's storage folder: checkpoints, settings.json, log.txt and TensorBoard events."""
        return storage.join(self.resolved_storage(), self.resolved_run_name())

    def resolved_output_dir(self) -> str:
        if self.output_dir:
            return os.path.abspath(self.output_dir)
        store = self.resolved_storage()
        local = store if not storage.is_uri(store) else os.path.abspath("runs")
        return os.path.join(local, self.resolved_run_name())

    def multicrop(self, inputs: InputSpec | None = None) -> MultiCropConfig:
        return MultiCropConfig(
            global_crops_size=self.global_crops_size,
            local_crops_size=self.local_crops_size,
            local_crops_number=self.local_crops_number,
            global_crops_scale=tuple(self.global_crops_scale),
            local_crops_scale=tuple(self.local_crops_scale),
            augment=self.augment,
            jitter=self.jitter,
            rgb=inputs.rgb if inputs else False,
            zero_level=inputs.zero_level if inputs else None,
            solarize_threshold=0.5 if self.normalize == "max" else 0.0,
        )


def collective_backend(cfg: PretrainConfig) -> str:
    """--backend, or the one that fits the devices (use_gpu decided by then). NCCL and SMDDP only join GPUs:
    on CPUs they failed inside the workers (or, with one process, were silently never used)."""
    backend = cfg.backend or ("nccl" if cfg.use_gpu else "gloo")
    if backend in ("nccl", "smddp") and not cfg.use_gpu:
        raise ConfigError(f"--backend {backend} joins GPUs, and this run trains on the CPU (--use_gpu false, or "
                          "auto with no GPU found): use --backend gloo (the default on CPUs), or train on GPUs")
    return backend


def steps_per_epoch_for(rows: int, cfg: PretrainConfig) -> int:
    """Each worker gets an equal share of the rows (the remainder is dropped); batches drop their last partial one."""
    if rows == 0:
        raise ConfigError("no training patches are left after the filters (split 'train', recommended patches only"
                         f"{f', --limit {cfg.limit}' if cfg.limit else ''}): check the metadata's original_split column")
    steps = (rows // cfg.num_workers) // cfg.batch_size_per_gpu
    if steps == 0:
        raise ConfigError(
            f"--batch_size_per_gpu {cfg.batch_size_per_gpu} x --num_workers {cfg.num_workers} is larger than the "
            f"{rows} training patches: lower the batch size or the number of workers"
        )
    return steps
