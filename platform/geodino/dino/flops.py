"""Model FLOPs of one DINO step and the GPU's peak, so that every epoch reports its model FLOPs utilisation (MFU).

images/s alone does not say whether a GPU is used well: a ViT-S step at 120 px and one at 224 px differ
4x in work. The FLOPs are counted once, by torch's own FlopCounterMode, on networks built on the meta
device: shapes only, no memory and no arithmetic, so counting costs nothing even for a ViT-L on a CPU.
"""

from __future__ import annotations

import torch

from geodino.dino.loss import DINOLoss
from geodino.dino.models import build_student_teacher

# Dense bf16 tensor-core peaks from the vendors' data sheets, by a part of the name torch reports.
PEAK_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H200": 989.0, "A100": 312.0,
               "A10G": 125.0, "L4": 121.0, "V100": 125.0}


def peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in TFLOP/s; None on a CPU or a GPU not in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def dino_step_flops(arch: str, patch_size: int, in_chans: int, out_dim: int, batch: int,
                    crop_sizes: list[int]) -> float:
    """FLOPs of one training step of one process: the teacher on the two global crops, the student forward on
    every crop and its backward pass (matrix products and attention, as FlopCounterMode counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        student, teacher = build_student_teacher(arch, patch_size, in_chans, out_dim, True, 0.0)
        loss_fn = DINOLoss(out_dim, len(crop_sizes), 0.04, 0.04, 0, 1)
        crops = [torch.empty(batch, in_chans, size, size) for size in crop_sizes]
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            teacher_output = teacher(crops[:2])
        loss_fn(student(crops), teacher_output, 0).backward()
    return float(counter.get_total_flops())
