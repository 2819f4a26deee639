"""Batch inference over a whole archive: label probabilities (backbone + probe) or frozen embeddings.

The archive streams through Ray Data; the model sits in an actor pool (one actor per
GPU when there are GPUs). Results go to a folder of parquet files. A rerun skips every
patch already written, so an interrupted job resumes instead of starting over.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from geodino.archive.card import load_card
from geodino.data.config import DataConfig, dataset_size, resolve_bands
from geodino.data.ray_data import build_dataset
from geodino.ray_cluster import cluster_gpus, init_ray
from geodino.transfer.features import FeatureConfig, FeatureExtractor
from geodino.transfer.probe import LinearProbe, probabilities


@dataclass
class PredictConfig:
    pretrained_weights: str = "random:vit_small"
    probe: str | None = None  # probe.pth from linear_probe.py; not needed with --embeddings
    metadata_dir: str | None = None
    data_dir: str | None = None
    out: str = "predictions"
    split: str | None = None  # None: every row
    embeddings: bool = False
    threshold: float = 0.5
    bands: str = "rgb"
    normalize: str = "max"
    batch_size: int = 64
    actors: int = 1


class Predictor(FeatureExtractor):
    """Ray Data callable class: the feature extractor plus, unless embeddings are asked for, the probe."""

    def __init__(self, config: PredictConfig, in_chans: int):
        self.config_predict = config
        self.probe, self.classes, self.task = None, None, None
        features, arch, patch = FeatureConfig(n_last_blocks=1), None, None
        if config.probe:
            saved = torch.load(config.probe, map_location="cpu", weights_only=True)
            probe_config = saved["config"]
            features = FeatureConfig(n_last_blocks=probe_config["n_last_blocks"],
                                     avgpool_patchtokens=probe_config["avgpool_patchtokens"],
                                     image_size=probe_config["image_size"])
            arch, patch = probe_config["arch"], probe_config["patch_size"]
            state = saved["state_dict"]
            self.probe = LinearProbe(state["mean"], state["std"], state["linear.weight"].shape[0])
            self.probe.load_state_dict(state)
            self.classes, self.task = saved["classes"], saved["task"]
        super().__init__(config.pretrained_weights, arch, patch, in_chans, asdict(features))
        if self.probe is not None:
            self.probe.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        features = self.features_of(batch)
        if self.config_predict.embeddings or self.probe is None:
            return {"name": batch["name"], "embedding": list(features.cpu().numpy())}
        probs = probabilities(self.probe(features), self.task).cpu().numpy()
        if self.task == "single_label":
            predicted = [[self.classes[row.argmax()]] for row in probs]
        else:
            threshold = self.config_predict.threshold
            predicted = [[self.classes[i] for i in np.flatnonzero(row >= threshold)] for row in probs]
        return {"name": batch["name"], "probabilities": list(probs), "predicted": predicted}


def finished_names(out: str) -> set[str]:
    """Names in the part files already written; a part file that cannot be read (a crash mid-write) is removed."""
    done = set()
    for path in sorted(glob.glob(os.path.join(out, "*.parquet"))):
        try:
            done.update(pq.read_table(path, columns=["name"]).column("name").to_pylist())
        except Exception:
            os.remove(path)
    return done


def run_predict(config: PredictConfig) -> dict:
    if not config.embeddings and not config.probe:
        raise ValueError("give --probe PROBE.pth (from linear_probe.py), or --embeddings for features only")
    init_ray()
    data = DataConfig(metadata=config.metadata_dir, data_dir=config.data_dir, split=config.split, bands=config.bands,
                      normalize=config.normalize, recommended_only=False)
    in_chans = len(resolve_bands(load_card(config.metadata_dir), config.bands))
    done = finished_names(config.out)
    total = dataset_size(data)
    dataset = build_dataset(data)
    if done:
        dataset = dataset.filter(lambda row: row["name"] not in done)
    gpus = 1 if cluster_gpus() else 0
    started = time.perf_counter()
    dataset = dataset.map_batches(Predictor, fn_constructor_kwargs={"config": config, "in_chans": in_chans},
                                  batch_size=config.batch_size, concurrency=config.actors, num_gpus=gpus,
                                  num_cpus=0 if gpus else 1)
    os.makedirs(config.out, exist_ok=True)
    dataset.write_parquet(config.out)
    seconds = time.perf_counter() - started
    written = len(finished_names(config.out))
    new = written - len(done)
    return {"out": config.out, "rows": written, "expected": total, "skipped": len(done), "new": new,
            "patches_per_second": new / seconds if seconds else float("nan")}
