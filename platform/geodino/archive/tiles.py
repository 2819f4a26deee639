"""Cut large rasters (a Sentinel-2 scene, a NAIP tile, an orthophoto) into tiles that prepare reads as a folder.

geodino trains on patches (BigEarthNet's are 120 px): a whole scene read as one image would be gigabytes per
sample. Tiles are GeoTIFFs that keep the scene's bands, dtype, nodata value, colour interpretation and
georeference (each tile's transform is its window's), so nothing is resampled or rescaled on the way.
Tiles whose pixels the scene marks as no data beyond --max_nodata (a swath edge), or that are all zero, are
skipped; the strip at the right and bottom edge that no whole tile covers is left out. A scene kept as a file
per band (a Sentinel-2 product) is cut as one raster of its bands (archive/band_files.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from geodino import storage
from geodino.archive.band_files import (
    BandStack,
    StackedRaster,
    band_name,
    choose_bands,
    folder_rasters,
    group_scenes,
    pixel_size_of,
    product_offsets,
)
from geodino.archive.detect import ARCHIVE_FILE_SUFFIXES, unpack_command
from geodino.archive.image_folder import folder_entries
from geodino.archive.pixels import IMAGE_SUFFIXES, PatchReadError, marks_no_data, open_raster
from geodino.archive.tile_labels import check_label_map, read_legend, tile_file_name, write_label_table
from geodino.cli import flag
from geodino.errors import ConfigError, GeodinoError

MANIFEST = ".geodino_tiles.json"  # hidden: prepare leaves it out of the folder's images


@dataclass
class TileConfig:
    """tile.py's flags: where the tiles go and how they are cut."""

    scenes: list[str]  # the positional SCENE arguments: rasters GDAL reads (GeoTIFF, JPEG 2000, JPEG, PNG)
    out: str = flag("tiles", "Folder for the tiles: new, empty, or one tile.py filled with the same settings (a rerun "
                    "writes only the tiles not there yet)")
    size: int = flag(120, "Tile side in pixels: 120 is BigEarthNet's (1.2 km at 10 m); a multiple of the ViT's "
                     "patch size (8 or 16) spares a resize")
    stride: int | None = flag(None, "Pixels from one tile to the next; default: --size (tiles do not overlap)")
    max_nodata: float = flag(0.0, "Largest share of a tile's pixels the scene may mark as no data (its nodata value "
                             "or mask); tiles with more are skipped. 0: only whole tiles of measurements")
    nodata: float | None = flag(None, "The value that marks no data in scenes that declare none (a pixel is no data "
                                "where any band has it). Default: the scene's own; a Sentinel-2 product's band files "
                                "(.jp2) declare none, and 0, the product's NODATA value, is taken")
    bands: str | None = flag(None, "Bands to stack from a scene kept as a file per band, in this order, e.g. "
                             "B04,B03,B02,B08 (Sentinel-2's 10 m bands); default: every band file of the scene")
    add_offset: bool = flag(True, "Add a Sentinel-2 product's BOA_ADD_OFFSET (RADIO_ADD_OFFSET for L1C), -1000 "
                            "since processing baseline 04.00 (January 2022), read from its MTD_MSIL2A.xml, so its "
                            "pixels are on the scale of earlier products and BigEarthNet's; false keeps the files' "
                            "values")
    labels: str | None = flag(None, "A land-cover map (ESA WorldCover, CORINE, a national map: one band of class "
                              "values, any CRS and resolution; a file or a folder of map tiles) that labels each "
                              "tile with the classes covering at least --label_min of it, as BigEarthNet's patches "
                              "are labelled: OUT/labels.csv, which prepare reads as a multi-label table split by "
                              "blocks of 8 x 8 tiles")
    label_min: float = flag(0.05, "Smallest share of a tile a class of --labels must cover to label it")
    label_names: str | None = flag(None, "A CSV of the map's legend (columns value,name: 10,Tree cover) to label "
                                   "tiles by name, or a legend built in: worldcover (ESA WorldCover), corine (CORINE "
                                   "Land Cover's 44 classes, by grid code or CLC code), bigearthnet19 (CORINE merged "
                                   "into BigEarthNet's 19 classes, as its patches are labelled); default: by class "
                                   "value")

    def scene_files(self) -> list[str]:
        """The SCENE arguments, a folder standing for the rasters in it."""
        return [file for scene in self.scenes
                for file in (folder_rasters(scene) if storage.is_folder(scene) else [scene])]

    def band_list(self) -> list[str]:
        """--bands as band names, spelt as Sentinel-2 spells them (B4 -> B04); [] without --bands."""
        return [band_name(band.strip()) for band in self.bands.split(",")] if self.bands is not None else []

    def validate(self) -> None:
        for name in ("size", "stride"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be greater than 0, not {getattr(self, name)}")
        wanted = self.band_list()
        if self.bands is not None and (not all(wanted) or len(set(wanted)) < len(wanted)):
            raise ConfigError(f"--bands {self.bands!r}: give each band once, separated by commas (B04,B03,B02,B08)")
        if not 0 < self.label_min <= 1:
            raise ConfigError(f"--label_min must lie in (0, 1], not {self.label_min}")
        if self.labels and not storage.exists(self.labels):
            raise ConfigError(f"--labels {self.labels!r}: no such file")
        if self.label_names and not self.labels:
            raise ConfigError("--label_names names the classes of a --labels map; give the map too")
        if self.label_names:
            read_legend(self.label_names)
        if not 0 <= self.max_nodata < 1:
            raise ConfigError(f"--max_nodata must lie in [0, 1), not {self.max_nodata}")
        missing = [scene for scene in self.scenes if not storage.exists(scene)]
        if missing:
            pattern = " (a pattern the shell did not expand: leave out the quotes)" if "*" in missing[0] else ""
            raise ConfigError(f"SCENE {missing[0]!r}: no such file{pattern}")
        packed = [scene for scene in self.scenes if scene.lower().endswith(ARCHIVE_FILE_SUFFIXES)]
        if packed:
            raise ConfigError(f"SCENE {packed[0]}: a packed archive (a downloaded product), which tile.py does not "
                              f"open: unpack it ({unpack_command(os.path.basename(packed[0]))}) and give the folder it "
                              "makes (a Sentinel-2 product's .SAFE folder)")
        empty = [scene for scene in self.scenes if storage.is_folder(scene) and not folder_rasters(scene)]
        if empty:
            raise ConfigError(f"SCENE {empty[0]!r}: {what_is_in(empty[0])}")
        if storage.is_uri(self.out):
            raise ConfigError(f"--out {self.out}: tile.py writes to a local folder; to train from S3, prepare the "
                              "tiles there with --pack s3://bucket/pack")
        problem = storage.first_location_problem({"--out": self.out}, folders=("--out",))
        if problem:
            raise ConfigError(problem)


def what_is_in(folder: str) -> str:
    """Why a SCENE folder stands for no rasters, and what to give instead."""
    below = [name for name in folder_entries(folder)[0] if folder_rasters(storage.join(folder, name))]
    if below:
        return (f"its rasters lie in the {len(below)} folders below it ({below[0]}, ...): give those "
                f"({storage.join(folder, '*')}) to cut them, or prepare the folder if they hold patches already "
                f"(python experiments/prepare.py {folder})")
    return f"a folder without rasters in it ({', '.join(IMAGE_SUFFIXES)})"


def scene_name(scene: str | BandStack) -> str:
    """What names a scene's tiles: its file's name, or the name its band files share."""
    return scene.name if isinstance(scene, BandStack) else os.path.splitext(os.path.basename(scene))[0]


def scenes_to_cut(config: TileConfig) -> list[str | BandStack]:
    """The scenes of the SCENE arguments, band files stacked, each once, checked to have names of their own."""
    files: dict[str, str] = {}
    for file in config.scene_files():
        files.setdefault(storage.absolute(file), file)  # a scene named twice is cut once
    scenes = group_scenes(list(files.values()), pixel_size_of)
    stacks = [scene for scene in scenes if isinstance(scene, BandStack)]
    if config.bands and not stacks:
        raise ConfigError(f"--bands {config.bands}: chooses the band files of a scene kept as a file per band "
                          "(B02.jp2, B03.jp2, ...), and no SCENE is; leave it out to keep every band of the rasters")
    if config.bands:
        scenes = [choose_bands(scene, config.band_list()) if isinstance(scene, BandStack) else scene
                  for scene in scenes]
    for scene in scenes:
        if config.add_offset and isinstance(scene, BandStack) and scene.is_sentinel2():
            scene.offsets = product_offsets(scene)
    names: dict[str, str | BandStack] = {}
    for scene in scenes:
        earlier = names.setdefault(scene_name(scene), scene)
        if earlier is not scene:
            raise ConfigError(f"SCENE {scene} and {earlier} share the name {scene_name(scene)!r}, which names their "
                              "tiles; rename one (or tile them into two --out folders)")
    return scenes


def open_scene(scene: str | BandStack, nodata: float | None = None):
    return StackedRaster(scene, nodata) if isinstance(scene, BandStack) else open_raster(scene)


def scene_nodata(scene: str | BandStack, config: TileConfig) -> float | None:
    """--nodata, else 0 for a Sentinel-2 product's band files (their NODATA value is in the product's metadata, not
    in the files: without it a swath edge's zeros were cut as measurements), else None: the scene's own."""
    if config.nodata is not None:
        return config.nodata
    return 0.0 if isinstance(scene, BandStack) and scene.is_sentinel2_product() else None


@dataclass
class TileCounts:
    written: int = 0
    already_there: int = 0
    skipped_nodata: int = 0
    skipped_zero: int = 0
    scenes: dict = field(default_factory=dict)  # scene -> tiles kept
    labels: pd.DataFrame | None = None  # OUT/labels.csv, with --labels


class ForeignFolderError(GeodinoError):
    """--out holds files tile.py did not write, or tiles cut with other settings."""


def claim_folder(config: TileConfig) -> None:
    """--out becomes tile.py's: a new or empty folder, or its own with the same settings; nothing else is touched."""
    settings = {"size": config.size, "stride": config.stride or config.size, "max_nodata": config.max_nodata,
                "bands": config.bands, "nodata": config.nodata, "add_offset": config.add_offset}
    # --labels and --label_min are not among them: they make labels.csv anew for the tiles there, as a rerun may
    manifest = os.path.join(config.out, MANIFEST)
    if os.path.exists(manifest):
        with open(manifest) as handle:
            earlier = json.load(handle)["settings"]
        earlier = {"bands": None, "nodata": None, "add_offset": True} | earlier  # cut before these were flags
        if earlier != settings:
            changed = ", ".join(f"--{key} {earlier[key]} there, {settings[key]} now" for key in settings
                                if earlier[key] != settings[key])
            raise ForeignFolderError(f"--out {config.out} holds tiles cut with other settings ({changed}); give a new "
                                     "--out, or the same settings to continue")
    elif os.path.isdir(config.out) and os.listdir(config.out):
        raise ForeignFolderError(f"--out {config.out} holds {len(os.listdir(config.out))} files tile.py did not write; "
                                 "give a new or empty folder")
    storage.write_bytes_atomic(manifest, json.dumps({"settings": settings}).encode())  # makes --out too


def tile_name(scene: str | BandStack, top: int, left: int) -> str:
    return tile_file_name(scene_name(scene), top, left)


def check_scene(scene: str | BandStack, size: int, labelled: bool = False) -> None:
    """A scene GDAL opens and one tile fits in (with a georeference when --labels is to label its tiles),
    checked for every scene before a tile is written."""
    from rasterio.errors import RasterioError

    try:
        with open_scene(scene) as src:
            width, height, crs = src.width, src.height, src.crs
    except RasterioError as error:
        raise PatchReadError(f"{scene}: cannot read the scene ({error})") from error
    if width < size or height < size:
        raise PatchReadError(f"{scene}: the scene is {width}x{height} px, smaller than one --size {size} tile")
    if labelled and not crs:
        raise PatchReadError(f"{scene}: the scene has no georeference, so --labels cannot be laid on its tiles; "
                             "leave --labels out, or cut a georeferenced scene (GeoTIFF, JPEG 2000)")


def tile_scene(scene: str | BandStack, config: TileConfig, counts: TileCounts) -> None:
    """Write the tiles of one scene, row by row (the order a striped GeoTIFF is stored in)."""
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    size, stride = config.size, config.stride or config.size
    before = counts.written + counts.already_there
    nodata = scene_nodata(scene, config)
    try:
        with open_scene(scene, nodata) as src:
            masked = marks_no_data(src.mask_flag_enums)  # asked once per scene, not per tile
            for top in range(0, src.height - size + 1, stride):
                for left in range(0, src.width - size + 1, stride):
                    path = os.path.join(config.out, tile_name(scene, top, left))
                    outcome = cut_tile(src, Window(left, top, size, size), path, config.max_nodata, masked, nodata)
                    setattr(counts, outcome, getattr(counts, outcome) + 1)
    except RasterioError as error:
        raise PatchReadError(f"{scene}: cannot read the scene ({error})") from error
    described = scene.summary() if isinstance(scene, BandStack) else scene
    if nodata is not None and config.nodata is None:
        described += f" (no data: {nodata:g}, a Sentinel-2 product's)"
    counts.scenes[described] = counts.written + counts.already_there - before


def cut_tile(src, window, path: str, max_nodata: float, masked: bool, nodata: float | None = None) -> str:
    """One tile of `src` written to `path` through a temporary name moved into place (a killed run leaves whole
    tiles), or why not; returns the TileCounts field that counts it. masked: the scene marks no-data pixels;
    nodata: a value that marks them too (--nodata), declared as the tile's."""
    import rasterio

    if os.path.exists(path):
        return "already_there"
    pixels = src.read(window=window, masked=masked)
    data = np.ma.getdata(pixels)
    invalid = np.ma.getmaskarray(pixels).any(axis=0)  # all False where the scene marks no data
    if nodata is not None:
        invalid |= (data == nodata).any(axis=0)
    if invalid.mean() > max_nodata:
        return "skipped_nodata"
    if not data.any():
        return "skipped_zero"
    profile = {"driver": "GTiff", "width": window.width, "height": window.height, "count": src.count,
               "dtype": src.dtypes[0], "crs": src.crs, "nodata": src.nodata if nodata is None else nodata,
               "compress": "deflate"}
    # a scene without georeference (a JPEG) gives tiles without one, not a made-up transform
    where = {"transform": src.window_transform(window)} if src.crs else {}
    temporary = path + ".tmp"
    with rasterio.open(temporary, "w", **where, **profile) as dst:
        dst.write(data)
        dst.colorinterp = src.colorinterp
        if any(src.descriptions):  # the bands' names (B4, B3, B2 from Earth Engine), which prepare reads
            dst.descriptions = src.descriptions
        if invalid.any() and profile["nodata"] is None:  # a mask of the scene's own: kept as the tile's
            dst.write_mask(~invalid)
    os.replace(temporary, path)
    return "written"


def tile_scenes(config: TileConfig) -> TileCounts:
    """Every scene's tiles into --out; see the module docstring."""
    config.validate()
    scenes = scenes_to_cut(config)
    if config.labels:
        check_label_map(config.labels)
    for scene in scenes:
        check_scene(scene, config.size, labelled=bool(config.labels))
    claim_folder(config)
    counts = TileCounts()
    for scene in scenes:
        tile_scene(scene, config, counts)
    if config.labels:
        legend = read_legend(config.label_names) if config.label_names else {}
        counts.labels = write_label_table(config.out, config.labels, config.label_min, config.size, legend)
    return counts
