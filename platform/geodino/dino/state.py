"""DinoState: everything DINO trains and a checkpoint restores, in one object with one state_dict.

Student (as the runtime prepared it: DDP-wrapped when several processes train), teacher, the loss
with its centre, the optimizer, the fp16 grad scaler, and the per-iteration schedules. Saving and
resuming both go through ``state_dict`` / ``load_state_dict``, so no launcher knows the keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from geodino.dino.config import PretrainConfig
from geodino.dino.flops import dino_step_flops
from geodino.dino.loss import DINOLoss
from geodino.dino.models import build_student_teacher
from geodino.dino.schedules import schedules


def param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on weight matrices only, not on biases and norm parameters (as DINO)."""
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (plain if name.endswith(".bias") or parameter.ndim == 1 else decayed).append(parameter)
    return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision in ("bf16", "auto"):
        return torch.bfloat16
    raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")


@dataclass
class DinoState:
    student: nn.Module  # as the runtime prepared it (DDP when world_size > 1)
    teacher: nn.Module
    dino_loss: DINOLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    plan: dict[str, np.ndarray]  # per-iteration lr, wd and teacher momentum
    steps_per_epoch: int
    flops_per_step: float | None = None  # model FLOPs of one step of this process, counted on a GPU for MFU

    @property
    def student_plain(self) -> nn.Module:
        """The student without its DDP wrapper: what the optimizer, EMA and checkpoints see."""
        return self.student.module if hasattr(self.student, "module") else self.student

    @classmethod
    def create(cls, cfg: PretrainConfig, in_chans: int, ncrops: int, runtime, steps_per_epoch: int) -> DinoState:
        """Fresh networks (student and teacher identical), loss, AdamW and schedules, on the runtime's device."""
        student, teacher = build_student_teacher(cfg.arch, cfg.patch_size, in_chans, cfg.out_dim, cfg.norm_last_layer,
                                                 cfg.drop_path_rate)
        if cfg.compile:  # in place: parameter names and checkpoints stay those of the plain modules
            student.compile()
            teacher.compile()
        teacher = teacher.to(runtime.device)
        student = runtime.prepare_model(student)
        plain = student.module if hasattr(student, "module") else student
        dino_loss = DINOLoss(cfg.out_dim, ncrops, cfg.warmup_teacher_temp, cfg.teacher_temp,
                             cfg.warmup_teacher_temp_epochs, cfg.epochs).to(runtime.device)
        # lr and wd are set by the schedules; on a GPU one fused kernel updates every parameter
        optimizer = torch.optim.AdamW(param_groups(plain), fused=runtime.device.type == "cuda")
        amp_dtype = autocast_dtype(cfg.precision, runtime.device)
        scaler = torch.amp.GradScaler(runtime.device.type) if amp_dtype == torch.float16 else None
        flops = None
        if runtime.device.type == "cuda":
            flops = dino_step_flops(cfg.arch, cfg.patch_size, in_chans, cfg.out_dim, cfg.batch_size_per_gpu,
                                    cfg.multicrop().crop_sizes)
        return cls(student, teacher, dino_loss, optimizer, scaler, amp_dtype,
                   schedules(cfg, steps_per_epoch, runtime.world_size), steps_per_epoch, flops)

    def state_dict(self) -> dict:
        """The trained parts under facebookresearch/dino's checkpoint keys."""
        return {
            "student": self.student_plain.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dino_loss": self.dino_loss.state_dict(),
            "fp16_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.student_plain.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.dino_loss.load_state_dict(state["dino_loss"])
        if self.scaler is not None and state.get("fp16_scaler"):
            self.scaler.load_state_dict(state["fp16_scaler"])
