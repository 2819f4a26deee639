"""Cut large rasters (a Sentinel-2 scene, a NAIP tile, an orthophoto) into tiles that prepare reads as a folder.

geodino trains on patches (BigEarthNet's are 120 px): a whole scene read as one image would be gigabytes per
sample. Tiles are GeoTIFFs that keep the scene's bands, dtype, nodata value, colour interpretation and
georeference (each tile's transform is its window's), so nothing is resampled or rescaled on the way.
Tiles whose pixels the scene marks as no data beyond --max_nodata (a swath edge), or that are all zero, are
skipped; the strip at the right and bottom edge that no whole tile covers is left out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from geodino import storage
from geodino.archive.pixels import IMAGE_SUFFIXES, PatchReadError, marks_no_data, open_raster
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

    def scene_files(self) -> list[str]:
        """The SCENE arguments, a folder standing for the rasters in it."""
        return [file for scene in self.scenes for file in (folder_scenes(scene) if os.path.isdir(scene) else [scene])]

    def validate(self) -> None:
        for name in ("size", "stride"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be greater than 0, not {getattr(self, name)}")
        if not 0 <= self.max_nodata < 1:
            raise ConfigError(f"--max_nodata must lie in [0, 1), not {self.max_nodata}")
        missing = [scene for scene in self.scenes if not storage.exists(scene)]
        if missing:
            pattern = " (a pattern the shell did not expand: leave out the quotes)" if "*" in missing[0] else ""
            raise ConfigError(f"SCENE {missing[0]!r}: no such file{pattern}")
        empty = [scene for scene in self.scenes if os.path.isdir(scene) and not folder_scenes(scene)]
        if empty:
            raise ConfigError(f"SCENE {empty[0]!r}: a folder without rasters in it ({', '.join(IMAGE_SUFFIXES)})")
        if storage.is_uri(self.out):
            raise ConfigError(f"--out {self.out}: tile.py writes to a local folder; to train from S3, prepare the "
                              "tiles there with --pack s3://bucket/pack")
        stems = {}
        for scene in self.scene_files():
            stem = os.path.splitext(os.path.basename(scene))[0]
            if stem in stems and os.path.abspath(stems[stem]) != os.path.abspath(scene):
                raise ConfigError(f"SCENE {scene} and {stems[stem]} share the name {stem!r}, which names their tiles; "
                                  "rename one (or tile them into two --out folders)")
            stems[stem] = scene
        problem = storage.first_location_problem({"--out": self.out}, folders=("--out",))
        if problem:
            raise ConfigError(problem)


def folder_scenes(folder: str) -> list[str]:
    """The rasters in a folder of scenes (not below it), by name; hidden files left out."""
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")
                  and os.path.isfile(os.path.join(folder, name)))


@dataclass
class TileCounts:
    written: int = 0
    already_there: int = 0
    skipped_nodata: int = 0
    skipped_zero: int = 0
    scenes: dict = field(default_factory=dict)  # scene -> tiles kept


class ForeignFolderError(GeodinoError):
    """--out holds files tile.py did not write, or tiles cut with other settings."""


def claim_folder(config: TileConfig) -> None:
    """--out becomes tile.py's: a new or empty folder, or its own with the same settings; nothing else is touched."""
    settings = {"size": config.size, "stride": config.stride or config.size, "max_nodata": config.max_nodata}
    manifest = os.path.join(config.out, MANIFEST)
    if os.path.exists(manifest):
        with open(manifest) as handle:
            earlier = json.load(handle)["settings"]
        if earlier != settings:
            changed = ", ".join(f"--{key} {earlier[key]} there, {settings[key]} now" for key in settings
                                if earlier[key] != settings[key])
            raise ForeignFolderError(f"--out {config.out} holds tiles cut with other settings ({changed}); give a new "
                                     "--out, or the same settings to continue")
    elif os.path.isdir(config.out) and os.listdir(config.out):
        raise ForeignFolderError(f"--out {config.out} holds {len(os.listdir(config.out))} files tile.py did not write; "
                                 "give a new or empty folder")
    storage.write_bytes_atomic(manifest, json.dumps({"settings": settings}).encode())  # makes --out too


def tile_name(scene: str, top: int, left: int) -> str:
    return f"{os.path.splitext(os.path.basename(scene))[0]}_y{top:05d}_x{left:05d}.tif"


def check_scene(scene: str, size: int) -> None:
    """A scene GDAL opens and one tile fits in, checked for every scene before a tile is written."""
    from rasterio.errors import RasterioError

    try:
        with open_raster(scene) as src:
            width, height = src.width, src.height
    except RasterioError as error:
        raise PatchReadError(f"{scene}: cannot read the scene ({error})") from error
    if width < size or height < size:
        raise PatchReadError(f"{scene}: the scene is {width}x{height} px, smaller than one --size {size} tile")


def tile_scene(scene: str, config: TileConfig, counts: TileCounts) -> None:
    """Write the tiles of one scene, row by row (the order a striped GeoTIFF is stored in)."""
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    size, stride = config.size, config.stride or config.size
    before = counts.written + counts.already_there
    try:
        with open_raster(scene) as src:
            masked = marks_no_data(src.mask_flag_enums)  # asked once per scene, not per tile
            for top in range(0, src.height - size + 1, stride):
                for left in range(0, src.width - size + 1, stride):
                    path = os.path.join(config.out, tile_name(scene, top, left))
                    outcome = cut_tile(src, Window(left, top, size, size), path, config.max_nodata, masked)
                    setattr(counts, outcome, getattr(counts, outcome) + 1)
    except RasterioError as error:
        raise PatchReadError(f"{scene}: cannot read the scene ({error})") from error
    counts.scenes[scene] = counts.written + counts.already_there - before


def cut_tile(src, window, path: str, max_nodata: float, masked: bool) -> str:
    """One tile of `src` written to `path` through a temporary name moved into place (a killed run leaves whole
    tiles), or why not; returns the TileCounts field that counts it. masked: the scene marks no-data pixels."""
    import rasterio

    if os.path.exists(path):
        return "already_there"
    pixels = src.read(window=window, masked=masked)
    invalid = np.ma.getmaskarray(pixels).any(axis=0)  # all False where the scene marks no data
    if invalid.mean() > max_nodata:
        return "skipped_nodata"
    data = np.ma.getdata(pixels)
    if not data.any():
        return "skipped_zero"
    profile = {"driver": "GTiff", "width": window.width, "height": window.height, "count": src.count,
               "dtype": src.dtypes[0], "crs": src.crs, "nodata": src.nodata, "compress": "deflate"}
    # a scene without georeference (a JPEG) gives tiles without one, not a made-up transform
    where = {"transform": src.window_transform(window)} if src.crs else {}
    temporary = path + ".tmp"
    with rasterio.open(temporary, "w", **where, **profile) as dst:
        dst.write(data)
        dst.colorinterp = src.colorinterp
        if invalid.any() and src.nodata is None:  # a mask of the scene's own: kept as the tile's
            dst.write_mask(~invalid)
    os.replace(temporary, path)
    return "written"


def tile_scenes(config: TileConfig) -> TileCounts:
    """Every scene's tiles into --out; see the module docstring."""
    config.validate()
    scenes = list(dict.fromkeys(config.scene_files()))  # a scene named twice is cut once
    for scene in scenes:
        check_scene(scene, config.size)
    claim_folder(config)
    counts = TileCounts()
    for scene in scenes:
        tile_scene(scene, config, counts)
    return counts
