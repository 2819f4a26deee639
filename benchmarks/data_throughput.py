"""Data path: training-ready samples/s from the seed's per-sample GeoTIFF reads vs geodino's Ray Data vs a pack.

python benchmarks/data_throughput.py --patches 20000 --root /tmp/geodino-bench
Builds (or reuses) an archive of BigEarthNet v1 patch folders replicated from the real example patches
(hard links, see prepare_throughput.py), prepares it, packs its RGB bands, then in this one run measures:
  (a) the seed's access pattern: a torch Dataset opening B04/B03/B02 with rasterio per sample,
      a DataLoader with one worker per core;
  (b) geodino's Ray Data pipeline over the GeoTIFFs;
  (c) geodino's Ray Data pipeline over the packed shards: float32 out of the tasks; (c2) the pack's uint16
      out of the tasks, normalised by the consumer (what Ray Train's workers do, on their device); (c3) the
      same with the split materialised in the object store first (--cache_data);
  (d) the torchrun launcher's DataLoader over the pack (no Ray; persistent workers, as the launcher's);
each Ray path is Ray Train's own dataset (launch.ray_train.training_dataset: a new order every epoch) with its
ingest options (the seeded order kept, --preserve_order, but in (c2u)), timed
over --epochs whole epochs from a fresh Ray (epoch 1 includes starting Ray's workers; training sees the later
ones), each delivering float32 (64, 3, 120, 120) batches scaled to [0, 1]. Also: peak RSS of prepare and pack
(at two archive sizes, to see whether memory grows with the archive), and multi-crop augmentation
throughput on one CPU core.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "platform"))

from prepare_throughput import replicate  # noqa: E402

BATCH = 64
SEED_BANDS = ("B04", "B03", "B02")
# Runs a script and prints its peak RSS (own, and largest child: prepare's and pack's worker processes).
PEAK_RSS = ("import json, resource, runpy, sys; sys.argv = sys.argv[1:]; "
            "code = 0\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code or 0\n"
            "print('PEAK_RSS ' + json.dumps([resource.getrusage(w).ru_maxrss / 1024 for w in "
            "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]), file=sys.stderr)\nsys.exit(code)")


class SeedDataset(torch.utils.data.Dataset):
    """The seed's pattern: one rasterio.open per band per sample."""

    def __init__(self, archive: Path, names: list[str]):
        self.archive, self.names = archive, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> torch.Tensor:
        import rasterio

        name = self.names[index]
        planes = []
        for band in SEED_BANDS:
            with rasterio.open(self.archive / name / f"{name}_{band}.tif") as src:
                planes.append(src.read(1).astype(np.float32))
        return torch.from_numpy(np.clip(np.stack(planes) / 10000.0, 0, 1))


def timed(make_batches, samples: int) -> tuple[float, int]:
    """(samples/s from creating the loader to the last of `samples` samples (0: the whole epoch), samples seen).

    Start-up is included on purpose: Ray Data runs ahead of its consumer, so a clock started at the
    first batch would time a prefilled buffer, not the pipeline.
    """
    started = time.perf_counter()
    seen = 0
    batches = iter(make_batches())
    for batch in batches:
        images = batch["image"] if isinstance(batch, dict) else batch
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 120, 120), images.shape
        seen += images.shape[0]
        if samples and seen >= samples:
            break
    rate = seen / (time.perf_counter() - started)
    if hasattr(batches, "close"):  # stop a Ray Data iterator now, not when collected after ray.shutdown()
        batches.close()
    return rate, seen


def run_with_peak_rss(script: str, *args: str) -> tuple[float, float, float]:
    """(seconds, peak RSS MB of the main process, of the largest worker process)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(REPO / script), *args], capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO / "platform")})
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{script} failed:\n{done.stderr[-3000:]}")
    own, children = json.loads(done.stderr.rsplit("PEAK_RSS ", 1)[1].splitlines()[0])
    return seconds, own, children


def prepare_and_pack(root: Path, patches: int, workers: int) -> tuple[Path, Path, list[tuple]]:
    """Prepare (headers only) and pack an archive of `patches` folders; rows for the memory table."""
    archive = replicate(root / f"n{patches}", patches)
    metadata, pack = root / f"n{patches}" / "metadata.parquet", root / f"n{patches}" / "pack"
    rows = []
    if not (pack / "pack.json").exists() or not json.loads((pack / "pack.json").read_text()).get("complete"):
        seconds, own, child = run_with_peak_rss("experiments/prepare.py", str(archive), "--out", str(metadata),
                                                "--verify", "header", "--workers", str(workers))
        rows.append(("prepare (verify header)", patches, seconds, own, child))
        seconds, own, child = run_with_peak_rss("experiments/prepare.py", str(archive), "--out", str(metadata),
                                                "--pack", str(pack), "--pack_only", "--bands", "rgb",
                                                "--workers", str(workers))
        rows.append(("pack RGB", patches, seconds, own, child))
    return archive, metadata, rows


def multicrop_per_core(images: int = 256) -> float:
    """Images/s of DINO's 2x224 + 10x96 multi-crop on 120-px RGB patches with one thread."""
    from geodino.dino.augment import MultiCrop, MultiCropConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    multicrop = MultiCrop(MultiCropConfig(global_crops_size=224, local_crops_size=96, local_crops_number=10))
    batch = torch.rand(32, 3, 120, 120)
    multicrop(batch)
    started = time.perf_counter()
    for _ in range(images // 32):
        multicrop(batch)
    rate = images / (time.perf_counter() - started)
    torch.set_num_threads(threads)
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=20000)
    parser.add_argument("--small", type=int, default=5000, help="a smaller archive, for memory vs archive size")
    parser.add_argument("--samples", type=int, default=0,
                        help="samples timed per epoch; 0: whole epochs (a Ray pipeline stopped early is still "
                             "winding down when the next path shuts Ray down)")
    parser.add_argument("--epochs", type=int, default=3, help="passes timed per path; training sees the later ones")
    parser.add_argument("--root", default="/tmp/geodino-bench")
    parser.add_argument("--stats", action="store_true", help="print Ray Data's per-operator statistics of each path")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    root = Path(args.root)

    memory = []
    for patches in sorted({args.small, args.patches}):
        archive, metadata, rows = prepare_and_pack(root, patches, cores)
        memory += rows

    import ray

    from geodino.archive.card import load_card
    from geodino.data.config import DataConfig, normalizer, resolve_bands
    from geodino.data.indexed import PatchDataset
    from geodino.data.normalize import Normalizer
    from geodino.launch.ray_train import ingest_options, training_dataset

    names = sorted(os.listdir(archive))
    order = np.random.default_rng(0).permutation(len(names))  # both loaders read in a shuffled order
    seed_dataset = SeedDataset(archive, [names[i] for i in order])
    seed_label = "(a) seed: rasterio per sample, DataLoader with 1 worker per core"
    rates = {seed_label: [timed(lambda: torch.utils.data.DataLoader(seed_dataset, batch_size=BATCH,
                                                                    num_workers=cores), args.samples)]}

    card = load_card(str(metadata))
    everything = dict(metadata=str(metadata), split=None, recommended_only=False)
    offset, scale = normalizer(card, resolve_bands(card, "rgb"), "max")
    normalize = Normalizer(offset, scale, True, torch.device("cpu"))  # what Ray Train's workers do on their device
    stats = {}
    for label, data_dir, raw, cached, in_order in (
            ("(b) geodino Ray Data over GeoTIFFs", card["data_root"], False, False, True),
            ("(c) geodino Ray Data over packed shards, float32", None, False, False, True),
            ("(c2) the same, uint16 normalised by the consumer", None, True, False, True),
            ("(c2u) the same, blocks as they finish (--preserve_order false)", None, True, False, False),
            ("(c3) the same, split cached in the object store", None, True, True, True)):
        own_ray = not ray.is_initialized()  # a test passes its Ray in; a benchmark run starts a fresh one per path
        if own_ray:
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
        # Ray Train's own dataset: the order new every epoch; cached, read and decoded before the clock starts.
        dataset = training_dataset(DataConfig(**everything, data_dir=data_dir), raw, cached, 0, in_order)
        dataset.context.execution_options = ingest_options(in_order)  # as Ray Train's DataConfig sets them
        rates[label] = [timed(lambda: ({"image": normalize(batch["image"]) if raw else batch["image"]}
                                       for batch in dataset.iter_torch_batches(batch_size=BATCH)), args.samples)
                        for _ in range(args.epochs)]
        stats[label] = dataset.stats()
        if own_ray:
            del dataset  # its executor must not outlive this Ray (collected later, it ends the process)
            gc.collect()
            ray.shutdown()
    in_memory = torch.utils.data.DataLoader(PatchDataset(DataConfig(**everything)), batch_size=BATCH, shuffle=True,
                                            num_workers=cores, persistent_workers=True)  # as the launcher's
    rates["(d) torchrun launcher: pack in memory, DataLoader"] = [timed(lambda: in_memory, args.samples)
                                                                  for _ in range(args.epochs)]

    seed = rates[seed_label][0][0]
    in_memory_rate = rates["(d) torchrun launcher: pack in memory, DataLoader"][-1][0]
    per_epoch = f"the first {args.samples} samples of each epoch" if args.samples else "whole epochs"
    print(f"\nData path, {args.patches} BigEarthNet v1 patch folders, RGB 120x120, batch {BATCH}, {cores} cores; "
          f"samples/s over {per_epoch}, start-up included (epoch 1 from a fresh Ray or fork)")
    print("| path | epoch 1 | last epoch | last vs (a) | last vs (d) |\n| --- | --- | --- | --- | --- |")
    for label, epochs in rates.items():
        first, last = epochs[0][0], epochs[-1][0]
        print(f"| {label} | {first:.0f} | {last:.0f} | {last / seed:.1f}x | {last / in_memory_rate:.2f}x |")

    if args.stats:
        for label, text in stats.items():
            print(f"\nRay Data's own statistics, {label}:\n{text}")

    print("\nMemory: peak RSS (MB) of the main process and of the largest worker process")
    print("| step | patches | seconds | main | worker |\n| --- | --- | --- | --- | --- |")
    for step, patches, seconds, own, child in memory:
        print(f"| {step} | {patches} | {seconds:.1f} | {own:.0f} | {child:.0f} |")

    per_core = multicrop_per_core()
    print(f"\nMulti-crop (2x224 + 10x96) on one CPU core: {per_core:.0f} images/s; feeding 1,500 images/s from CPUs "
          f"would take {1500 / per_core:.0f} cores, which is why geodino crops on the GPU inside the training step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
