"""Turn an archive into geodino's metadata parquet: python experiments/prepare.py ARCHIVE --out metadata.parquet"""

import argparse
import sys

from geodino import cli, storage
from geodino.archive.pack import PackConfig, PackMismatchError, pack
from geodino.archive.prepare import PrepareConfig, prepare, summarise


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("archive", help="BigEarthNet v1 folder, reBEN folder (metadata.parquet + LMDB), or a CSV/parquet of images")
    parser.add_argument("--out", default="metadata.parquet", help="metadata parquet to write (local or s3://)")
    parser.add_argument("--splits-dir", "--splits_dir", dest="splits_dir", help="folder with train/val/test CSVs")
    parser.add_argument("--exclusions-dir", "--exclusions_dir", dest="exclusions_dir",
                        help="folder with the snow / cloud-and-shadow / no-19-class lists")
    parser.add_argument("--data_dir", help="for an image table: the folder image paths are relative to")
    parser.add_argument("--bands", default="all", help="bands each BigEarthNet patch must have: all, rgb or B04,B03,B02")
    parser.add_argument("--verify", choices=["pixels", "header"], default="pixels",
                        help="pixels: read every band (catches truncated files); header: open only (faster)")
    parser.add_argument("--workers", type=int, default=0, help="parallel processes (0: one per core)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero when any patch is rejected")
    parser.add_argument("--stats_patches", type=int, default=1000,
                        help="training patches sampled for band mean/std and the pixel scale")
    parser.add_argument("--pixel_max", type=cli.finite_float, help="value --normalize max maps to 1 (default: 2750 for "
                        "Sentinel-2, 255 for 8-bit images, else the 99.9th percentile of sampled training pixels)")
    parser.add_argument("--pack", metavar="DIR", help="also write the --bands of every patch into Parquet shards "
                        "in DIR (local or s3://): training then opens no per-patch files. Rerun to continue")
    parser.add_argument("--pack_only", action="store_true", help="pack the existing --out metadata, skip preparing")
    parser.add_argument("--shard_size", type=int, default=2048, help="patches per pack shard")
    args = vars(parser.parse_args(argv))
    pack_dir, pack_only, shard_size = args.pop("pack"), args.pop("pack_only"), args.pop("shard_size")
    if pack_only and not pack_dir:
        parser.error("--pack_only needs --pack DIR")
    check_args(parser, args, pack_dir, shard_size)
    try:
        if not pack_only:
            result = prepare(PrepareConfig(**args))
            print(summarise(result))
            if args["strict"] and result.rejected:
                print(f"prepare.py: --strict and {result.rejected} patches were rejected", file=sys.stderr)
                return 1
        if pack_dir:
            packed = pack(PackConfig(metadata=args["out"], out_dir=pack_dir, bands=args["bands"], shard_size=shard_size,
                                     workers=args["workers"]))
            print(f"packed {packed.rows} patches into {packed.shards} shards in {packed.out_dir} ({packed.written} "
                  f"written now, {packed.shards - packed.written} already there) in {packed.seconds:.1f} s")
    except (FileNotFoundError, ValueError, PackMismatchError) as error:
        print(f"prepare.py: error: {error}", file=sys.stderr)
        return 2
    return 0


def check_args(parser: argparse.ArgumentParser, args: dict, pack_dir: str | None, shard_size: int) -> None:
    """Values that cannot work, and local inputs that are not there, before the archive is listed."""
    if args["workers"] < 0:
        parser.error(f"--workers must be 0 (one per core) or more, not {args['workers']}")
    for name, value in (("--stats_patches", args["stats_patches"]), ("--shard_size", shard_size)):
        if value < 1:
            parser.error(f"{name} must be at least 1, not {value}")
    if args["pixel_max"] is not None and args["pixel_max"] <= 0:
        parser.error(f"--pixel_max must be greater than 0, not {args['pixel_max']}")
    inputs = {"archive": args["archive"], "--splits_dir": args["splits_dir"],
              "--exclusions_dir": args["exclusions_dir"], "--data_dir": args["data_dir"]}
    problem = storage.first_location_problem({"--out": args["out"], "--pack": pack_dir, **inputs},
                                             folders=("--pack",), existing=tuple(inputs))
    if problem:
        parser.error(problem)


if __name__ == "__main__":
    sys.exit(cli.run_entry("prepare.py", main))
