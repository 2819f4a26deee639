"""Cut large scenes into tiles that prepare reads as a folder of images:
python experiments/tile.py SCENE [SCENE ...] --out DIR --size 120"""

import shlex
import sys

from geodino import cli
from geodino.archive.tiles import TileConfig, tile_scenes


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("scenes", nargs="+", metavar="SCENE",
                        help="Rasters to cut: GeoTIFF or JPEG 2000 (any bands and dtype), or JPEG/PNG; a folder "
                        "stands for the rasters in it; a scene's band files (B02.jp2, B03.jp2, ...; a Sentinel-2 "
                        ".SAFE or IMG_DATA folder) are stacked into one scene")
    cli.add_dataclass_arguments(parser, TileConfig)
    config = cli.dataclass_from_args(TileConfig, parser.parse_args(argv))
    counts = tile_scenes(config)
    for scene, kept in counts.scenes.items():
        print(f"{scene}: {kept} tiles")
    print(f"wrote {counts.written} tiles of {config.size} px to {config.out} ({counts.already_there} were already "
          f"there; skipped {counts.skipped_nodata} with no data beyond --max_nodata {config.max_nodata:g} and "
          f"{counts.skipped_zero} all zero)")
    metadata = f"{config.out.rstrip('/')}_metadata/metadata.parquet"
    print(f"next: {shlex.join(['python', cli.script_path('prepare.py', beside=__file__), config.out, '--out', metadata])}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_entry("tile.py", main))
