"""DINO's loss over the head's K-wide output: the pairwise form (facebookresearch/dino) vs geodino's DINOLoss.

python benchmarks/dino_loss.py [--batch 32] [--out_dim 65536] [--local_crops 10] [--repeats 5]
Times forward + backward of the loss alone (the head's outputs as leaves) on a GPU if there is one, else the CPU,
one run; counts the memory autograd keeps for the backward pass, and on a GPU the peak memory the loss adds. Both forms give the same value and gradients
(tests/test_dino_math.py); geodino's makes one log-softmax and one product per student crop (12 with 2 + 10
crops) where the pairwise form makes one per (teacher view, other student view) pair (22).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from geodino.dino.loss import DINOLoss  # noqa: E402


def pairwise_loss(student: torch.Tensor, teacher: torch.Tensor, ncrops: int, student_temp: float = 0.1,
                  teacher_temp: float = 0.04) -> torch.Tensor:
    """main_dino.py's DINOLoss.forward (centre zero): a log-softmax and a product for every pair."""
    s = (student / student_temp).chunk(ncrops)
    t = torch.softmax(teacher / teacher_temp, dim=-1).detach().chunk(2)
    terms = [torch.sum(-t[iq] * torch.log_softmax(s[v], dim=-1), dim=-1).mean()
             for iq in range(2) for v in range(ncrops) if v != iq]
    return sum(terms) / len(terms)


def saved_for_backward_mib(loss_of, student: torch.Tensor) -> float:
    """MiB of distinct tensors autograd keeps between forward and backward (on any device)."""
    storages = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss = loss_of(student.detach().requires_grad_(True))
    loss.backward()
    return sum(storages.values()) / 2**20


def timed(loss_of, student: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(ms per forward + backward, peak MiB above the inputs on a GPU, else 0)."""
    device = student.device
    for _ in range(2):  # warm-up
        leaf = student.detach().requires_grad_(True)
        loss_of(leaf).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    started = time.perf_counter()
    for _ in range(repeats):
        leaf = student.detach().requires_grad_(True)
        loss_of(leaf).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - started) / repeats * 1000
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else 0.0
    return ms, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per step (64 per GPU in DINO's ViT-S recipe)")
    parser.add_argument("--out_dim", type=int, default=65536, help="the head's width (DINO's default: 65536)")
    parser.add_argument("--local_crops", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ncrops = 2 + args.local_crops
    generator = torch.Generator(device=device).manual_seed(0)
    student = torch.randn(ncrops * args.batch, args.out_dim, device=device, generator=generator)
    teacher = torch.randn(2 * args.batch, args.out_dim, device=device, generator=generator)
    geodino = DINOLoss(args.out_dim, ncrops, 0.04, 0.04, 0, 1).to(device)
    forms = {"pairwise (facebookresearch/dino)": lambda s: pairwise_loss(s, teacher, ncrops),
             "geodino DINOLoss (one term per student crop)": lambda s: geodino(s, teacher, 0)}
    rows = {label: (*timed(loss_of, student, args.repeats), saved_for_backward_mib(loss_of, student))
            for label, loss_of in forms.items()}
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"DINO loss, batch {args.batch}, 2 + {args.local_crops} crops, out_dim {args.out_dim}, {name}, "
          f"forward + backward, mean of {args.repeats}")
    print("| form | ms | vs pairwise | MiB kept for backward | peak MiB (GPU) |\n| --- | --- | --- | --- | --- |")
    reference = rows["pairwise (facebookresearch/dino)"][0]
    for label, (ms, peak, saved) in rows.items():
        print(f"| {label} | {ms:.1f} | {reference / ms:.2f}x | {saved:.0f} | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
