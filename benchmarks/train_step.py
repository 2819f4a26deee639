"""DINO training throughput: a plain single-process PyTorch loop vs Ray Train's TorchTrainer, one run.

python benchmarks/train_step.py [--epochs 3] [--batch 32] [--patches 400]
Both run geodino's `dino_loop` with the same model, batch, crops and data (the embedded demo archive,
packed by default so that reading is not what is compared; `--data geotiff` reads its files):
(a) `--launcher torchrun` in one process (a torch DataLoader, no Ray), (b) Ray Train with 1 worker,
(c) Ray Train with 2 gloo workers on this machine. The first epoch is warm-up and left out; the table
gives images/s of the remaining epochs and the ratio to (a).
"""

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

from geodino.archive.demo import prepared_demo
from geodino.archive.pack import PackConfig, pack
from geodino.dino.config import PretrainConfig
from geodino.launch import run_pretraining


def packed_copy(metadata: str, folder: str) -> str:
    """The demo's metadata copied into `folder` and packed there (the shared demo card stays as it is)."""
    for suffix in (".parquet", ".json"):
        shutil.copy(metadata[: -len(".parquet")] + suffix, os.path.join(folder, "metadata" + suffix))
    copy = os.path.join(folder, "metadata.parquet")
    pack(PackConfig(metadata=copy, out_dir=os.path.join(folder, "pack")))
    return copy


def images_per_s(metrics: list[dict]) -> float:
    steady = metrics[1:] or metrics
    return float(np.mean([m["images_per_s"] for m in steady]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--patches", type=int, default=400)
    parser.add_argument("--arch", default="vit_tiny")
    parser.add_argument("--crops", type=int, nargs=2, default=(64, 32), metavar=("GLOBAL", "LOCAL"))
    parser.add_argument("--data", choices=["packed", "geotiff"], default="packed")
    args = parser.parse_args(argv)

    storage = tempfile.mkdtemp(prefix="geodino-bench-")
    metadata = prepared_demo(args.patches)
    if args.data == "packed":
        metadata = packed_copy(metadata, storage)
    base = PretrainConfig(arch=args.arch, patch_size=16, out_dim=4096, epochs=args.epochs,
                          batch_size_per_gpu=args.batch, warmup_epochs=0, drop_path_rate=0.0,
                          global_crops_size=args.crops[0], local_crops_size=args.crops[1], local_crops_number=4,
                          saveckp_freq=args.epochs, metadata_dir=metadata, storage_path=storage)
    variants = {
        "(a) plain PyTorch, 1 process": dict(launcher="torchrun", run_name="plain"),
        "(a1) plain PyTorch, 1 process, 1 compute thread (what a Ray worker gets here)":
            dict(launcher="torchrun", run_name="plain1"),
        "(b) Ray Train, 1 worker": dict(launcher="ray", num_workers=1, run_name="ray1"),
        "(c) Ray Train, 2 gloo workers": dict(launcher="ray", num_workers=2, run_name="ray2"),
    }
    rows = []
    threads = torch.get_num_threads()
    for label, change in variants.items():
        # Ray sets a worker's torch threads to its CPUs (1 of the 2 here; Ray Data keeps the other).
        torch.set_num_threads(1 if change["run_name"] == "plain1" else threads)
        result = run_pretraining(dataclasses.replace(base, **change))
        rows.append((label, images_per_s(result.metrics), result.metrics[-1]["data_wait_fraction"]))
    plain = rows[0][1]
    print(f"\n{args.arch}/16, batch {args.batch}, crops 2x{args.crops[0]} + 4x{args.crops[1]}, "
          f"{args.patches} demo patches ({args.data}), epochs 2-{args.epochs}")
    print("| variant | images/s | vs (a) | data wait |\n| --- | --- | --- | --- |")
    for label, speed, wait in rows:
        print(f"| {label} | {speed:.1f} | {speed / plain:.2f}x | {wait:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
