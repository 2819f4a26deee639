"""Frozen-backbone features, extracted once per (backbone, data) and cached.

Extraction streams the splits through Ray Data with the backbone held in a callable
class (one actor; on a GPU when the cluster has one). The result is cached as .npz
under a key derived from the backbone's weights and the data selection, so a sweep of
many probe configurations runs each backbone once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from geodino.archive.card import load_card
from geodino.data.config import DataConfig, metadata_rows, resolve_bands
from geodino.data.ray_data import build_dataset
from geodino.dino.checkpoint import source_path_and_part
from geodino.errors import ConfigError
from geodino.ray_cluster import actor_cpus, cluster_gpus, map_with_model_actor
from geodino.transfer.backbones import load_backbone


@dataclass
class FeatureConfig:
    n_last_blocks: int = 4  # DINO's linear eval: CLS tokens of the last 4 blocks for ViT-S (1 for ViT-B)
    avgpool_patchtokens: bool = False
    image_size: int | None = None  # resize before the backbone (None: the data's own size)
    batch_size: int = 64


def backbone_features(model: torch.nn.Module, images: torch.Tensor, n_last_blocks: int, avgpool: bool) -> torch.Tensor:
    """Concatenated, normalised CLS tokens of the last n blocks (+ mean patch token of the last)."""
    outputs = model.get_intermediate_layers(images, n=n_last_blocks, return_prefix_tokens=True, norm=True)
    features = [prefix[:, 0] for _, prefix in outputs]
    if avgpool:
        features.append(outputs[-1][0].mean(dim=1))
    return torch.cat(features, dim=-1)


class FeatureExtractor:
    """Ray Data callable class: loads the backbone once per actor, then maps image batches to features."""

    def __init__(self, source: str, arch: str | None, patch_size: int | None, in_chans: int, config: dict):
        self.config = FeatureConfig(**config)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.backbone = load_backbone(source, arch, patch_size, in_chans)
        self.model = self.backbone.model.to(self.device)

    @torch.no_grad()
    def features_of(self, batch: dict) -> torch.Tensor:
        images = torch.from_numpy(batch["image"]).to(self.device)
        if self.config.image_size and images.shape[-1] != self.config.image_size:
            images = F.interpolate(images, size=self.config.image_size, mode="bilinear", align_corners=False)
        images = self.backbone.standardise(images)
        features = backbone_features(self.model, images, self.config.n_last_blocks, self.config.avgpool_patchtokens)
        return features.float()

    def __call__(self, batch: dict) -> dict:
        features = self.features_of(batch).cpu().numpy()
        return {"features": features, "labels": batch["labels"], "name": batch["name"]}


def file_digest(path: str) -> str:
    """The first 16 hex digits of a file's SHA-256: what identifies its content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def source_identity(source: str) -> str:
    """What identifies the weights: the content digest of a file, the name of anything else."""
    path = source_path_and_part(source)[0]
    if os.path.isdir(path):
        candidate = os.path.join(path, "final", "teacher_backbone.pth")
        path = candidate if os.path.exists(candidate) else path
    if os.path.isfile(path):
        return f"{source}@{file_digest(path)}"
    return source


def weights_key(identity: str) -> str:
    """The weights a `source_identity` names, without the path they were given by: a file's digest and the part
    of a checkpoint it reads. `runs/demo`, `./runs/demo/final/teacher_backbone.pth` and its absolute path are one
    set of weights; compared as whole identities they made predict refuse the probe fitted on them."""
    source, at, digest = identity.rpartition("@")
    if not at or len(digest) != 16 or not all(c in "0123456789abcdef" for c in digest):
        return identity  # random:ARCH, timm:NAME: the name is the identity
    return f"{digest}#{source_path_and_part(source)[1]}"


def cache_key(source: str, arch, patch_size, data: DataConfig, features: FeatureConfig) -> str:
    metadata = data.metadata
    stamp = os.path.getmtime(metadata) if os.path.exists(metadata) else None
    payload = {"source": weights_key(source_identity(source)), "arch": arch, "patch": patch_size, "data": asdict(data),
               "metadata_mtime": stamp, "features": asdict(features) | {"batch_size": None}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_path(source: str, data: DataConfig, features: FeatureConfig, cache_dir: str, arch, patch_size) -> str:
    return os.path.join(cache_dir, cache_key(source, arch, patch_size, data, features) + ".npz")


def extract_splits(source: str, splits: dict[str, DataConfig], features: FeatureConfig, cache_dir: str,
                   arch: str | None = None, patch_size: int | None = None) -> tuple[dict[str, dict], list[str]]:
    """Features of several splits of one metadata table, and which were extracted (not cached).

    The splits not in the cache are extracted in one pass: one pipeline and one backbone actor instead of one
    per split (each costs an actor start and a model load). The cache stays one file per split."""
    result, missing = {}, []
    for split, data in splits.items():
        path = cache_path(source, data, features, cache_dir, arch, patch_size)
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as stored:
                result[split] = {key: stored[key] for key in stored.files}
        else:
            missing.append(split)
    if not missing:
        return result, []
    combined = dataclasses.replace(splits[missing[0]], split=None) if len(missing) > 1 else splits[missing[0]]
    rows = run_extractor(source, combined, features, arch, patch_size)
    table = metadata_rows(combined, columns=["name", "original_split", "recommended"])
    split_of = dict(zip(table["name"].astype(str), table["original_split"].astype(str)))
    row_splits = np.array([split_of[name] for name in rows["names"]])
    for split in missing:
        data = splits[split]
        own = {key: value[row_splits == split] for key, value in rows.items()}
        if not len(own["names"]):
            raise ConfigError(f"{data.metadata}: the {split!r} split is empty after filters; nothing to extract")
        result[split] = own
        write_cache(own, cache_path(source, data, features, cache_dir, arch, patch_size))
    return result, missing


def run_extractor(source: str, data: DataConfig, features: FeatureConfig, arch: str | None,
                  patch_size: int | None) -> dict[str, np.ndarray]:
    """Features of every row `data` selects, sorted by patch name (Ray Data does not keep row order; the cache
    does)."""
    in_chans = len(resolve_bands(load_card(data.metadata), data.bands))
    gpus = 1 if cluster_gpus() else 0
    dataset = map_with_model_actor(
        build_dataset(data),
        FeatureExtractor,
        fn_constructor_kwargs={"source": source, "arch": arch, "patch_size": patch_size, "in_chans": in_chans,
                               "config": asdict(features)},
        batch_size=features.batch_size,
        concurrency=1,
        num_gpus=gpus,
        num_cpus=0 if gpus else actor_cpus(),
    )
    parts = {"features": [], "labels": [], "names": []}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        parts["features"].append(batch["features"])
        parts["labels"].append(batch["labels"])
        parts["names"].append(batch["name"].astype(str))
    if not parts["features"]:
        raise ConfigError(f"{data.metadata}: the {data.split!r} split is empty after filters; nothing to extract")
    result = {key: np.concatenate(value) for key, value in parts.items()}
    order = np.argsort(result["names"], kind="stable")
    return {key: value[order] for key, value in result.items()}


def write_cache(result: dict[str, np.ndarray], path: str) -> None:
    """Written whole under a temporary name, then renamed: an interrupted run never leaves half a cache file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **result)
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        handle.write(buffer.getvalue())
    os.replace(temporary, path)


def fitted_image_size(source: str, data: DataConfig, requested: int | None, arch: str | None = None,
                      patch_size: int | None = None) -> int | None:
    """`requested`, or the data's own size, made a multiple of the backbone's patch size (a ViT needs whole
    patches), said on stderr when it had to change. None: the data's size as it is."""
    from geodino.data.indexed import labelled_images

    images, _ = labelled_images(data, count=1)
    patch = load_backbone(source, arch, patch_size, images.shape[1]).patch_size
    size = requested or images.shape[-1]
    if size % patch == 0:
        return requested
    fitted = max(patch, patch * round(size / patch))
    where = "--image_size" if requested else "the images"
    print(f"{where}: {size} px is not a multiple of the backbone's patch size {patch}; features are computed on "
          f"images resized to {fitted} px (pass --image_size to choose another multiple)", file=sys.stderr)
    return fitted
