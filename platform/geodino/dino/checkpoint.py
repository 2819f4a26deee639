"""DINO-format checkpoints: what facebookresearch/dino writes, so its evaluation scripts read ours.

A checkpoint folder holds ``checkpoint.pth`` (student, teacher, optimizer, epoch,
args, dino_loss, fp16_scaler, plus geodino's metrics log) and ``teacher_backbone.pth``,
the teacher's ViT alone with timm's key names, which ``timm.create_model(...,
pretrained_cfg_overlay=dict(file=...))`` or a plain ``load_state_dict`` accepts.
Everything is loaded with ``weights_only=True``: a checkpoint never runs code.
"""

from __future__ import annotations

import os
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pth"
BACKBONE_FILE = "teacher_backbone.pth"


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


def write_checkpoint(folder: str, state: dict, teacher_backbone: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    save_torch_atomic(state, os.path.join(folder, CHECKPOINT_FILE))
    save_torch_atomic(teacher_backbone, os.path.join(folder, BACKBONE_FILE))


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
