"""Ray Tune sweep of probe hyperparameters per backbone, and the comparison table and plot.

Features are extracted once per backbone (cached, see features.py) and put in the
object store once; every trial trains a probe on them. ASHA stops weak trials early
on validation AP, among the trials of the same backbone. The best validation configuration of each backbone is then refit
and scored on the test split: that row is what the comparison table shows.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from geodino import storage
from geodino.archive.card import load_card
from geodino.cli import flag
from geodino.data.config import NORMALIZATIONS
from geodino.errors import ConfigError, RunInterrupted
from geodino.metrics import knn_report
from geodino.outputs import claim_outputs
from geodino.ray_cluster import cluster_gpus, init_ray
from geodino.tracking import MLflowRun, check_tracking_server, check_tracking_uri, tune_callbacks
from geodino.transfer.backbones import parse_named
from geodino.transfer.linear_probe import (
    LinearProbeConfig,
    check_labelled_splits,
    check_num_labels,
    split_features,
    with_image_size,
)
from geodino.transfer.probe import OPTIMIZERS, ProbeConfig, evaluate_probe, train_probe

METRIC = "val_ap_macro"
OUTPUT_FILES = ("comparison.csv", "comparison.md", "per_class_ap.csv", "trials.csv", "comparison.png")
TABLE_COLUMNS = ["backbone", "status", "reason", "lr", "weight_decay", "label_fraction", METRIC, "test_ap_macro",
                 "test_ap_micro", "test_f1_macro", "knn_test_ap_macro"]


@dataclass
class SweepConfig:
    backbones: list[str] = flag(
        [], "Backbones to compare, NAME=SOURCE each (SOURCE as in linear_probe.py --pretrained_weights)")
    metadata_dir: str | None = flag(None, "Metadata parquet written by prepare.py (or its folder), local or s3://")
    data_dir: str | None = flag(
        None, "The pixel archive or pack, if it moved since prepare; default: where prepare found it")
    bands: str | None = flag(None, "Input bands; default: each backbone's own bands (its data contract), else rgb")
    normalize: str | None = flag(None, "max or stats; default: each backbone's own normalisation, else max", choices=NORMALIZATIONS)
    force: bool = flag(False, "Run even when --bands or --normalize contradict what a backbone was trained on")
    lrs: list[float] = flag([0.001, 0.01, 0.1], "Probe learning rates to try (one trial each, per backbone)")
    weight_decays: list[float] = flag([0.0, 0.0001], "Probe weight decays to try")
    label_fractions: list[float] = flag(
        [1.0], "Shares of the training split to try; each gets its own row in the table")
    epochs: int = flag(50, "Epochs per trial")
    optimizer: str = flag("sgd", "Probe optimizer: sgd or adamw", choices=OPTIMIZERS)
    batch_size_per_gpu: int = flag(256, "Feature rows per probe step", aliases=("--batch_size",))
    n_last_blocks: int = flag(4, "Concatenate the CLS token of the last N blocks (DINO: 4 for ViT-S)")
    avgpool_patchtokens: bool = flag(False, "Also concatenate the average of the last block's patch tokens")
    image_size: int | None = flag(
        None, "Input side in pixels; default: each backbone's training crop size, else the data's size")
    arch: str | None = flag(None, "Architecture of weights that do not record it")
    patch_size: int | None = flag(None, "Patch size of weights that do not record it")
    storage_path: str = flag(
        "runs/sweeps", "Folder or s3:// prefix of sweeps (Ray Tune's results and TensorBoard events)")
    run_name: str = flag("probe_sweep", "The sweep's folder under --storage_path", aliases=("--name",))
    output_dir: str | None = flag(None, "Where the table and plot go (a local folder); default: the sweep's folder, "
                                  "or runs/sweeps/RUN_NAME here for an s3:// --storage_path")
    cache_dir: str | None = flag(None, "Folder for cached features; default: $GEODINO_HOME/features (~/.cache/geodino)")
    seed: int = flag(0, "Random seed of the probes")
    mlflow_tracking_uri: str | None = flag(
        None, "Also track the sweep in MLflow (folder, http(s):// server or SageMaker MLflow ARN): one run per "
        "trial through Ray Tune's MLflow logger, and a summary run with the comparison table and plot")
    mlflow_experiment: str = flag("geodino", "MLflow experiment of the sweep (with --mlflow_tracking_uri)")

    def validate(self) -> None:
        """Refuse a grid that cannot work before any feature is extracted; the per-backbone values (epochs, batch,
        blocks, paths) are checked as linear_probe checks them."""
        if not self.backbones:
            raise ConfigError("give at least one --backbone NAME=SOURCE (e.g. --backbone random=random:vit_small)")
        grids = {"lrs": (lambda v: v > 0, "greater than 0"), "weight_decays": (lambda v: v >= 0, "0 or more"),
                 "label_fractions": (lambda v: 0 < v <= 1, "in (0, 1]")}
        for name, (allowed, wanted) in grids.items():
            values = getattr(self, name)
            bad = [value for value in values if not allowed(value)]
            if bad or not values:
                raise ConfigError(f"--{name} must each be {wanted}, not {' '.join(map(str, bad)) or 'empty'}")
        dataclasses.replace(self.probe_base(), lr=self.lrs[0], epochs=self.epochs,
                            batch_size_per_gpu=self.batch_size_per_gpu).validate()
        check_tracking_uri(self.mlflow_tracking_uri)
        problem = storage.first_location_problem({"--storage_path": self.storage_path, "--output_dir": self.output_dir},
                                                 folders=("--storage_path", "--output_dir"), local=("--output_dir",)) \
            or storage.name_problem("--run_name", self.run_name)
        if problem:
            raise ConfigError(problem)

    def probe_base(self) -> LinearProbeConfig:
        return LinearProbeConfig(metadata_dir=self.metadata_dir, data_dir=self.data_dir, bands=self.bands,
                                 normalize=self.normalize, n_last_blocks=self.n_last_blocks, arch=self.arch,
                                 patch_size=self.patch_size, avgpool_patchtokens=self.avgpool_patchtokens,
                                 image_size=self.image_size, cache_dir=self.cache_dir, seed=self.seed,
                                 force=self.force)

    def resolved_output_dir(self) -> str:
        """--output_dir, else the sweep's folder; for an s3:// storage (Ray Tune's results go there) a folder here,
        runs/sweeps/RUN_NAME, as the tables and plot are written on this machine."""
        if self.output_dir:
            return self.output_dir
        if storage.is_uri(self.storage_path):
            return os.path.join("runs", "sweeps", self.run_name)
        return os.path.join(storage.absolute(self.storage_path), self.run_name)


def probe_trial(config: dict, features: dict, task: str) -> None:
    """One Tune trial: fit a probe on cached features, reporting validation AP every epoch."""
    torch.set_num_threads(1)  # trials run side by side; one core each
    split = features[config["backbone"]]
    train, validation = split["train"], split["validation"]
    probe_config = ProbeConfig(lr=config["lr"], weight_decay=config["weight_decay"], epochs=config["epochs"],
                               batch_size=config["batch_size"], optimizer=config["optimizer"],
                               label_fraction=config["label_fraction"], seed=config["seed"])

    def report(epoch, probe):
        result = evaluate_probe(probe, validation["features"], validation["labels"], task)
        tune.report({METRIC: result["ap_macro"], "val_ap_micro": result["ap_micro"], "epoch": epoch})

    train_probe(train["features"], train["labels"], task, probe_config, on_epoch=report)


class PerBackboneASHA(FIFOScheduler):
    """ASHA among the trials of each backbone. One ASHA over the whole grid weighed a weaker backbone's trials
    against a stronger one's and stopped them (measured: every random-init trial stopped after 1 epoch, its
    configuration then chosen by a 1-epoch score), so the backbones' hyperparameters were chosen on unequal terms;
    within a backbone, ASHA still saves the epochs of its weak configurations."""

    def __init__(self, **asha):
        super().__init__()
        self._metric, self._asha, self._of_backbone = asha["metric"], asha, {}

    def _scheduler(self, trial) -> ASHAScheduler:
        return self._of_backbone.setdefault(trial.config["backbone"], ASHAScheduler(**self._asha))

    def on_trial_add(self, tune_controller, trial) -> None:
        self._scheduler(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._scheduler(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._scheduler(trial).on_trial_remove(tune_controller, trial)


def trial_resources() -> dict:
    """A CPU per trial; on a GPU cluster probes on cached features share a GPU four ways."""
    return {"cpu": 1, "gpu": 0.25} if cluster_gpus() else {"cpu": 1}


def run_sweep(cfg: SweepConfig) -> dict:
    cfg.validate()
    check_tracking_server(cfg.mlflow_tracking_uri)
    card = load_card(cfg.metadata_dir)
    base = cfg.probe_base()
    check_num_labels(base, card["classes"])
    named = [parse_named(spec) for spec in cfg.backbones]
    if len({name for name, _ in named}) != len(named):
        raise ConfigError(f"--backbone names must be unique: {[name for name, _ in named]}")
    configs = {name: with_image_size(source, base) for name, source in named}  # every contract checked first
    check_labelled_splits(base)
    paths = claim_outputs(cfg.resolved_output_dir(), OUTPUT_FILES, "sweep_probe.py",
                          "--output_dir" if cfg.output_dir else "--storage_path/--run_name")
    init_ray()
    features, extractions = {}, 0
    for name, source in named:
        features[name], extracted = split_features(source, configs[name])
        extractions += extracted

    trainable = tune.with_resources(tune.with_parameters(probe_trial, features=features, task=card["task"]),
                                    trial_resources())
    space = {
        "backbone": tune.grid_search([name for name, _ in named]),
        "lr": tune.grid_search(list(cfg.lrs)),
        "weight_decay": tune.grid_search(list(cfg.weight_decays)),
        "label_fraction": tune.grid_search(list(cfg.label_fractions)),
        "epochs": cfg.epochs, "batch_size": cfg.batch_size_per_gpu, "optimizer": cfg.optimizer, "seed": cfg.seed,
    }
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            scheduler=PerBackboneASHA(metric=METRIC, mode="max", max_t=cfg.epochs,
                                      grace_period=max(1, cfg.epochs // 5)),
        ),
        run_config=tune.RunConfig(name=cfg.run_name, storage_path=storage.absolute(cfg.storage_path), verbose=0,
                                  callbacks=tune_callbacks(cfg.mlflow_tracking_uri, cfg.mlflow_experiment,
                                                           cfg.run_name)),
    )
    # Tune's own Ctrl-C handler ends fit() early with a partial grid, which would be compared as if finished (or
    # fail on trials never started): let Ctrl-C interrupt instead, and say what stays.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Tune's new console output prints, even at verbose=0, a box and `tensorboard --logdir` of the driver's staging
    # folder in Ray's temp dir, not of the sweep's storage: the legacy reporter is silent at verbose=0, and the
    # sweep prints its own table and TensorBoard command.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        grid = tuner.fit()
    except KeyboardInterrupt as stop:
        raise RunInterrupted("the sweep stopped before its trials finished, so nothing was compared or written; the "
                             "backbones' features stay cached, and the same command runs the trials again without "
                             "extracting them") from stop
    trials = trial_table(grid, cfg.epochs)
    table, per_class = compare(trials, features, card, cfg)
    outputs = write_outputs(table, per_class, trials, cfg, paths)
    if cfg.mlflow_tracking_uri:
        track_comparison(table, cfg, paths)
    failed = sorted(set(table.loc[table["status"] != "ok", "backbone"]))
    return {"table": table, "per_class": per_class, "trials": trials, "extractions": extractions,
            "failed_backbones": failed, **outputs}


def trial_table(grid, epochs: int) -> pd.DataFrame:
    """One row per trial: its configuration, status (ok, stopped early by ASHA, or error) and why, best validation AP."""
    rows = []
    for result in grid:
        row = {key: result.config[key] for key in ("backbone", "lr", "weight_decay", "label_fraction")}
        history = result.metrics_dataframe
        if result.error is not None:
            row |= {"status": "error", "reason": error_line(result.error)}
        elif history is None or METRIC not in history or history[METRIC].isna().all():
            row |= {"status": "error", "reason": "the trial reported no validation AP"}
        else:
            best = history.loc[history[METRIC].idxmax()]
            ran = int(history["epoch"].max()) + 1
            row |= {"status": "ok" if ran >= epochs else f"stopped by ASHA after {ran} epochs", "reason": "",
                    METRIC: float(best[METRIC]), "val_ap_micro": float(best["val_ap_micro"])}
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["backbone", "lr", "weight_decay", "label_fraction"], ignore_index=True)


def error_line(error: BaseException) -> str:
    """The user-facing line of a failed trial: the original exception behind Ray's wrappers."""
    cause = error
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:300]


def compare(trials: pd.DataFrame, features: dict, card: dict, cfg: SweepConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Best validation configuration per backbone, refit on train and scored on test; a backbone whose trials
    all failed gets a row that says so."""
    rows, per_class = [], {}
    for name in trials["backbone"].unique():
        own = trials[trials["backbone"] == name]
        scored = own[own["status"] != "error"] if METRIC in own else own.iloc[0:0]
        if scored.empty:
            rows.append({"backbone": name, "status": "failed", "reason": f"all {len(own)} trials failed; first: "
                         f"{own.iloc[0]['reason']}"})
            per_class[name] = [float("nan")] * len(card["classes"])
            continue
        best = scored.sort_values(METRIC, ascending=False).iloc[0]
        split = features[name]
        probe_config = ProbeConfig(lr=float(best["lr"]), weight_decay=float(best["weight_decay"]), epochs=cfg.epochs,
                                   batch_size=cfg.batch_size_per_gpu, optimizer=cfg.optimizer,
                                   label_fraction=float(best["label_fraction"]), seed=cfg.seed)
        probe = train_probe(split["train"]["features"], split["train"]["labels"], card["task"], probe_config)
        test = evaluate_probe(probe, split["test"]["features"], split["test"]["labels"], card["task"])
        knn = knn_report(split["train"]["features"], split["train"]["labels"], split["test"]["features"],
                         split["test"]["labels"], card["task"])
        row = {"backbone": name, "status": "ok", "reason": "", "lr": probe_config.lr, "weight_decay": probe_config.weight_decay,
               "label_fraction": probe_config.label_fraction, "val_ap_macro": float(best[METRIC]),
               "test_ap_macro": test["ap_macro"], "test_ap_micro": test["ap_micro"], "test_f1_macro": test["f1_macro"],
               "knn_test_ap_macro": knn["ap_macro"]}
        if "top1" in test:
            row |= {"test_top1": test["top1"], "knn_test_top1": knn["top1"]}
        rows.append(row)
        per_class[name] = test["ap_per_class"]
    per_class_table = pd.DataFrame(per_class, index=card["classes"])
    per_class_table.index.name = "class"
    columns = TABLE_COLUMNS + (["test_top1", "knn_test_top1"] if card["task"] == "single_label" else [])
    return pd.DataFrame(rows).reindex(columns=columns), per_class_table


def markdown(frame: pd.DataFrame, index: bool = False) -> str:
    frame = frame.reset_index() if index else frame
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    def cell(v):
        return "n/a" if isinstance(v, float) and math.isnan(v) else (f"{v:.4g}" if isinstance(v, float) else str(v))
    return "\n".join([header, rule] + ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def write_outputs(table: pd.DataFrame, per_class: pd.DataFrame, trials: pd.DataFrame, cfg: SweepConfig,
                  paths: dict[str, str]) -> dict:
    table.to_csv(paths["comparison.csv"], index=False)
    per_class.to_csv(paths["per_class_ap.csv"])
    trials.to_csv(paths["trials.csv"], index=False)
    note = ("AP = average precision (scikit-learn) of the linear probe on the test split, for the configuration with "
            "the best validation macro AP; macro = mean over classes with at least one test positive; "
            "micro = all (patch, class) decisions pooled. kNN: weighted 20-NN on the same frozen features.")
    with open(paths["comparison.md"], "w") as handle:
        handle.write(f"# Backbone comparison\n\n{note}\n\n{markdown(table)}\n\n## Per-class test AP\n\n"
                     f"{markdown(per_class, index=True)}\n\nconfig: `{json.dumps(asdict(cfg))}`\n")
    plot(table, per_class, paths["comparison.png"])
    return {"paths": paths}


def track_comparison(table: pd.DataFrame, cfg: SweepConfig, paths: dict[str, str]) -> None:
    """The sweep's summary run in MLflow: its settings, each backbone's test AP, the tables and plot as artefacts."""
    summary = MLflowRun(cfg.mlflow_tracking_uri, cfg.mlflow_experiment, f"{cfg.run_name} comparison", asdict(cfg))
    for _, row in table.iterrows():
        summary.log_metrics({f"{row['backbone']}/{key}": row[key] for key in row.index if key.startswith(("test_", "knn_"))},
                            step=0)
    summary.log_artifacts(list(paths.values()))
    summary.finish()


def plot(table: pd.DataFrame, per_class: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 3]})
    x = np.arange(len(table))
    left.bar(x - 0.2, table["test_ap_macro"], 0.4, label="macro AP")
    left.bar(x + 0.2, table["test_ap_micro"], 0.4, label="micro AP")
    left.set_xticks(x, table["backbone"], rotation=20)
    left.set_ylim(0, 1)
    left.set_ylabel("test average precision (linear probe)")
    left.legend()
    left.set_title("AP per backbone")
    width = 0.8 / max(1, per_class.shape[1])
    classes = np.arange(len(per_class))
    for i, name in enumerate(per_class.columns):
        right.bar(classes + i * width - 0.4 + width / 2, per_class[name].fillna(0), width, label=name)
    right.set_xticks(classes, [label[:22] for label in per_class.index], rotation=60, ha="right", fontsize=7)
    right.set_ylim(0, 1)
    right.set_title("per-class test AP (classes without test positives shown as 0)")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


