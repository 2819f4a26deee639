"""Probe sweep: a 24-trial Ray Tune sweep on cached features vs extracting the features in every trial.

python benchmarks/sweep_cache.py --root /tmp/geodino-sweep-bench
On the real EuroSAT subset (2,400 train / 600 test, packed), 2 backbones x 3 learning rates x 2 weight
decays x 2 label fractions, ASHA, in this one run:
  (a) geodino's sweep: each backbone's features extracted once (Ray Data), trials train probes on them;
  (b) the same Tune grid where every trial first runs its backbone over train and test itself.
Prints wall times and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
EUROSAT = REPO.parent / "shared" / "data" / "eurosat-rgb-subset"
sys.path.insert(0, str(REPO / "platform"))

from geodino.transfer.sweep import METRIC, SweepConfig, run_sweep  # noqa: E402

GRID = dict(lrs=[0.01, 0.1, 1.0], weight_decays=[0.0, 0.0001], label_fractions=[0.1, 1.0])


def packed_eurosat(root: Path, per_class: int | None = None) -> str:
    """EuroSAT prepared and packed: all 3,000 images, or `per_class` per class and split (--tiny)."""
    import pandas as pd

    from geodino.archive.pack import PackConfig, pack
    from geodino.archive.prepare import PrepareConfig, prepare

    folder = root / ("eurosat" if per_class is None else f"eurosat-{per_class}-per-class")
    metadata = folder / "metadata.parquet"
    if not (folder / "pack" / "pack.json").exists():
        table = pd.read_csv(EUROSAT / "labels.csv")
        if per_class is not None:
            table = table.groupby(["split", "label"]).head(per_class)
        folder.mkdir(parents=True, exist_ok=True)
        table.to_csv(folder / "labels.csv", index=False)
        prepare(PrepareConfig(archive=str(folder / "labels.csv"), out=str(metadata), data_dir=str(EUROSAT), workers=2))
        pack(PackConfig(metadata=str(metadata), out_dir=str(folder / "pack"), workers=2))
    return str(metadata)


def split_arrays(metadata: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalised images and labels of one split, read from the pack with pyarrow (no Ray inside a trial)."""
    import pyarrow.dataset as pads

    from geodino.archive.card import load_card
    from geodino.archive.packed import packed_manifest, shard_paths
    from geodino.data.config import DataConfig, normalizer, pixel_root
    from geodino.data.decode import decode_packed

    config = DataConfig(metadata=metadata, split=split)
    card = load_card(metadata)
    data_root = pixel_root(config, card)
    manifest = packed_manifest(config.metadata, data_root)
    fs, shards = shard_paths(data_root, manifest)
    table = pads.dataset(shards, filesystem=fs).to_table(filter=pads.field("original_split") == split)
    offset, scale = normalizer(card, tuple(card["bands"]), "max")
    decoded = decode_packed(table, manifest["shape"], manifest["dtype"], [0, 1, 2], card["classes"], offset, scale,
                            True)
    return decoded["image"], decoded["labels"]


def extracting_trial(config: dict, sources: dict, metadata: str) -> None:
    """What a sweep without a feature cache does: run the backbone on the data, then fit the probe."""
    from ray import tune

    from geodino.transfer.backbones import load_backbone
    from geodino.transfer.features import backbone_features
    from geodino.transfer.probe import ProbeConfig, evaluate_probe, train_probe, validation_from_train

    torch.set_num_threads(1)
    model = load_backbone(sources[config["backbone"]]).model.eval()
    features = {}
    for split in ("train", "test"):
        images, labels = split_arrays(metadata, split)
        with torch.no_grad():
            chunks = [backbone_features(model, torch.from_numpy(images[i:i + 256]), 4, False)
                      for i in range(0, len(images), 256)]
        features[split] = (torch.cat(chunks).numpy(), labels)
    train_features, train_labels = features["train"]
    keep, held_out = validation_from_train(len(train_features), seed=0)
    probe_config = ProbeConfig(lr=config["lr"], weight_decay=config["weight_decay"], epochs=config["epochs"],
                               label_fraction=config["label_fraction"], seed=0)

    def report(epoch, probe):
        result = evaluate_probe(probe, train_features[held_out], train_labels[held_out], "single_label")
        tune.report({METRIC: result["ap_macro"], "epoch": epoch})

    train_probe(train_features[keep], train_labels[keep], "single_label", probe_config, on_epoch=report)


def sweep_extracting_per_trial(sources: dict, metadata: str, epochs: int, storage: str, grid: dict) -> int:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    space = {"backbone": tune.grid_search(list(sources)), "lr": tune.grid_search(grid["lrs"]),
             "weight_decay": tune.grid_search(grid["weight_decays"]),
             "label_fraction": tune.grid_search(grid["label_fractions"]), "epochs": epochs}
    trainable = tune.with_resources(tune.with_parameters(extracting_trial, sources=sources, metadata=metadata),
                                    {"cpu": 1})
    tuner = tune.Tuner(trainable, param_space=space, run_config=tune.RunConfig(name="per_trial", storage_path=storage,
                                                                               verbose=0),
                       tune_config=tune.TuneConfig(scheduler=ASHAScheduler(metric=METRIC, mode="max", max_t=epochs,
                                                                           grace_period=max(1, epochs // 5))))
    return len(tuner.fit())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/geodino-sweep-bench")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="one configuration per backbone, 2 epochs, 6 images per class and split: checks the code")
    args = parser.parse_args(argv)
    grid = GRID if not args.tiny else dict(lrs=[0.1], weight_decays=[0.0], label_fractions=[1.0])
    epochs = args.epochs if not args.tiny else 2
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    metadata = packed_eurosat(root, per_class=6 if args.tiny else None)
    from geodino.dino.models import create_backbone

    other = root / "vit_tiny_seed1.pth"  # a second backbone, as a plain state-dict file
    torch.manual_seed(1)
    torch.save(create_backbone("vit_tiny", 16, 3).state_dict(), other)
    sources = {"random": "random:vit_tiny/16", "file": str(other)}
    if args.tiny:
        sources.pop("random")
    storage = tempfile.mkdtemp(prefix="sweeps-", dir=root)

    import ray

    own_ray = not ray.is_initialized()  # a test passes its Ray in
    if own_ray:
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
    cache = root / "feature-cache"
    shutil.rmtree(cache, ignore_errors=True)  # (a) pays for its extraction too
    started = time.perf_counter()
    result = run_sweep(SweepConfig(backbones=[f"{name}={source}" for name, source in sources.items()],
                                   metadata_dir=metadata, arch="vit_tiny", patch_size=16, epochs=epochs,
                                   storage_path=storage, run_name="cached", cache_dir=str(cache), **grid))
    cached_seconds = time.perf_counter() - started
    started = time.perf_counter()
    trials = sweep_extracting_per_trial(sources, metadata, epochs, storage, grid)
    per_trial_seconds = time.perf_counter() - started
    if own_ray:
        ray.shutdown()

    print(f"\nProbe sweep on EuroSAT ({'60 train / 60 test' if args.tiny else '2,400 train / 600 test'}), "
          f"{len(result['trials'])} + {trials} trials, "
          f"{epochs} probe epochs, ASHA, {os.cpu_count()} cores")
    print("| sweep | backbone runs | wall s | vs cached |\n| --- | --- | --- | --- |")
    print(f"| (a) features extracted once per backbone and split, cached | {result['extractions']} | "
          f"{cached_seconds:.0f} | 1.0x |")
    print(f"| (b) features extracted in every trial | {2 * trials} | {per_trial_seconds:.0f} | "
          f"{per_trial_seconds / cached_seconds:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
