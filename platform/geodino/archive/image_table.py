"""A user's table of images (CSV, TSV or parquet): a path and labels per row, optionally a split.

A row without labels is an image for pretraining only (self-supervised learning needs none; probes leave it
out).

Images are multi-band GeoTIFFs or JPEG/PNG (read as RGB), at paths relative to the table's folder or
--data_dir. Rows are checked like BigEarthNet patches: a row that fails is rejected with its line
number and the reason. A table is checked as a whole too, because a user's table can be wrong in
ways no single row shows: images must share band count and dtype (another size is resized), the same
image may not appear twice (by path or by pixels, which would leak between splits), split values are mapped
when unambiguous (`Train`, `val`, `valid`) and refused otherwise, and class names that differ only by
case or a typo (`Forrest`, `forest`) are reported.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections import Counter
from itertools import combinations

import numpy as np
import pandas as pd
from pyarrow import ArrowInvalid

from geodino import storage
from geodino.archive.bands import sentinel2_name
from geodino.archive.pixels import (
    FORMAT_IMAGE,
    GDAL_SUFFIXES,
    PatchReadError,
    band_descriptions,
    declares_rgb,
    read_image,
)
from geodino.errors import ConfigError, DamagedInputError, RejectedPatch

SPLIT_NAMES = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
               "validation": "validation", "dev": "validation", "test": "test", "testing": "test"}


COLUMNS = ("path", "labels", "label", "split")
# A table's kind by its file name's ending: the separator of a text table, None for parquet.
TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".parquet": None}
TABLE_SUFFIXES = tuple(TABLE_SEPARATORS)
# Headers other tools write for these columns; named in the error, never taken on a guess (a 'filename' may
# hold names without their folder, an 'id' anything).
COLUMN_SYNONYMS = {"path": {"filename", "file", "filepath", "file_path", "image", "image_path", "img", "location"},
                   "label": {"class", "class_name", "category", "target", "landcover", "land_cover"}}


def known_column_names(columns: list) -> dict:
    """Renames of headers that are geodino's column names but for case or spaces ('Path', ' Label'), where one
    header alone matches."""
    renames = {}
    for name in COLUMNS:
        if name in columns:
            continue
        matches = [column for column in columns if str(column).strip().lower() == name]
        if len(matches) == 1:
            renames[matches[0]] = name
    return renames


def read_image_table(table_path: str) -> pd.DataFrame:
    """The table as text cells (CSV/TSV: spaces after a separator ignored), refused with the file named when it is
    not a table geodino can read: not CSV, TSV or parquet, no rows, or no path and label columns."""
    separator = TABLE_SEPARATORS.get(os.path.splitext(table_path)[1].lower(), ",")
    source = io.BytesIO(storage.read_bytes(table_path)) if storage.is_uri(table_path) else table_path
    try:
        if separator is None:
            table = pd.read_parquet(source)
        else:
            table = pd.read_csv(source, sep=separator, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ArrowInvalid) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        encoding = "; Excel: Save As 'CSV UTF-8'" if isinstance(error, UnicodeDecodeError) else ""
        raise DamagedInputError(f"{table_path}: not a readable table ({reason}); give a comma-separated CSV "
                                f"(UTF-8{encoding}), a tab-separated .tsv, or a parquet file with a 'path' and a "
                                "'label' or 'labels' column") from error
    table = table.rename(columns=known_column_names(list(table.columns)))
    if "path" not in table.columns:
        other = next((sep for sep in ";\t|," if sep != separator and len(table.columns) == 1
                      and sep in str(table.columns[0])), None)
        read_as = "tabs in a .tsv file" if separator == "\t" else "commas (a .tsv file: tabs)"
        hint = f" (its header looks separated by {other!r}: geodino reads {read_as})" if other else ""
        renames = [f"{column!r} to {target!r}" for column in table.columns
                   for target, others in COLUMN_SYNONYMS.items() if str(column).strip().lower() in others]
        hint += f" (rename {', '.join(renames)}, if that is what they hold)" if renames else ""
        raise DamagedInputError(
            f"{table_path}: needs a 'path' column, and for labelled images a 'labels' (';'-separated or list) or "
            f"'label' column; has {list(table.columns)}{hint}"
        )
    named_otherwise = [column for column in table.columns if str(column).strip().lower() in COLUMN_SYNONYMS["label"]]
    if not {"labels", "label"} & set(table.columns) and named_otherwise:  # else every image would be unlabelled
        raise DamagedInputError(f"{table_path}: no 'label' or 'labels' column, but {named_otherwise[0]!r}: rename it "
                                "to 'label' if it holds the classes (or leave it out to prepare images without labels)")
    if table.empty:
        raise DamagedInputError(f"{table_path}: the table has a header but no rows; add a row per image")
    return table


def rooted_paths(table: pd.DataFrame, data_root: str, data_dir_given: bool) -> tuple[pd.DataFrame, str]:
    """The table with absolute image paths made relative to the data root, and that root: metadata keeps paths
    relative so that the archive can move (--data_dir). Without --data_dir the root becomes the folder that holds
    every image (relative paths start at the table's folder, as before); with it, an absolute path outside it
    stays absolute, and is rejected by its row."""
    paths = [posix_path("" if value is None else str(value), data_root) for value in table["path"]]
    table = table.assign(path=paths)
    if not any(storage.is_absolute(path) for path in paths):
        return table, data_root
    root = storage.absolute(data_root)
    if not data_dir_given:
        paths = [path if not path or storage.is_absolute(path) or ".." in path.split("/") else storage.join(root, path)
                 for path in paths]  # a relative path that climbs out stays as it is: rejected
        root = storage.common_folder([path for path in paths if storage.is_absolute(path)])
    rooted = [(storage.relative_inside(path, root) or path) if storage.is_absolute(path) else path for path in paths]
    return table.assign(path=rooted), root


def posix_path(path: str, data_root: str) -> str:
    """A table written on Windows (images\\Forest\\1.jpg) read on Linux: '\\' as '/' unless a file of that
    literal name is there."""
    if "\\" not in path or (not storage.is_uri(data_root) and os.path.exists(os.path.join(data_root, path))):
        return path
    return path.replace("\\", "/")


def _labels_of(record: dict) -> list[str]:
    value = record.get("labels", record.get("label"))
    if isinstance(value, str):
        return [part.strip() for part in value.split(";") if part.strip()]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(part) for part in value]


def split_of(value, where: str) -> str | None:
    """The split a row names, mapped to train/validation/test when unambiguous (case and common synonyms)."""
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()
    if not text:
        return None
    split = SPLIT_NAMES.get(text.lower())
    if split is None:
        raise RejectedPatch(f"{where}: split {text!r} is not one of train, validation, test (also accepted: "
                            f"{', '.join(sorted(k for k in SPLIT_NAMES if k not in ('train', 'validation', 'test')))})")
    return split


def parse_image_chunk(data_root: str, records: list[tuple[str, dict]], verify: str):
    """Check each (where, record) pair; `where` names the row in messages: its line in a table ("row 7"), or the
    image's path for a folder of class folders."""
    rows, rejects = [], []
    for where, record in records:
        path = "" if record["path"] is None else str(record["path"])
        try:
            if not path:
                raise RejectedPatch(f"{where}: the path cell is empty")
            if storage.is_absolute(path):  # left absolute by rooted_paths: outside --data_dir
                raise RejectedPatch(f"{where}: path {path!r} is not inside --data_dir {data_root}")
            if ".." in path.replace("\\", "/").split("/"):
                raise RejectedPatch(f"{where}: path {path!r} leaves the data folder")
            labels = _labels_of(record)  # none: an image for pretraining only
            split = split_of(record.get("split"), where)
            form = digest = None
            if verify == "pixels":
                pixels = read_image(storage.join(data_root, path))
                if not np.isfinite(pixels).all():
                    raise RejectedPatch(f"{where}: image {path} has NaN or infinite pixels")
                if not pixels.any():
                    raise RejectedPatch(f"{where}: image {path} is all zero (no data)")
                form = pixel_form(pixels)
                digest = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()
            elif not storage.exists(storage.join(data_root, path)):
                raise RejectedPatch(f"{where}: image file {path} missing")
            rows.append(
                {
                    "name": os.path.splitext(path)[0].replace("/", "_"),
                    "path": path,
                    "format": FORMAT_IMAGE,
                    "labels": labels,
                    "labels_43": [],
                    "original_split": split,
                    "_where": where,
                    "_form": form,
                    "_digest": digest,
                }
            )
        except PatchReadError as error:
            rejects.append({"name": path, "path": path, "reason": f"{where}: {error}"})
        except RejectedPatch as reason:
            rejects.append({"name": path, "path": path, "reason": str(reason)})
    return rows, rejects


def pixel_form(pixels: np.ndarray) -> tuple:
    """(bands, dtype, height, width): what every image of a table must share but the size."""
    return pixels.shape[0], str(pixels.dtype), pixels.shape[1], pixels.shape[2]


def _reject(rows: list[dict], rejects: list[dict], keep, reason) -> list[dict]:
    kept = []
    for row in rows:
        if keep(row):
            kept.append(row)
        else:
            rejects.append({"name": row["name"], "path": row["path"], "reason": f"{row['_where']}: {reason(row)}"})
    return kept


def describe_form(form: tuple) -> dict:
    bands, dtype, height, width = form
    return {"bands": f"{bands} bands", "dtype": dtype, "size": f"{height}x{width} px"}


def reject_mismatched_images(rows: list[dict], rejects: list[dict]) -> tuple[list[dict], tuple | None]:
    """Images must share band count and dtype: the most common wins, the others are rejected naming what differs.
    Their size may differ (UC Merced's 256 px images include some of 247 px): the most common size is the table's,
    to which readers resize the others. Returns the kept rows and the form (None when no pixels were read)."""
    kinds = Counter(row["_form"][:2] for row in rows if row["_form"] is not None)
    if not kinds:
        return rows, None
    kind = kinds.most_common(1)[0][0]
    wanted = describe_form((*kind, 0, 0))

    def reason(row):
        found = describe_form((*row["_form"][:2], 0, 0))
        return "; ".join(f"image has {found[key]}, the others {wanted[key]}" for key in ("bands", "dtype")
                         if found[key] != wanted[key])

    kept = _reject(rows, rejects, lambda row: row["_form"] is None or row["_form"][:2] == kind, reason)
    size = Counter(row["_form"][2:] for row in kept if row["_form"] is not None).most_common(1)[0][0]
    return kept, (*kind, *size)


def resized_images(rows: list[dict], form: tuple | None) -> list[str]:
    """Where each image whose size is not the table's is (it is read resized to the table's size)."""
    return [f"{row['_where']} ({row['_form'][2]}x{row['_form'][3]} px)" for row in rows
            if form is not None and row["_form"] is not None and row["_form"][2:] != form[2:]]


def reject_duplicates(rows: list[dict], rejects: list[dict]) -> list[dict]:
    """The same image twice (same path, or other files with identical pixels): only its first row is kept, so an
    image never sits in two splits."""
    first: dict = {}
    for row in rows:
        for key in (("path", os.path.normpath(row["path"])), ("pixels", row["_digest"])):
            if key[1] is not None:
                first.setdefault(key, row)

    def duplicate_of(row):
        for key in (("path", os.path.normpath(row["path"])), ("pixels", row["_digest"])):
            if key[1] is not None and first[key] is not row:
                return key[0], first[key]
        return None

    def reason(row):
        how, original = duplicate_of(row)
        named = "" if original["_where"] == original["path"] else f"{original['path']}, "
        return (f"same image ({'same path' if how == 'path' else 'identical pixels'}) as {original['_where']} "
                f"({named}split {original['original_split'] or 'none'})")

    return _reject(rows, rejects, lambda row: duplicate_of(row) is None, reason)


def with_unique_names(rows: list[dict]) -> list[dict]:
    """Every row a name of its own: names key each feature's split, a pack's rows, predict's resume and
    visualize's --images, so two images with one name (x/y.jpg and x_y.png both shorten to x_y) would take each
    other's split or pixels. A shared short name gives way to the path (unique once duplicates are rejected),
    and, should even that be taken, the path and its row."""
    for rename in (lambda row: row["path"], lambda row: f"{row['path']} ({row['_where']})"):
        counts = Counter(row["name"] for row in rows)
        for row in rows:
            if counts[row["name"]] > 1:
                row["name"] = rename(row)
    return rows


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def similar_class_names(classes: list[str]) -> list[tuple[str, str]]:
    """Pairs of class names that differ only by case or by at most one edit in five characters: likely typos.
    Names that differ only in their digits are codes, not typos (a land-cover map's 10 and 20, 'Zone 1' and
    'Zone 2')."""
    pairs = []
    for a, b in combinations(sorted(classes), 2):
        if a.lower() == b.lower():
            pairs.append((a, b))
        elif (re.sub(r"\d", "", a) != re.sub(r"\d", "", b)
              and edit_distance(a.lower(), b.lower()) <= max(1, min(len(a), len(b)) // 5)):
            pairs.append((a, b))
    return pairs


def joined_class_names(classes: list[str]) -> list[str]:
    """Class names that are other classes joined by ',' or '|' ('Forest,River' beside 'Forest' and 'River'): a
    multi-label cell written with the wrong separator, which would silently be a class of its own."""
    known = set(classes)
    joined = []
    for name in classes:
        for separator in ",|":
            parts = [part.strip() for part in name.split(separator)]
            if len(parts) > 1 and all(part in known for part in parts):
                joined.append(name)
                break
    return joined


def class_name_problems(classes: list[str]) -> list[str]:
    """What looks like a mistake in a table's class names, one sentence per kind (a warning; --strict: an error)."""
    problems = []
    similar = similar_class_names(classes)
    if similar:
        problems.append("class names that differ only by case or a typo: "
                        + "; ".join(f"{a!r} and {b!r}" for a, b in similar))
    joined = joined_class_names(classes)
    if joined:
        problems.append("labels that join other classes with ',' or '|' (a row's labels are separated by ';'): "
                        + ", ".join(repr(name) for name in joined[:5]))
    return problems


def first_raster(data_root: str, paths: list[str]) -> str | None:
    """The table's first image GDAL reads, which speaks for all of them (a table's images share one form) when
    asked what its channels are: their colour interpretation, their names. None for a table of JPEGs or PNGs."""
    raster = next((path for path in paths if path.lower().endswith(GDAL_SUFFIXES)), None)
    return None if raster is None else storage.join(data_root, raster)


def images_are_rgb(data_root: str, paths: list[str]) -> bool:
    """Whether a table's first three channels are red, green, blue: PIL reads its formats as RGB; a GeoTIFF says
    so in its colour interpretation (a UC Merced TIFF does, a Sentinel-2 export does not)."""
    raster = first_raster(data_root, paths)
    return raster is None or declares_rgb(raster)


def named_bands(texts: list[str]) -> list[str]:
    """Channel names as given, Sentinel-2's spelled as BigEarthNet spells them (B4 -> B04), so that --bands and the
    weights' data contract can speak of B04 rather than band3."""
    return [sentinel2_name(text) or text.strip() for text in texts]


def band_name_problem(names: list[str], channels: int) -> str | None:
    """Why `names` cannot name the images' channels, in order (None when they can)."""
    canonical = [f"band{i + 1}" for i in range(channels)]
    if len(names) != channels:
        return f"{len(names)} names for the images' {channels} channels"
    if not all(names) or any("," in name for name in names):
        return "a name is empty or holds a ','"
    if len(set(names)) != channels:
        return "a name is given twice"
    if any(name in canonical and name != own for name, own in zip(names, canonical)):
        return "a name is another channel's bandN"
    return None


def channel_names_of(given: str | None, data_root: str, paths: list[str], channels: int) -> list[str] | None:
    """--band_names when given (checked against the channel count), else the names the GeoTIFFs give their
    channels, else None."""
    if not given:
        return image_band_names(data_root, paths, channels)
    names = named_bands(given.split(","))
    problem = band_name_problem(names, channels)
    if problem:
        raise ConfigError(f"--band_names {given!r}: {problem}; give one name per channel, in the files' order")
    return names


def image_band_names(data_root: str, paths: list[str], channels: int) -> list[str] | None:
    """The names a table's GeoTIFFs give their channels (band descriptions: a Sentinel-2 export's B2, B3, B4, B8);
    None unless each channel has a name of its own."""
    raster = first_raster(data_root, paths)
    if raster is None:
        return None
    names = named_bands(band_descriptions(raster))
    return None if band_name_problem(names, channels) else names
