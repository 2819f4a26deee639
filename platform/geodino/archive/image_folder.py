"""A folder of images, sorted into class folders or not, read as a user's table with a row per image.

This is how EuroSAT, UC Merced, RESISC45, AID and PatternNet are distributed, and what torchvision's
ImageFolder reads: ``FOLDER/Forest/Forest_1.jpg``, ``FOLDER/River/River_7.tif``, ... (the folder's name is
the class), optionally split first (``FOLDER/train/Forest/...``, ``FOLDER/val/...``, ``FOLDER/test/...``).
Images in no class folder (all of them, in a folder of tiles cut from a scene), or in one named
``unlabeled`` or ``unlabelled`` (STL-10's convention), have no label: they serve pretraining, which needs none. Making the folder a table, rather than a reader of its own, gives its rows
every check a user's table gets.
"""

from __future__ import annotations

import os
import posixpath
import re

import pandas as pd
import pyarrow.fs as pafs

from geodino import storage
from geodino.archive.image_table import SPLIT_NAMES
from geodino.archive.pixels import IMAGE_SUFFIXES

UNLABELLED_FOLDERS = {"unlabeled", "unlabelled"}  # STL-10's convention: images for pretraining only, not a class


def _visible(names: list[str]) -> list[str]:
    return sorted(name for name in names if not name.startswith((".", "__")))  # .DS_Store, __MACOSX


def _listing(folder: str, recursive: bool = False) -> dict[str, bool]:
    """{path relative to `folder`: is a folder} of a local folder or an S3 prefix; empty when it cannot be listed.
    Locally scandir: no stat per entry, for BigEarthNet's 590,326 patch folders."""
    try:
        if not storage.is_uri(folder):
            if recursive:
                return {path: False for path in _walked_files(folder)}
            with os.scandir(folder) as listing:
                return {entry.name: entry.is_dir() for entry in listing}
        fs, inner = storage.filesystem(folder)
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=recursive, allow_not_found=True))
    except OSError:
        return {}
    return {posixpath.relpath(info.path, inner): info.type == pafs.FileType.Directory for info in infos
            if not recursive or info.type == pafs.FileType.File}


def _walked_files(folder: str) -> list[str]:
    """Files below a local folder, relative to it; hidden folders (.git, __MACOSX) are not entered."""
    found = []
    for current, folders, files in os.walk(folder):
        folders[:] = _visible(folders)
        relative = os.path.relpath(current, folder)
        found += [file if relative == "." else f"{relative}/{file}" for file in files]
    return found


def folder_entries(folder: str) -> tuple[list[str], list[str]]:
    """Sub-folders and files of a folder, hidden ones left out."""
    kinds = _listing(folder)
    names = _visible(list(kinds))
    return [name for name in names if kinds[name]], [name for name in names if not kinds[name]]


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def is_ben_patch_folder(folder: str, files: list[str]) -> bool:
    """A BigEarthNet v1 patch folder (NAME_B02.tif, NAME_labels_metadata.json), whose GeoTIFFs are bands, not
    images of a class."""
    name = re.escape(posixpath.basename(folder.rstrip("/")))
    return any(re.fullmatch(rf"{name}_(B\d\d|B8A)\.tif|{name}_labels_metadata\.json", file) for file in files)


def holds_class_folders(folder: str) -> bool:
    """Whether some sub-folder of `folder` holds image files itself. The first BigEarthNet patch folder ends the
    search: it is that archive (whose 590,326 folders would otherwise each be listed)."""
    for sub in folder_entries(folder)[0]:
        files = folder_entries(storage.join(folder, sub))[1]
        if is_ben_patch_folder(storage.join(folder, sub), files):
            return False
        if any(is_image(file) for file in files):
            return True
    return False


def split_folders(folder: str) -> dict[str, str] | None:
    """{sub-folder: split} when every sub-folder is named for a split (train/val/test, any case) and holds class
    folders; None otherwise."""
    subs = folder_entries(folder)[0]
    if not subs or any(sub.lower() not in SPLIT_NAMES for sub in subs):
        return None
    if not any(holds_class_folders(storage.join(folder, sub)) for sub in subs):
        return None
    return {sub: SPLIT_NAMES[sub.lower()] for sub in subs}


def is_image_folder(archive: str) -> bool:
    """Images in the folder itself (not the bands of one BigEarthNet patch), in class folders, or in split folders
    of class folders."""
    if not storage.is_folder(archive):
        return False
    files = folder_entries(archive)[1]
    if is_ben_patch_folder(archive, files):
        return False
    return any(is_image(file) for file in files) or holds_class_folders(archive) or split_folders(archive) is not None


def _files_under(folder: str) -> list[str]:
    """Every visible file below `folder`, as paths relative to it, sorted (a class folder may nest, e.g. by year)."""
    return sorted(path for path in _listing(folder, recursive=True)
                  if not any(part.startswith((".", "__")) for part in path.split("/")))


def image_folder_table(archive: str) -> tuple[pd.DataFrame, list[str]]:
    """The folder as a table (path relative to `archive`, label = class folder or none, split where the layout
    names it) and a warning about files left out as not images by their name."""
    splits = split_folders(archive)
    tops = [(f"{sub}/", split) for sub, split in splits.items()] if splits else [("", "")]
    rows, not_images = [], []
    for prefix, split in tops:
        classes, files = folder_entries(storage.join(archive, prefix))
        rows += [{"path": prefix + file, "label": "", "split": split} for file in files if is_image(file)]
        for folder in classes:
            label = "" if folder.lower() in UNLABELLED_FOLDERS else folder
            for file in _files_under(storage.join(archive, prefix, folder)):
                path = f"{prefix}{folder}/{file}"
                if is_image(file):
                    rows.append({"path": path, "label": label, "split": split})
                else:
                    not_images.append(path)
    warnings = []
    if not_images:
        warnings.append(f"left out {len(not_images)} files that are not images by their name (e.g. "
                        f"{', '.join(not_images[:3])}); geodino reads {', '.join(IMAGE_SUFFIXES)}")
    return pd.DataFrame(rows, columns=["path", "label", "split"]), warnings


def nested_image_folder(archive: str) -> str | None:
    """The folder one level down that holds the class folders, when `archive` holds it instead (EuroSAT's
    images/ beside its labels.csv); None otherwise."""
    for sub in folder_entries(archive)[0][:5]:
        inner = os.path.join(archive, sub)
        if is_image_folder(inner):
            return inner
    return None
