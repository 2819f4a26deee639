"""Batch inference over a whole archive: label probabilities (backbone + probe) or frozen embeddings.

The archive streams through Ray Data; the model sits in an actor pool (one actor per
GPU when there are GPUs). Results go to a folder that predict owns: ``_predict.json`` records
what the rows depend on (weights, probe, data, options) and the part folders each run wrote
(``part-0000/``, ...; ``pyarrow.parquet.read_table(OUT)`` reads them all and skips the manifest).
A rerun with the same settings skips every patch already written, so an interrupted job resumes;
other settings, or a folder holding files predict did not write, are refused: predict never
deletes or overwrites what is not its own.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from geodino import storage
from geodino.archive.card import load_card, metadata_file
from geodino.archive.splits import SPLITS
from geodino.cli import flag
from geodino.data.config import NORMALIZATIONS, DataConfig, dataset_size, empty_split_problem, resolve_bands
from geodino.data.indexed import check_readable
from geodino.data.ray_data import build_dataset
from geodino.errors import ConfigError, GeodinoError, MissingInputError
from geodino.ray_cluster import actor_cpus, cluster_gpus, init_ray, map_with_model_actor
from geodino.transfer.contract import ContractError, resolve_inputs
from geodino.transfer.features import (
    FeatureConfig,
    FeatureExtractor,
    file_digest,
    fitted_image_size,
    source_identity,
    weights_key,
)
from geodino.transfer.linear_probe import load_probe
from geodino.transfer.probe import LinearProbe, probabilities


@dataclass
class PredictConfig:
    pretrained_weights: str = flag(
        "random:vit_small", "Backbone the probe was trained on (the same SOURCE as linear_probe.py's)")
    probe: str | None = flag(None, "probe.pth written by linear_probe.py; not needed with --embeddings")
    metadata_dir: str | None = flag(None, "Metadata parquet written by prepare.py (or its folder), local or s3://")
    data_dir: str | None = flag(
        None, "The pixel archive or pack, if it moved since prepare; default: where prepare found it")
    output_dir: str = flag(
        "predictions",
        "Output folder predict owns (its _predict.json manifest and part-NNNN folders); rerun to "
        "continue", aliases=("--out",))
    split: str | None = flag(None, "Only rows of this split (train, validation or test); default: every row", choices=SPLITS)
    embeddings: bool = flag(False, "Write the backbone's features instead of the probe's probabilities")
    threshold: float = flag(0.5, "Multi-label: a class is predicted when its probability reaches this")
    bands: str | None = flag(None, "Input bands; default: the probe's (the weights' data contract), else rgb")
    normalize: str | None = flag(None, "max or stats; default: the probe's, else max", choices=NORMALIZATIONS)
    force: bool = flag(False, "Run even when the probe, backbone and data do not belong together")
    image_size: int | None = flag(
        None, "With --embeddings: input side in pixels; default: the weights' training crop size, else the data's size")
    batch_size_per_gpu: int = flag(64, "Patches per inference batch (per actor)", aliases=("--batch_size",))
    actors: int = flag(1, "Inference actors (one model copy each; one per GPU on a GPU cluster)")


    def validate(self) -> None:
        """Refuse values that cannot work, naming the flag, before Ray, data or weights are touched."""
        if not self.embeddings and not self.probe:
            raise ConfigError("give --probe PROBE.pth (from linear_probe.py), or --embeddings for features only")
        if self.probe and not self.embeddings and not os.path.isfile(self.probe):
            raise MissingInputError(f"--probe {self.probe}: no such file; give the probe.pth linear_probe.py wrote")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"--threshold must lie between 0 and 1 (0.5 is usual), not {self.threshold}")
        for name in ("batch_size_per_gpu", "actors", "image_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be greater than 0, not {getattr(self, name)}")
        problem = storage.first_location_problem({f"--{name}": getattr(self, name) for name in (
            "metadata_dir", "data_dir", "output_dir")}, folders=("--output_dir",), existing=("--data_dir",),
            local=("--output_dir",))
        if problem:
            raise ConfigError(problem)


class Predictor(FeatureExtractor):
    """Ray Data callable class: the feature extractor plus, unless embeddings are asked for, the probe."""

    def __init__(self, config: PredictConfig, in_chans: int):
        self.config_predict = config
        self.probe, self.classes, self.task = None, None, None
        features, arch, patch = FeatureConfig(n_last_blocks=1, image_size=config.image_size), None, None
        if config.probe:
            saved = load_probe(config.probe)
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


MANIFEST = "_predict.json"  # a leading "_": pyarrow's dataset reader leaves it out of the table
PART_PREFIX = "part-"


class ForeignOutputError(GeodinoError):
    """--output_dir holds files predict did not write, or predictions made with other settings."""


def output_identity(config: PredictConfig) -> dict:
    """What the rows of an output depend on; a resume must match it exactly (the split only chooses rows)."""
    metadata = metadata_file(config.metadata_dir)
    return {
        "weights": weights_key(source_identity(config.pretrained_weights)),  # contents: paths may be spelt anew
        "probe": file_digest(config.probe) if config.probe else None,
        "metadata": hashlib.sha256(storage.read_bytes(metadata)).hexdigest()[:16],
        "data_dir": config.data_dir, "bands": config.bands, "normalize": config.normalize,
        "embeddings": config.embeddings, "threshold": None if config.embeddings else config.threshold,
    }


def write_manifest(out: str, manifest: dict) -> None:
    temporary = os.path.join(out, MANIFEST + ".tmp")
    with open(temporary, "w") as handle:
        json.dump(manifest, handle, indent=1)
    os.replace(temporary, os.path.join(out, MANIFEST))


def claim_output(out: str, identity: dict) -> dict:
    """The manifest of `out`: a new or empty folder becomes predict's; predict's own with the same identity is
    continued; anything else is refused before a single file is written."""
    path = os.path.join(out, MANIFEST)
    if os.path.exists(path):
        with open(path) as handle:
            manifest = json.load(handle)
        changed = [key for key in identity if manifest["identity"].get(key) != identity[key]]
        if changed:
            raise ForeignOutputError(f"{out} holds predictions made with other {', '.join(changed)}; give a new --output_dir "
                                     "(or delete that folder yourself to start over)")
        ours = {MANIFEST} | {part["folder"] for part in manifest["parts"]}
        foreign = sorted(set(os.listdir(out)) - ours)
    else:
        foreign = sorted(os.listdir(out)) if os.path.isdir(out) else []
        manifest = {"identity": identity, "parts": []}
    if foreign:
        raise ForeignOutputError(f"{out} holds {len(foreign)} files predict did not write (e.g. {foreign[0]}); "
                                 "give an empty or new folder as --output_dir")
    os.makedirs(out, exist_ok=True)
    write_manifest(out, manifest)
    return manifest


def finished_names(out: str, manifest: dict) -> set[str]:
    """Names in predict's own part files; an unreadable part file of an interrupted run of ours is removed."""
    done = set()
    for part in manifest["parts"]:
        for path in sorted(glob.glob(os.path.join(out, part["folder"], "*.parquet"))):
            try:
                done.update(pq.read_table(path, columns=["name"]).column("name").to_pylist())
            except Exception:
                if part["complete"]:
                    raise
                os.remove(path)  # written by our interrupted run, cut short
    return done


def resolved(config: PredictConfig) -> PredictConfig:
    """Bands and normalisation from the probe (or the weights' contract); a probe that does not belong to these
    weights or this data is refused by name unless --force."""
    card = load_card(config.metadata_dir)
    if not config.probe or config.embeddings:
        inputs = resolve_inputs(config.pretrained_weights, card, config.bands, config.normalize, config.image_size,
                                config.force, "predict.py")
        config = dataclasses.replace(config, bands=inputs.bands, normalize=inputs.normalize)
        data = DataConfig(metadata=config.metadata_dir, data_dir=config.data_dir, split=config.split,
                          bands=config.bands, normalize=config.normalize, recommended_only=False)
        return dataclasses.replace(config, image_size=fitted_image_size(config.pretrained_weights, data,
                                                                        inputs.image_size))
    saved = load_probe(config.probe)
    trained = saved["config"]
    bands, normalize = config.bands or trained["bands"], config.normalize or trained["normalize"]
    problems = []
    weights = source_identity(config.pretrained_weights)
    if saved.get("backbone") and weights_key(weights) != weights_key(saved["backbone"]):
        problems.append(f"the probe was fitted on the features of {saved['backbone']}, not of {weights}")
    if card["classes"] and list(saved["classes"]) != list(card["classes"]):  # none: images without labels
        problems.append(f"the probe's {len(saved['classes'])} classes are not this data's {len(card['classes'])} "
                        f"({sorted(set(saved['classes']) ^ set(card['classes']))[:3]} differ)")
    if resolve_bands(card, bands) != resolve_bands(card, trained["bands"] or "rgb"):
        problems.append(f"the probe was fitted on --bands {trained['bands']}, not {bands}")
    if normalize != trained["normalize"]:
        problems.append(f"the probe was fitted on --normalize {trained['normalize']}, not {normalize}")
    if problems and not config.force:
        raise ContractError(f"{config.probe}: {'; '.join(problems)}. Give the probe, weights and data that belong "
                            "together (or --force to run anyway)")
    return dataclasses.replace(config, bands=bands, normalize=normalize)


def split_size(config: PredictConfig) -> int:
    """The patches of --split (bands and normalisation do not change the count); an empty split, refused here,
    ended in 'need at least one array to stack' while sizing the images."""
    data = DataConfig(metadata=config.metadata_dir, split=config.split, recommended_only=False)
    total = dataset_size(data)
    if not total:
        raise ConfigError(empty_split_problem(data))
    return total


def run_predict(config: PredictConfig) -> dict:
    config.validate()
    total = split_size(config)
    config = resolved(config)
    data = DataConfig(metadata=config.metadata_dir, data_dir=config.data_dir, split=config.split, bands=config.bands,
                      normalize=config.normalize, recommended_only=False)
    check_readable(data)
    manifest = claim_output(config.output_dir, output_identity(config))
    init_ray()
    in_chans = len(resolve_bands(load_card(config.metadata_dir), config.bands))
    done = finished_names(config.output_dir, manifest)
    dataset = build_dataset(data)
    if done:
        from ray.data.expressions import col

        dataset = dataset.filter(expr=~col("name").is_in(sorted(done)))  # Arrow's filter, no Python per row
    gpus = 1 if cluster_gpus() else 0
    started = time.perf_counter()
    dataset = map_with_model_actor(dataset, Predictor, fn_constructor_kwargs={"config": config, "in_chans": in_chans},
                                   batch_size=config.batch_size_per_gpu, concurrency=config.actors, num_gpus=gpus,
                                   num_cpus=0 if gpus else actor_cpus(config.actors))
    part = {"folder": f"{PART_PREFIX}{len(manifest['parts']):04d}", "complete": False}
    manifest["parts"].append(part)
    write_manifest(config.output_dir, manifest)  # listed before writing: an interrupted run's files are known to be ours
    dataset.write_parquet(os.path.join(config.output_dir, part["folder"]))
    part["complete"] = True
    write_manifest(config.output_dir, manifest)
    seconds = time.perf_counter() - started
    written = len(finished_names(config.output_dir, manifest))
    new = written - len(done)
    return {"output_dir": config.output_dir, "rows": written, "expected": total, "skipped": len(done), "new": new,
            "patches_per_second": new / seconds if seconds else float("nan")}
