"""PretrainConfig: every setting of a DINO pretraining run, with facebookresearch/dino's names where it has them.

The entry script's flags are generated 1:1 from these fields (geodino.cli), and the dict of this
dataclass is what a checkpoint records as ``args``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from geodino import storage
from geodino.dino.augment import MultiCropConfig


@dataclass
class InputSpec:
    """The network's input channels, read off the prepared data by the launcher and recorded in checkpoints."""

    bands: tuple[str, ...]
    rgb: bool = False  # red, green, blue in that order (colour jitter and grayscale are allowed)
    zero_level: tuple[float, ...] | None = None  # per band, the normalised value of zero signal
    normalize: str = "max"

    @property
    def in_chans(self) -> int:
        return len(self.bands)


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
    augment: str = "overhead"  # overhead: keeps the spectrum (shared gain, scaled blur); dino: ImageNet's recipe
    jitter: float | None = None  # brightness and contrast spread instead of the recipe's (0.2 overhead, 0.4 dino)
    koleo_weight: float = 0.0  # DINOv2's KoLeo regulariser on the student's CLS features (0: DINO as published)
    knn_every: int = 1  # k-NN monitor every N epochs on labelled data (0: off)
    knn_samples: int = 1000  # training images in the k-NN monitor's bank (queries: half as many)
    preset: str | None = None  # named recipe the other fields started from (geodino.dino.presets)

    def resolved_run_name(self) -> str:
        return self.run_name or f"dino_{self.arch}_p{self.patch_size}"

    def resolved_storage(self) -> str:
        return storage.absolute(self.checkpoint_dir or self.storage_path)

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


def steps_per_epoch_for(rows: int, cfg: PretrainConfig) -> int:
    """Each worker gets an equal share of the rows (the remainder is dropped); batches drop their last partial one."""
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
