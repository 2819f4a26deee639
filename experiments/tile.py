"""Cut large scenes into tiles that prepare reads as a folder of images, or as a labelled table with --labels:
python experiments/tile.py SCENE [SCENE ...] --out DIR --size 120 [--labels LANDCOVER.tif]"""

import os
import shlex
import sys

from geodino import cli
from geodino.archive.tile_labels import LABEL_TABLE
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
    archive = config.out
    if counts.labels is not None:
        archive = os.path.join(config.out, LABEL_TABLE)
        print(label_summary(counts.labels, config))
    metadata = f"{config.out.rstrip('/')}_metadata/metadata.parquet"
    print(f"next: {shlex.join(['python', cli.script_path('prepare.py', beside=__file__), archive, '--out', metadata])}")
    return 0


def label_summary(table, config: TileConfig) -> str:
    labelled = table[table["labels"] != ""]
    classes = sorted({label for labels in labelled["labels"] for label in labels.split(";")}, key=natural)
    splits = ", ".join(f"{split} {count}" for split, count in table["split"].value_counts().items())
    lacking = [split for split in ("train", "test") if split not in set(table["split"])]
    warning = (f" (no {' or '.join(lacking)} tiles: these tiles lie in too few blocks of 8 x 8; cut more scenes, or "
               "edit the split column)") if lacking and len(table) else ""
    return (f"labelled {len(labelled)} of {len(table)} tiles from {config.labels} (classes covering at least "
            f"{config.label_min:g} of a tile: {', '.join(classes) or 'none'}); split by blocks of 8 x 8 tiles: "
            f"{splits}{warning}; table: {os.path.join(config.out, LABEL_TABLE)}")


def natural(label: str) -> tuple:
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


if __name__ == "__main__":
    sys.exit(cli.run_entry("tile.py", main))
