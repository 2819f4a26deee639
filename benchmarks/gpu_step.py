"""DINO training-step throughput on one GPU: images/s, model FLOPs utilisation, peak memory, per variant.

python benchmarks/gpu_step.py                 # ViT-S/16, 2x224 + 10x96 crops, on the GPU (a few minutes)
python benchmarks/gpu_step.py --tiny          # the same code at toy size on CPU, to keep it correct

Needs only torch and timm (plus numpy): it imports geodino's model, loss and multi-crop modules straight
from platform/, so it runs on a GPU machine that has neither Ray nor rasterio. Every variant runs in this
one process on synthetic 3-band images (the data path is benchmarks/data_throughput.py's job):
fp32 vs bf16 autocast, eager vs torch.compile, PyTorch SDPA (flash) attention on/off, fused AdamW, and
multi-crop on the GPU vs on the CPU. FLOPs are counted with torch.utils.flop_counter on one real step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform"))

from geodino.dino.augment import MultiCrop, MultiCropConfig  # noqa: E402
from geodino.dino.flops import peak_tflops  # noqa: E402
from geodino.dino.loss import DINOLoss  # noqa: E402
from geodino.dino.models import build_student_teacher  # noqa: E402


@dataclass
class Variant:
    name: str
    precision: str = "bf16"  # bf16 | fp32
    compile: bool = False
    sdpa: bool = True
    fused_adamw: bool = False
    crops_on: str = "gpu"  # gpu | cpu


def build(args, variant: Variant, device: torch.device):
    import timm.layers

    timm.layers.set_fused_attn(variant.sdpa)  # timm's Attention picks F.scaled_dot_product_attention or math
    student, teacher = build_student_teacher(args.arch, args.patch, 3, args.out_dim, True, 0.1)
    student, teacher = student.to(device), teacher.to(device)
    multicrop = MultiCrop(MultiCropConfig(global_crops_size=args.global_size, local_crops_size=args.local_size,
                                          local_crops_number=args.local_number))
    loss = DINOLoss(args.out_dim, multicrop.ncrops, 0.04, 0.04, 0, 100).to(device)
    kwargs = {"fused": True} if variant.fused_adamw and device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.04, **kwargs)
    if variant.compile:
        student, teacher = torch.compile(student), torch.compile(teacher)
    return student, teacher, multicrop, loss, optimizer


def make_step(student, teacher, multicrop, loss_fn, optimizer, variant: Variant, device: torch.device):
    dtype = torch.bfloat16 if variant.precision == "bf16" else None

    def step(images: torch.Tensor) -> float:
        if variant.crops_on == "cpu":
            crops = [crop.to(device, non_blocking=True) for crop in multicrop(images.cpu())]
        else:
            crops = multicrop(images)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            teacher_out = teacher(crops[:2])
            student_out = student(crops)
            loss = loss_fn(student_out, teacher_out, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(0.996).add_(ps.detach(), alpha=0.004)
        return loss

    return step


def count_flops(step, images) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(images)
    return float(counter.get_total_flops())


def measure(args, variant: Variant, batch: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    student, teacher, multicrop, loss_fn, optimizer = build(args, variant, device)
    step = make_step(student, teacher, multicrop, loss_fn, optimizer, variant, device)
    images = torch.rand(batch, 3, args.image_size, args.image_size, device=device)
    if variant.crops_on == "cpu":
        images = images.cpu().pin_memory() if device.type == "cuda" else images.cpu()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):  # compile, cuDNN autotuning, allocator warm-up
        step(images)
    sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step(images)
    loss = float(loss.detach())  # one host sync at the end
    sync(device)
    seconds = (time.perf_counter() - started) / args.steps
    flops = count_flops(make_step(*build(args, Variant("count", precision=variant.precision), device),
                                  Variant("count", precision=variant.precision), device), images.to(device))
    peak = peak_tflops(device)
    return {
        "variant": variant.name, "batch": batch, "images_per_s": batch / seconds,
        "tflops": flops / seconds / 1e12, "mfu": flops / seconds / 1e12 / peak if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss": loss,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(args, variant: Variant, batch: int, device: torch.device) -> dict:
    try:
        return measure(args, variant, batch, device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"variant": variant.name, "batch": batch, "images_per_s": None, "error": "out of memory"}


def measure_loop(args, batch: int, device: torch.device, compile: bool) -> dict:
    """What users run: geodino's train_one_epoch (clipping, EMA, schedules, entropies, the finite check), one epoch
    of warm-up (compiling) and one timed; its own images/s and MFU, as the per-epoch metrics report them."""
    from geodino.dino import DinoState, PretrainConfig
    from geodino.dino.augment import MultiCrop
    from geodino.dino.loop import train_one_epoch
    from geodino.dino.runtime import BatchRuntime

    cfg = PretrainConfig(arch=args.arch, patch_size=args.patch, out_dim=args.out_dim, batch_size_per_gpu=batch,
                         global_crops_size=args.global_size, local_crops_size=args.local_size,
                         local_crops_number=args.local_number, epochs=2, warmup_epochs=0, compile=compile,
                         precision="bf16", knn_every=0, progress_every_s=0)
    torch.manual_seed(0)
    images = torch.rand(batch, 3, args.image_size, args.image_size, device=device)  # on the device: no data wait
    runtime = BatchRuntime([{"image": images}] * args.steps, device)
    multicrop = MultiCrop(cfg.multicrop())
    state = DinoState.create(cfg, 3, multicrop.ncrops, runtime, steps_per_epoch=args.steps)
    if state.flops_per_step is None:  # counted on a GPU only; the CPU smoke run counts here
        from geodino.dino.flops import dino_step_flops

        state.flops_per_step = dino_step_flops(cfg.arch, cfg.patch_size, 3, cfg.out_dim, batch, multicrop.config.crop_sizes)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_one_epoch(state, runtime, cfg, multicrop, epoch=0)  # compiling, autotuning, allocator warm-up
    metrics = train_one_epoch(state, runtime, cfg, multicrop, epoch=1)
    return {"variant": f"geodino's loop (train_one_epoch), bf16{', compiled' if compile else ''}", "batch": batch,
            "images_per_s": metrics["images_per_s"], "tflops": metrics.get("tflops_per_gpu"),
            "mfu": metrics.get("mfu"), "peak_memory_gb": metrics.get("gpu_memory_gb"), "loss": metrics["loss"]}


def table(rows: list[dict], title: str) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [f"\n{title}", "| variant | batch | images/s | TFLOP/s | MFU | peak GiB |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['batch']} | {fmt(row.get('images_per_s'), '.0f')} | "
                     f"{fmt(row.get('tflops'), '.1f')} | {fmt(row.get('mfu'), '.1%')} | "
                     f"{fmt(row.get('peak_memory_gb'), '.1f')} |" + (f" {row['error']}" if "error" in row else ""))
    return "\n".join(lines)


VARIANTS = [
    Variant("fp32 eager", precision="fp32"),
    Variant("bf16 eager, math attention", sdpa=False),
    Variant("bf16 eager"),
    Variant("bf16 eager, fused AdamW", fused_adamw=True),
    Variant("bf16 eager, fused AdamW, crops on CPU", fused_adamw=True, crops_on="cpu"),
    Variant("bf16 compile, fused AdamW", compile=True, fused_adamw=True),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--out_dim", type=int, default=65536)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--global_size", type=int, default=224)
    parser.add_argument("--local_size", type=int, default=96)
    parser.add_argument("--local_number", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128, help="per-variant comparison batch")
    parser.add_argument("--batches", type=int, nargs="*", default=[256, 512], help="batch sweep of the best eager variant")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default="all", help="comma-separated indices into the variant list, or all")
    parser.add_argument("--tiny", action="store_true", help="toy size on CPU: checks the code, measures nothing")
    args = parser.parse_args(argv)
    if args.tiny:
        args.arch, args.patch, args.out_dim, args.image_size = "vit_tiny", 8, 256, 32
        args.global_size, args.local_size, args.local_number = 32, 16, 2
        args.batch, args.batches, args.steps, args.warmup = 4, [2], 1, 0  # each step is seconds in bf16 on a CPU
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    chosen = VARIANTS if args.variants == "all" else [VARIANTS[int(i)] for i in args.variants.split(",")]
    if device.type == "cpu":  # torch.compile on CPU needs a C++ toolchain and minutes; bf16 on CPU is not the point
        chosen = [v for v in chosen if not v.compile]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; {args.arch}/{args.patch}, out_dim {args.out_dim}, "
          f"crops 2x{args.global_size} + {args.local_number}x{args.local_size}")

    rows = []
    for variant in chosen:  # one line per variant as it finishes, in case the run is cut short
        rows.append(run_variant(args, variant, args.batch, device))
        print(table(rows[-1:], "").splitlines()[-1], flush=True)
    print(table(rows, f"variants at batch {args.batch}"), flush=True)
    # The batch sweep and the 120-px setting use the fastest eager variant: compiling again per shape
    # would cost a minute each; the compile speed-up is the ratio in the table above. When only compiled
    # variants were chosen (--variants 5), they use that.
    measured = [(r, v) for r, v in zip(rows, chosen) if r.get("images_per_s")]
    eager = [(r, v) for r, v in measured if not v.compile]
    best_variant = max(eager or measured, key=lambda pair: pair[0]["images_per_s"])[1]
    sweep = [run_variant(args, best_variant, batch, device) for batch in args.batches]
    print(table(sweep, f"batch sweep of '{best_variant.name}'"), flush=True)

    loop_rows = [measure_loop(args, args.batch, device, compile=False)]
    if device.type == "cuda":
        loop_rows.append(measure_loop(args, args.batch, device, compile=True))
    print(table(loop_rows, "geodino's own training step (what experiments/pretrain.py runs), same model and crops"),
          flush=True)

    native = argparse.Namespace(**{**vars(args), "image_size": 120, "global_size": 112, "local_size": 48,
                                   "patch": 8 if not args.tiny else args.patch})
    if args.tiny:
        native.image_size, native.global_size, native.local_size = 32, 32, 16
    native_row = run_variant(native, best_variant, args.batch, device)
    print(table([native_row], f"120-px native BigEarthNet setting ({native.arch}/{native.patch}, crops 2x"
                              f"{native.global_size} + {native.local_number}x{native.local_size})"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
