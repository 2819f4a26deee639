"""prepare.py's settings, one field per flag (experiments/prepare.py builds its argparse from them)."""

from __future__ import annotations

from dataclasses import dataclass

from geodino import storage
from geodino.cli import flag
from geodino.errors import ConfigError


@dataclass
class PrepareConfig:
    """prepare.py's flags: how an archive is parsed and checked, then (with --pack) packed into shards."""

    archive: str  # the positional ARCHIVE: a BigEarthNet v1 folder, a reBEN folder, a table of images, or a folder of
    # class folders
    out: str = flag("metadata.parquet", "Metadata parquet to write (local or s3://); its card (.json) and rejects "
                    "(.rejects.csv) go beside it. A new path, or an earlier output of prepare")
    splits_dir: str | None = flag(None, "Folder with BigEarthNet's official train.csv, val.csv, test.csv (.bz2 "
                                  "fine); default: a hash of the patch name (52/24/24 %) unless a table has a split "
                                  "column", aliases=("--splits-dir",))
    exclusions_dir: str | None = flag(None, "Folder with the seasonal-snow and cloud-and-shadow patch lists; "
                                      "default: no patch is flagged", aliases=("--exclusions-dir",))
    data_dir: str | None = flag(None, "For an image table: the folder its relative image paths start from; "
                                "default: the table's folder. For reBEN: the folder of its GeoTIFFs "
                                "(BigEarthNet-S2), when not beside metadata.parquet")
    bands: str = flag("all", "Bands every BigEarthNet patch must have, and the bands --pack writes: all, rgb or a "
                      "list such as B04,B03,B02 (your own images keep every channel: choose channels when training)")
    band_names: str | None = flag(None, "Your images' channels by name, in the files' order, such as EuroSAT MS's "
                                  "B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B10,B11,B12; then --bands B04,B03,B02 "
                                  "chooses them and weights record them. Default: the GeoTIFFs' band descriptions, "
                                  "else band1..bandN")
    verify: str = flag("pixels", "pixels reads every band (catches truncated files); header only opens each file "
                       "(faster, for an archive checked before)", choices=("pixels", "header"))
    workers: int = flag(0, "Parallel processes; 0: one per core")
    strict: bool = flag(False, "Exit 1 when any patch was rejected (the good rows are still written)")
    stats_patches: int = flag(1000, "Training patches sampled for the per-band mean/std and the pixel scale")
    pixel_max: float | None = flag(None, "Value --normalize max maps to 1; default: 2750 for Sentinel-2, 255 for "
                                   "8-bit images, else the 99.9th percentile of sampled training pixels")
    pack: str | None = flag(None, "Also write the --bands of every patch into Parquet shards in this folder (local "
                            "or s3://): training then opens no per-patch files. Rerun the same command to continue")
    pack_only: bool = flag(False, "With --pack: pack the existing --out metadata, skip preparing")
    shard_size: int = flag(2048, "Patches per pack shard (2048 x 120 x 120 RGB uint16: about 180 MB before compression)")

    def validate(self) -> None:
        """Values that cannot work, and local inputs that are not there, named before the archive is listed."""
        if self.pack_only and not self.pack:
            raise ConfigError("--pack_only needs --pack DIR")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 (one per core) or more, not {self.workers}")
        for name in ("stats_patches", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, not {getattr(self, name)}")
        if self.pixel_max is not None and self.pixel_max <= 0:
            raise ConfigError(f"--pixel_max must be greater than 0, not {self.pixel_max}")
        inputs = {"archive": self.archive, "--splits_dir": self.splits_dir, "--exclusions_dir": self.exclusions_dir,
                  "--data_dir": self.data_dir}
        problem = storage.first_location_problem({"--out": self.out, "--pack": self.pack, **inputs},
                                                 folders=("--pack",), existing=tuple(inputs))
        if problem:
            raise ConfigError(problem)
