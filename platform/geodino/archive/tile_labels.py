"""Labels for tiles from a land-cover map, so a user's own scenes can be probed, not only pretrained on.

BigEarthNet labelled each patch with the CORINE classes found in it; tile.py does the same with any map the
user holds (ESA WorldCover, CORINE, a national map: one class value per pixel, in any CRS and resolution). The
map is read onto each tile's grid (nearest neighbour, so classes are never blended into values that are no class)
and a tile is labelled with every class covering at least --label_min of it: a multi-label table, as BigEarthNet's.
The split is drawn per block of 8 x 8 tiles, not per tile: neighbouring tiles look alike, and a test tile beside a
training tile would measure memory of the place more than transfer.
"""

from __future__ import annotations

import os
import re
from contextlib import ExitStack

import numpy as np
import pandas as pd

from geodino import storage
from geodino.archive.image_folder import folder_entries
from geodino.archive.labels import corine_legend
from geodino.archive.pixels import GDAL_SUFFIXES, PatchReadError, open_raster
from geodino.archive.splits import hash_split

LABEL_TABLE = "labels.csv"
SPLIT_BLOCK_TILES = 8  # tiles per side of a block that shares one split
_TILE_NAME = re.compile(r"(?P<scene>.+)_y(?P<top>\d{5,})_x(?P<left>\d{5,})\.tif")


def tile_file_name(scene: str, top: int, left: int) -> str:
    """A tile's file name: its scene and pixel offset, which the labels read back (a mosaic past 99,999 px has
    offsets of 6 digits)."""
    return f"{scene}_y{top:05d}_x{left:05d}.tif"


def map_files(labels: str) -> list[str]:
    """The rasters of --labels: one map, or a folder of map tiles (ESA WorldCover ships 3 x 3 degree tiles)."""
    if not storage.is_folder(labels):
        return [labels]
    files = [storage.join(labels, name) for name in folder_entries(labels)[1] if name.lower().endswith(GDAL_SUFFIXES)]
    if not files:
        raise PatchReadError(f"--labels {labels}: a folder without map rasters in it ({', '.join(GDAL_SUFFIXES)})")
    return files


def check_label_map(labels: str) -> None:
    """Each map raster opens, has one band of integer classes and a georeference: checked before a tile is cut."""
    from rasterio.errors import RasterioError

    for path in map_files(labels):
        try:
            with open_raster(path) as src:
                count, crs, dtype = src.count, src.crs, src.dtypes[0]
        except RasterioError as error:
            raise PatchReadError(f"--labels {path}: cannot read the land-cover map ({error})") from error
        if count != 1 or not crs or not np.issubdtype(np.dtype(dtype), np.integer):
            raise PatchReadError(f"--labels {path}: a land-cover map is one band of integer class values with a "
                                 f"georeference; this one has {count} bands of {dtype}, CRS {crs or 'none'}")


# ESA WorldCover's legend (v100 2020, v200 2021), the map most users reach for: --label_names worldcover
WORLDCOVER = {"10": "Tree cover", "20": "Shrubland", "30": "Grassland", "40": "Cropland", "50": "Built-up",
              "60": "Bare / sparse vegetation", "70": "Snow and ice", "80": "Permanent water bodies",
              "90": "Herbaceous wetland", "95": "Mangroves", "100": "Moss and lichen"}


BUILT_IN_LEGENDS = ("worldcover", "corine", "bigearthnet19")


def read_legend(path: str) -> dict[str, str | None]:
    """{class value: name} from a legend CSV (value,name), checked: integer values and names, each once. The words
    worldcover, corine and bigearthnet19 stand for the legends of ESA WorldCover, of CORINE Land Cover (grid codes
    1-44 or CLC codes 111-523), and of CORINE merged into BigEarthNet's 19 classes; None marks a value that is no
    class (CORINE's unclassified, or a class the 19 leave out)."""
    from geodino.errors import ConfigError

    built_in = path.strip().lower()
    if built_in in BUILT_IN_LEGENDS:
        return dict(WORLDCOVER) if built_in == "worldcover" else corine_legend(built_in)
    if not storage.exists(path):
        raise ConfigError(f"--label_names {path}: no such file; give a legend CSV (value,name) or one of the legends "
                          f"built in: {', '.join(BUILT_IN_LEGENDS)}")
    try:
        legend = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--label_names {path}: not a readable CSV ({error})") from error
    legend.columns = [column.strip().lower() for column in legend.columns]
    if not {"value", "name"} <= set(legend.columns):
        raise ConfigError(f"--label_names {path}: needs the columns value,name (it has {', '.join(legend.columns)})")
    values, names = legend["value"].str.strip(), legend["name"].str.strip()
    bad = [value for value in values if not value.lstrip("-").isdigit()]
    separated = names.str.contains(";")
    if bad or not names.all() or separated.any() or names.duplicated().any() or values.duplicated().any():
        problem = (f"value {bad[0]!r} is not a class value" if bad else "a name is empty" if not names.all()
                   else f"the name {names[separated].iloc[0]!r} holds ';', which separates labels" if separated.any()
                   else "a value or a name is given twice")
        raise ConfigError(f"--label_names {path}: {problem}; give each class value of the map once, with a name")
    return {str(int(value)): name for value, name in zip(values, names)}


def tile_classes(maps: list, tile, label_min: float, legend: dict[str, str | None] | None = None) -> list[str]:
    """The classes of the map (open datasets: one map or its tiles) that cover at least `label_min` of an open
    tile: by name where the legend has one, else by value; each value is held to `label_min` on its own, and
    values the legend merges name the tile once (as BigEarthNet's 19 classes are derived from its 43)."""
    from rasterio.coords import disjoint_bounds
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    classes = np.ma.masked_all((tile.height, tile.width), np.int64)
    for labels in maps:
        if disjoint_bounds(transform_bounds(tile.crs, labels.crs, *tile.bounds), labels.bounds):
            continue  # a map tile elsewhere
        # the alpha band marks what lies outside the map or is its nodata, read as a band of its own: a masked read
        # ignored it for CORINE's int8 raster (nodata -128 came back as class 0), and outside a map without a
        # nodata value is class 0 too
        with WarpedVRT(labels, crs=tile.crs, transform=tile.transform, width=tile.width, height=tile.height,
                       resampling=Resampling.nearest, add_alpha=True) as onto_tile:
            found, alpha = onto_tile.read(1), onto_tile.read(onto_tile.count)
        classes = np.ma.where(np.ma.getmaskarray(classes) & (alpha > 0), found, classes)
    values, counts = np.unique(classes.compressed(), return_counts=True)
    legend = legend or {}
    names = [legend.get(str(value), str(value)) for value, count in zip(values, counts)
             if count / classes.size >= label_min]
    return list(dict.fromkeys(name for name in names if name is not None))


def block_split(tile_name: str, size: int) -> str:
    """The split of the 8 x 8 block of tiles a tile lies in (its scene and position, from its name)."""
    match = _TILE_NAME.fullmatch(tile_name)
    block = SPLIT_BLOCK_TILES * size
    return hash_split(f"{match['scene']}:{int(match['top']) // block}:{int(match['left']) // block}")


def write_label_table(out: str, labels_path: str, label_min: float, size: int,
                      legend: dict[str, str | None] | None = None) -> pd.DataFrame:
    """OUT/labels.csv (path, labels, split) for every tile in --out, written through a temporary name."""
    tiles = sorted(name for name in os.listdir(out) if _TILE_NAME.fullmatch(name))
    rows = []
    with ExitStack() as opened:
        labels = [opened.enter_context(open_raster(path)) for path in map_files(labels_path)]
        for name in tiles:
            with open_raster(os.path.join(out, name)) as tile:
                if not tile.crs:
                    raise PatchReadError(f"{name}: a tile without georeference cannot be laid on --labels "
                                         f"{labels_path}; cut georeferenced scenes (GeoTIFF, JPEG 2000)")
                rows.append({"path": name, "labels": ";".join(tile_classes(labels, tile, label_min, legend)),
                             "split": block_split(name, size)})
    table = pd.DataFrame(rows, columns=["path", "labels", "split"])
    storage.write_bytes_atomic(os.path.join(out, LABEL_TABLE), table.to_csv(index=False).encode())
    return table
