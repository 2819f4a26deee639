"""Which kind of archive prepare was given, decided from the path alone (and one listing), and what to give
instead of a file that is no archive: a spreadsheet, the downloaded .tar, one image.
"""

from __future__ import annotations

import os

from geodino import storage
from geodino.archive.band_files import is_product_folder, scenes_by_name
from geodino.archive.image_folder import folder_entries, is_image_folder
from geodino.archive.image_table import TABLE_SUFFIXES
from geodino.archive.pixels import FORMAT_BEN_V1, FORMAT_BEN_V2, FORMAT_IMAGE, IMAGE_SUFFIXES
from geodino.errors import MissingInputError

ARCHIVE_FILE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.bz2", ".tar.xz", ".zip", ".7z", ".rar")
SPREADSHEET_SUFFIXES = (".xlsx", ".xls", ".xlsm", ".ods", ".numbers")


def detect_format(archive: str) -> str:
    if storage.is_uri(archive) and not storage.exists(archive):  # local ones are checked with the other flags
        raise MissingInputError(f"{archive}: no such object or prefix ({storage.where(archive)}); check the bucket "
                                "and the key")
    if archive.lower().endswith(TABLE_SUFFIXES) and not os.path.isdir(archive):
        return FORMAT_IMAGE
    if not storage.is_uri(archive) and os.path.isfile(archive):
        raise MissingInputError(f"{archive}: {what_file_instead(os.path.basename(archive))}")
    if storage.exists(storage.join(archive, "metadata.parquet")):
        return FORMAT_BEN_V2
    if is_product_folder(archive):
        raise MissingInputError(f"{archive}: a Sentinel-2 product, a scene rather than patches: {tile_first(archive)}")
    if is_image_folder(archive):
        check_no_band_files(archive)
        return FORMAT_IMAGE
    return FORMAT_BEN_V1


def tile_first(folder: str) -> str:
    return f"cut it into tiles (python experiments/tile.py {folder} --out TILES), then prepare TILES"


def check_no_band_files(folder: str) -> None:
    """A folder of one scene's band files (a product's R10m folder) is not a folder of images: prepared as one,
    each band became a grey image of its own, and nothing said so."""
    scenes = scenes_by_name(folder, folder_entries(folder)[1])
    if scenes:
        scene, bands = next(iter(scenes.items()))
        raise MissingInputError(f"{folder}: the band files of scene {scene} ({', '.join(bands)}), not images of their "
                                f"own: {tile_first(folder)}")


def unpack_command(name: str) -> str:
    """The command that unpacks a downloaded archive (a name ending in one of ARCHIVE_FILE_SUFFIXES)."""
    lowered = name.lower()
    if lowered.endswith(".zip"):
        return f"unzip {name}"
    return f"7z x {name}" if lowered.endswith((".7z", ".rar")) else f"tar xf {name}"


def what_file_instead(name: str) -> str:
    """What to give prepare instead of a file that is not a table: each kind of file a user reaches for first."""
    lowered = name.lower()
    if lowered.endswith(ARCHIVE_FILE_SUFFIXES):
        return (f"a packed archive, which prepare does not open: unpack it ({unpack_command(name)}) and give the "
                "folder it makes")
    if lowered.endswith(SPREADSHEET_SUFFIXES):
        return "a spreadsheet: save it as CSV (UTF-8) or tab-separated text (.tsv) and give that file"
    if lowered.endswith(IMAGE_SUFFIXES):
        return ("one image: prepare reads a folder of images, or a table of them (.csv, .tsv, .parquet); "
                "a scene is cut into such a folder by python experiments/tile.py SCENE --size 120 --out FOLDER")
    return ("a file prepare does not read: give a folder (BigEarthNet v1 or v2, or a folder of images) or a "
            "table of images (.csv, .tsv or .parquet with path and label columns)")
