"""DINO-format checkpoints: what facebookresearch/dino writes, so its evaluation scripts read ours.

A checkpoint folder holds ``checkpoint.pth`` (student, teacher, optimizer, epoch,
args, dino_loss, fp16_scaler, plus geodino's metrics log), ``teacher_backbone.pth``,
the teacher's ViT alone with timm's key names, which ``timm.create_model(...,
pretrained_cfg_overlay=dict(file=...))`` or a plain ``load_state_dict`` accepts, and
``teacher_backbone.json``, the data contract the weights carry (bands, scaling, sizes).
Everything is loaded with ``weights_only=True``: a checkpoint never runs code.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pth"
BACKBONE_FILE = "teacher_backbone.pth"
WEIGHT_PARTS = ("teacher", "student")  # SOURCE#student: which network of a DINO checkpoint to load


def source_path_and_part(source: str) -> tuple[str, str]:
    """`PATH#student` -> (PATH, "student"); `PATH` -> (PATH, "teacher"). Only a known part after the last '#'
    is split off, so a '#' that belongs to a file name (`runs/exp#3/final`) stays in the path."""
    path, hash_sign, part = str(source).rpartition("#")
    if hash_sign and part in WEIGHT_PARTS:
        return path, part
    return str(source), "teacher"


CONTRACT_FILE = "teacher_backbone.json"  # beside the weights: timm's loader takes a state dict with nothing else in it


def plain_values(value: Any) -> Any:
    """Make args/metrics safe for weights_only loading: only builtins, lists, dicts."""
    if isinstance(value, dict):
        return {str(k): plain_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def save_torch_atomic(obj: Any, path: str) -> None:
    """torch.save to a temporary name and rename: a crash never leaves a half-written file in place."""
    temporary = path + ".tmp"
    torch.save(obj, temporary)
    os.replace(temporary, path)


def data_contract(args: dict) -> dict:
    """What the backbone expects of data, from a checkpoint's args: its bands in order, how pixels were scaled,
    its patch size and the size of the crops it was trained on. Probes check new data against it."""
    inputs = args.get("inputs") or {}
    return {"arch": args.get("arch"), "patch_size": args.get("patch_size"), "image_size": args.get("global_crops_size"),
            "in_chans": args.get("in_chans"), **{key: inputs.get(key) for key in (
                "bands", "rgb", "normalize", "pixel_max", "pixel_min", "band_mean", "band_std", "format")}}


def write_checkpoint(folder: str, state: dict, teacher_backbone: dict) -> None:
    """checkpoint.pth, teacher_backbone.pth (a plain timm state dict) and teacher_backbone.json (its data contract)."""
    os.makedirs(folder, exist_ok=True)
    save_torch_atomic(state, os.path.join(folder, CHECKPOINT_FILE))
    save_torch_atomic(teacher_backbone, os.path.join(folder, BACKBONE_FILE))
    contract = json.dumps(data_contract(state.get("args", {})), indent=1)
    temporary = os.path.join(folder, CONTRACT_FILE + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(contract)
    os.replace(temporary, os.path.join(folder, CONTRACT_FILE))


def read_checkpoint(folder: str, map_location: str | torch.device = "cpu") -> dict:
    path = os.path.join(folder, CHECKPOINT_FILE)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling refused or file damaged: say which file, keep the cause
        raise RuntimeError(f"{path}: cannot load checkpoint ({type(error).__name__}: {error})") from error


def strip_prefixes(state_dict: dict, prefixes=("module.", "backbone.")) -> dict:
    """DINO checkpoints prefix keys with module. (DDP) and backbone. (the wrapper)."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned
