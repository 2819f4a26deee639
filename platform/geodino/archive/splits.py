"""Train/validation/test assignment and BigEarthNet's official patch lists."""

from __future__ import annotations

import glob
import hashlib
import os

import pandas as pd

SPLITS = ("train", "validation", "test")

# File stems of the official BigEarthNet v1 lists (bigearthnet-common ships them as .csv.bz2).
_SPLIT_FILES = {"train": "train", "validation": "val", "test": "test"}
EXCLUSION_FILES = {
    "cloud_or_shadow": "patches_with_cloud_and_shadow",
    "snow": "patches_with_seasonal_snow",
    "no_19_labels": "patches_with_no_19_class_targets",
}


def hash_split(name: str) -> str:
    """Deterministic split from the patch name alone, in the official proportions (52/24/24 %).

    Used when no split lists are given, so that adding patches to an archive never
    moves an existing patch between splits.
    """
    bucket = int.from_bytes(hashlib.sha1(name.encode()).digest()[:4], "big") % 100
    if bucket < 52:
        return "train"
    return "validation" if bucket < 76 else "test"


def _find_list(directory: str, stem: str) -> str | None:
    matches = sorted(glob.glob(os.path.join(directory, f"{stem}.csv*")))
    return matches[0] if matches else None


def read_name_list(path: str) -> list[str]:
    """One patch name per line, no header (the official format; .bz2/.gz read transparently)."""
    frame = pd.read_csv(path, header=None, usecols=[0], dtype=str, skip_blank_lines=True)
    return [name.strip() for name in frame[0].dropna()]


def read_split_lists(directory: str) -> dict[str, str]:
    """patch name -> split, from train/val/test CSVs in `directory`."""
    assignment: dict[str, str] = {}
    found = False
    for split, stem in _SPLIT_FILES.items():
        path = _find_list(directory, stem)
        if path is None:
            continue
        found = True
        for name in read_name_list(path):
            assignment[name] = split
    if not found:
        raise FileNotFoundError(f"{directory}: no train.csv / val.csv / test.csv (optionally .bz2) found")
    return assignment


def read_exclusion_lists(directory: str) -> dict[str, set[str]]:
    """flag -> set of patch names, for the official noise lists present in `directory`."""
    flags = {}
    for flag, stem in EXCLUSION_FILES.items():
        path = _find_list(directory, stem)
        flags[flag] = set(read_name_list(path)) if path else set()
    if not any(flags.values()) and not any(_find_list(directory, s) for s in EXCLUSION_FILES.values()):
        raise FileNotFoundError(f"{directory}: none of {', '.join(EXCLUSION_FILES.values())} (.csv/.csv.bz2) found")
    return flags
