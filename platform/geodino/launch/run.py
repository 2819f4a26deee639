"""One entry to pretraining: pick the launcher the config names and run it.

The choice of launcher is also the choice of whether Ray is needed at all, so Ray Train's module is
imported only when ``--launcher ray`` is chosen: a bare GPU machine without Ray runs ``--launcher
torchrun`` through this same function.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath

import pyarrow.fs as pafs

from geodino import storage
from geodino.archive.card import load_card
from geodino.data.config import DataConfig, dataset_size, held_splits, resolve_bands
from geodino.dino.checkpoint import BACKBONE_FILE, CHECKPOINT_FILE, CONTRACT_FILE
from geodino.dino.config import PretrainConfig, steps_per_epoch_for
from geodino.errors import ConfigError
from geodino.launch.result import PretrainResult
from geodino.launch.torchrun import run_torchrun
from geodino.outputs import adopt_outputs, claim_outputs, read_ledger
from geodino.tracking import check_tracking_server


def check_data(cfg: PretrainConfig) -> None:
    """The data against the flags, from the metadata alone: a wrong path, a band the data does not have, a batch
    larger than the data, all named here, before Ray or a process group starts."""
    card = load_card(cfg.metadata_dir)
    resolve_bands(card, cfg.bands)
    workers = int(os.environ.get("WORLD_SIZE", 1)) if cfg.launcher == "torchrun" else cfg.num_workers
    data = DataConfig(metadata=cfg.metadata_dir, data_dir=cfg.data_dir, split="train", bands=cfg.bands,
                      normalize=cfg.normalize, limit=cfg.limit)
    rows = dataset_size(data)
    held = held_splits(data) if rows == 0 else ""
    if held:  # e.g. tile.py's labels split by blocks of 8 x 8 tiles: a smaller scene is one block, of one split
        raise ConfigError(f"--metadata_dir {cfg.metadata_dir}: no patches of the train split, which pretraining "
                          f"reads; it holds {held}: give some images the train split (a table's split column) and "
                          "prepare again")
    steps_per_epoch_for(rows, dataclasses.replace(cfg, num_workers=workers))


RUN_SETTINGS = "settings.json"  # in the run's storage folder: what a restart must share with the run it resumes
SHAPING = ("arch", "patch_size", "out_dim", "norm_last_layer", "bands", "normalize")  # change weights or inputs


def check_same_run(cfg: PretrainConfig) -> None:
    """A restart resumes the run folder's latest checkpoint; one made with another architecture, head or input
    would fail deep inside a worker as a tensor size mismatch, or, worse, mix two runs. Say so here instead,
    and record this run's settings for the next restart."""
    run_dir = cfg.resolved_run_dir()
    settings_path = storage.join(run_dir, RUN_SETTINGS)
    wanted = {name: getattr(cfg, name) for name in SHAPING}
    if storage.exists(settings_path) and holds_checkpoints(run_dir):
        recorded = json.loads(storage.read_bytes(settings_path))
        changed = [f"--{name} {recorded.get(name)!r} there, {wanted[name]!r} now" for name in SHAPING
                   if recorded.get(name) != wanted[name]]
        if changed:
            raise ConfigError(f"--run_name {cfg.resolved_run_name()} in {cfg.resolved_storage()} holds a run made with "
                              f"other settings ({'; '.join(changed)}): a restart resumes that run's checkpoints. Give "
                              "a new --run_name, or that run's settings to continue it")
        return
    if int(os.environ.get("RANK", 0)) == 0:  # torchrun: every rank checks, one writes
        storage.write_bytes_atomic(settings_path, json.dumps(wanted, indent=1).encode())


def holds_checkpoints(run_dir: str) -> bool:
    fs, inner = storage.filesystem(run_dir)
    entries = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return any(posixpath.basename(entry.path).startswith("checkpoint") for entry in entries)


FINAL_FILES = tuple(f"final/{name}" for name in (CHECKPOINT_FILE, BACKBONE_FILE, CONTRACT_FILE))  # a run's result


def claim_final(cfg: PretrainConfig) -> None:
    """OUTPUT_DIR/final may hold weights of the user's own under the names a run writes there (a DINO
    teacher_backbone.pth, say): refused by name before training, instead of replaced at its end. A final folder
    an earlier geodino wrote (before the ledger) is known by the data contract geodino writes beside the weights."""
    if int(os.environ.get("RANK", 0)) != 0:  # torchrun: rank 0 writes the final folder
        return
    output_dir = cfg.resolved_output_dir()
    if not read_ledger(output_dir) and is_geodino_contract(os.path.join(output_dir, "final", CONTRACT_FILE)):
        adopt_outputs(output_dir, [name for name in FINAL_FILES if os.path.exists(os.path.join(output_dir, name))],
                      "pretrain.py")
    claim_outputs(output_dir, FINAL_FILES, "pretrain.py", "--output_dir")


def is_geodino_contract(path: str) -> bool:
    try:
        with open(path) as handle:
            return {"arch", "patch_size", "bands"} <= set(json.load(handle))
    except (OSError, ValueError, TypeError):
        return False


def run_pretraining(cfg: PretrainConfig) -> PretrainResult | None:
    """Train; returns the result (None on a torchrun/mpirun rank other than 0)."""
    cfg.validate()
    check_tracking_server(cfg.mlflow_tracking_uri)
    cfg = cfg.with_absolute_paths()
    if cfg.metadata_dir:
        check_data(cfg)
    check_same_run(cfg)
    claim_final(cfg)
    if cfg.launcher == "torchrun":
        return run_torchrun(cfg)
    if cfg.launcher == "ray":
        from geodino.launch.ray_train import run_ray_train  # the one place that decides Ray is needed

        return run_ray_train(cfg)
    raise AssertionError(f"unchecked launcher {cfg.launcher!r}")  # validate() refuses it
