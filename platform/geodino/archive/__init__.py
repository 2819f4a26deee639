"""Archives of overhead imagery, and what prepare makes of them.

Reads BigEarthNet-S2 v1 folders, reBEN (v2) LMDBs and users' image tables; checks every patch;
writes the metadata parquet with its card (``card``), and optionally packs the pixels into Parquet
shards (``pack`` writes, ``packed`` reads). Knows nothing of training: imports only ``storage`` and
``errors`` from the rest of geodino, and no Ray.

Public parts: ``prepare`` / ``PrepareConfig``, ``pack`` / ``PackConfig``, ``load_card`` and
``metadata_file`` (where prepare's outputs live), ``read_patch`` (pixels of one patch, any format),
``parse_bands``, ``prepared_demo`` (the embedded demo archive).
"""

from geodino.archive.bands import parse_bands
from geodino.archive.card import load_card, metadata_file
from geodino.archive.demo import prepared_demo
from geodino.archive.pack import PackConfig, pack
from geodino.archive.pixels import read_patch
from geodino.archive.prepare import PrepareConfig, prepare

__all__ = ["PackConfig", "PrepareConfig", "load_card", "metadata_file", "pack", "parse_bands", "prepare",
           "prepared_demo", "read_patch"]
