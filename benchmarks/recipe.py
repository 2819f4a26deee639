"""Which DINO recipe gives features better than random init? Short pretrainings over a grid, each probed.

One command: prepares (once) the shared EuroSAT subset as a pack, pretrains one run per point of the
grid you choose with the torchrun launcher in its own process (all cores, no Ray), then probes the
run's teacher and a random-init backbone of the same architecture the way experiments/linear_probe.py
does (CLS tokens of the last 4 blocks; linear probe with the learning rate chosen on a held-out 10 %
of train; weighted 20-NN on the same features) on labels.csv's 2,400 train / 600 test images, and
prints one table row per run: AP macro and top-1 of both probes for DINO and for random init.

    python benchmarks/recipe.py --root /tmp/recipe --preset small_cpu \\
        --grid augment=overhead,dino --grid out_dim=1024,4096 [--set epochs=30] [--pretrain_table labels-8k.csv]

--set and --grid take PretrainConfig's field names (as experiments/pretrain.py's flags); each grid
point is one run. The table also goes to ROOT/recipe.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

from geodino.archive.pack import PackConfig, pack  # noqa: E402
from geodino.archive.prepare import PrepareConfig, prepare  # noqa: E402
from geodino.data.config import DataConfig  # noqa: E402
from geodino.data.indexed import labelled_images  # noqa: E402
from geodino.dino.config import PretrainConfig  # noqa: E402
from geodino.dino.presets import PRESETS, preset_config  # noqa: E402
from geodino.metrics import knn_report  # noqa: E402
from geodino.transfer.backbones import load_backbone  # noqa: E402
from geodino.transfer.features import backbone_features  # noqa: E402
from geodino.transfer.probe import ProbeConfig, evaluate_probe, train_probe, validation_from_train  # noqa: E402

EUROSAT = Path(os.environ.get("GEODINO_SHARED_DATA", REPO.parent / "shared" / "data")) / "eurosat-rgb-subset"


def prepared(root: Path, table: str) -> str:
    """EuroSAT's table prepared and packed under ROOT (reused when already there)."""
    name = Path(table).stem
    metadata = root / name / "metadata.parquet"
    if not (root / name / "pack" / "pack.json").exists():
        prepare(PrepareConfig(archive=str(EUROSAT / table), out=str(metadata), data_dir=str(EUROSAT), workers=2))
        pack(PackConfig(metadata=str(metadata), out_dir=str(root / name / "pack"), workers=2))
    return str(metadata)


def parse_value(field: dataclasses.Field, text: str):
    kind = str(field.type)
    if "tuple" in kind:
        return tuple(float(part) for part in text.split(":"))
    if "bool" in kind:
        return text.lower() in ("1", "true", "yes")
    if "int" in kind and "float" not in kind:
        return int(text)
    if "float" in kind:
        return float(text)
    return text


def grid_points(grid: list[str], settings: list[str], points: list[str] = ()) -> list[dict]:
    """Runs: --set for all, times each --point (FIELD=V;FIELD=V), times the product of the --grid axes."""
    fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}

    def values(items: str) -> dict:
        pairs = [item.partition("=") for item in items.split(";") if item]
        return {key: parse_value(fields[key], value) for key, _, value in pairs}

    fixed = values(";".join(settings))
    axes = []
    for item in grid:
        key, _, options = item.partition("=")
        axes.append([(key, parse_value(fields[key], value)) for value in options.split(",")])
    combos = [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]
    return [fixed | values(point) | combo for point in (points or [""]) for combo in combos]


def flags_of(config: PretrainConfig) -> list[str]:
    """The pretrain.py command line that reproduces `config` (every field, so no default decides)."""
    flags = []
    for field in dataclasses.fields(PretrainConfig):
        value = getattr(config, field.name)
        if value is None or field.name in ("preset",):
            continue
        if isinstance(value, (tuple, list)):
            flags += [f"--{field.name}", *map(str, value)]
        else:
            flags += [f"--{field.name}", str(value)]
    return flags


def pretrain(config: PretrainConfig, log: Path) -> tuple[dict, float]:
    """One run in its own process (all cores, no Ray); returns its last epoch's metrics and wall seconds."""
    started = time.perf_counter()
    command = [sys.executable, str(REPO / "experiments" / "pretrain.py"), *flags_of(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    with open(log, "w") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"pretraining failed; see {log}")
    history = [json.loads(line) for line in open(Path(config.storage_path) / config.run_name / "log.txt")]
    return history, time.perf_counter() - started


@torch.no_grad()
def features(model: torch.nn.Module, images: torch.Tensor, n_last_blocks: int, batch: int = 256) -> np.ndarray:
    parts = [backbone_features(model, images[i:i + batch], n_last_blocks, False) for i in range(0, len(images), batch)]
    return torch.cat(parts).float().numpy()


def split_tensors(metadata: str, split: str) -> tuple[torch.Tensor, np.ndarray]:
    return labelled_images(DataConfig(metadata=metadata, split=split, labelled_only=True))


def probe_scores(source: str, arch: str, patch: int, probe_data: dict, lrs: list[float], epochs: int,
                 n_last_blocks: int) -> dict:
    """linear_probe.py's protocol on in-memory tensors: lr chosen on a held-out 10 % of train, test AP."""
    model = load_backbone(source, arch, patch, in_chans=3).model
    train_x, train_y = features(model, probe_data["train"][0], n_last_blocks), probe_data["train"][1]
    test_x, test_y = features(model, probe_data["test"][0], n_last_blocks), probe_data["test"][1]
    keep, held_out = validation_from_train(len(train_x))
    best = None
    for lr in lrs:
        config = ProbeConfig(lr=lr, epochs=epochs)
        probe = train_probe(train_x[keep], train_y[keep], "single_label", config)
        score = evaluate_probe(probe, train_x[held_out], train_y[held_out], "single_label")["ap_macro"]
        if best is None or score > best[0]:
            best = (score, lr)
    probe = train_probe(train_x, train_y, "single_label", ProbeConfig(lr=best[1], epochs=epochs))
    linear = evaluate_probe(probe, test_x, test_y, "single_label")
    knn = knn_report(train_x, train_y, test_x, test_y, "single_label")
    return {"linear_ap": linear["ap_macro"], "linear_top1": linear["top1"], "knn_ap": knn["ap_macro"],
            "knn_top1": knn["top1"], "lr": best[1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/geodino-recipe")
    parser.add_argument("--preset", default="small_cpu", choices=sorted(PRESETS))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="fixed for every run")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2", help="one run per value")
    parser.add_argument("--point", action="append", default=[], metavar="FIELD=V;FIELD=V",
                        help="one run with these values (repeat for more runs)")
    parser.add_argument("--pretrain_table", default="labels.csv",
                        help="EuroSAT table whose train split is pretrained on (labels-8k.csv: 7,400 images)")
    parser.add_argument("--probe_epochs", type=int, default=100)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--n_last_blocks", type=int, default=4)
    parser.add_argument("--tag", default="run", help="prefix of the run names")
    args = parser.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    pretrain_metadata = prepared(root, args.pretrain_table)
    probe_metadata = prepared(root, "labels.csv")
    probe_data = {split: split_tensors(probe_metadata, split) for split in ("train", "test")}

    args_fixed = grid_points([], args.set)[0] if len(grid_points(args.grid, args.set, args.point)) > 1 else {}
    rows = []
    random_cache: dict[tuple, dict] = {}
    for index, point in enumerate(grid_points(args.grid, args.set, args.point)):
        name = f"{args.tag}{index:02d}"
        config = dataclasses.replace(preset_config(args.preset, point), metadata_dir=pretrain_metadata,
                                     launcher="torchrun", storage_path=str(root / "runs"), run_name=name)
        history, seconds = pretrain(config, root / f"{name}.log")
        last = history[-1]
        dino = probe_scores(str(root / "runs" / name / "final" / "teacher_backbone.pth"), config.arch,
                            config.patch_size, probe_data, args.lrs, args.probe_epochs, args.n_last_blocks)
        key = (config.arch, config.patch_size)
        if key not in random_cache:
            random_cache[key] = probe_scores(f"random:{config.arch}/{config.patch_size}", config.arch,
                                             config.patch_size, probe_data, args.lrs, args.probe_epochs,
                                             args.n_last_blocks)
        rnd = random_cache[key]
        row = {"run": name, "settings": ", ".join(f"{k}={v}" for k, v in point.items() if k not in args_fixed)
               or "(as set)",
               "epochs": config.epochs, "minutes": seconds / 60,
               "loss": f"{history[0]['loss']:.2f}->{last['loss']:.2f}",
               "entropy/batch": f"{last['teacher_entropy']:.2f}/{last.get('teacher_batch_entropy', float('nan')):.2f}",
               "linear AP dino/random": f"{dino['linear_ap']:.3f} / {rnd['linear_ap']:.3f}",
               "kNN AP dino/random": f"{dino['knn_ap']:.3f} / {rnd['knn_ap']:.3f}",
               "linear top-1": f"{dino['linear_top1']:.3f} / {rnd['linear_top1']:.3f}",
               "kNN top-1": f"{dino['knn_top1']:.3f} / {rnd['knn_top1']:.3f}",
               "both ahead": "yes" if dino["linear_ap"] > rnd["linear_ap"] and dino["knn_ap"] > rnd["knn_ap"] else "no"}
        rows.append(row)
        print(json.dumps(row), flush=True)
        table = markdown(rows)
        (root / "recipe.md").write_text(table + "\n")
    print(markdown(rows))
    return 0


def markdown(rows: list[dict]) -> str:
    def cell(value):
        return f"{value:.1f}" if isinstance(value, float) else str(value)
    header = "| " + " | ".join(rows[0]) + " |\n| " + " | ".join("---" for _ in rows[0]) + " |\n"
    return header + "\n".join("| " + " | ".join(cell(v) for v in row.values()) + " |" for row in rows)


if __name__ == "__main__":
    sys.exit(main())
