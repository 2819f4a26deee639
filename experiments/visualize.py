"""Self-attention maps of a backbone over real patches, and the curves of a pretraining run.

python experiments/visualize.py --pretrained_weights SOURCE --metadata_dir META [--images NAME ...] [--run RUN_FOLDER]
"""

import argparse
import os
import sys

import numpy as np
import torch

from geodino import cli
from geodino.archive.splits import SPLITS
from geodino.cli import run_entry


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_weights", help="backbone SOURCE (see linear_probe.py)")
    parser.add_argument("--metadata_dir", help="metadata parquet (or its folder) of the patches to show")
    parser.add_argument("--data_dir", help="pixel archive, if it moved since prepare")
    parser.add_argument("--images", nargs="*", default=[], help="patch names (default: the first --count patches)")
    parser.add_argument("--count", type=int, default=4, help="patches to show when --images is not given")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split the patches come from")
    parser.add_argument("--bands", help="default: the weights' own bands (their data contract), else rgb")
    parser.add_argument("--normalize", choices=["max", "stats"], help="default: the weights' own, else max")
    parser.add_argument("--force", action="store_true", help="run even when --bands/--normalize contradict the weights")
    parser.add_argument("--arch", help="architecture of weights that do not record it")
    parser.add_argument("--patch_size", type=int, help="patch size of weights that do not record it")
    parser.add_argument("--run", help="a pretraining run folder (with log.txt) to plot curves of")
    parser.add_argument("--output_dir", default="runs/pictures", help="where the PNGs go")
    args = parser.parse_args(argv)
    if not (args.run or args.pretrained_weights):
        parser.error("nothing to draw: give --pretrained_weights (attention maps), --run (curves), or both")
    if args.pretrained_weights and not args.metadata_dir:
        parser.error("--pretrained_weights needs --metadata_dir: the patches whose attention maps to draw")
    if args.count < 1:
        parser.error(f"--count {args.count}: draw at least 1 patch")
    if args.run and not os.path.isfile(os.path.join(args.run, "log.txt")):
        parser.error(f"--run {args.run}: no log.txt there; give a pretraining run's folder (it holds log.txt)")
    from geodino.outputs import claim_outputs

    wanted = ["pretraining_curves.png"] * bool(args.run) + ["attention.png"] * bool(args.pretrained_weights)
    paths = claim_outputs(args.output_dir, wanted, "visualize.py", "--output_dir")
    if args.run:
        from geodino.transfer.visualize import plot_curves

        print(plot_curves(args.run, paths["pretraining_curves.png"]))
    if args.pretrained_weights:
        from geodino.archive.card import load_card
        from geodino.data.config import DataConfig, resolve_bands
        from geodino.data.ray_data import build_dataset
        from geodino.ray_cluster import init_ray
        from geodino.transfer.backbones import load_backbone
        from geodino.transfer.contract import resolve_inputs
        from geodino.transfer.visualize import plot_attention

        card = load_card(args.metadata_dir)
        inputs = resolve_inputs(args.pretrained_weights, card, args.bands, args.normalize, None, args.force,
                                "visualize.py")
        args.bands, args.normalize = inputs.bands, inputs.normalize
        in_chans = len(resolve_bands(card, args.bands))
        data = DataConfig(metadata=args.metadata_dir, data_dir=args.data_dir, split=args.split, bands=args.bands,
                          normalize=args.normalize, recommended_only=False)
        check_images(parser, data, args.images)
        init_ray()
        dataset = build_dataset(data)
        if args.images:
            from ray.data.expressions import col

            dataset = dataset.filter(expr=col("name").is_in(sorted(set(args.images))))
        rows = dataset.take(len(args.images) or args.count)
        images = torch.from_numpy(np.stack([row["image"] for row in rows]))
        backbone = load_backbone(args.pretrained_weights, args.arch, args.patch_size, in_chans)
        print(plot_attention(backbone.model, images, [row["name"] for row in rows],
                             paths["attention.png"]))
    return 0


def check_images(parser: argparse.ArgumentParser, data, names: list[str]) -> None:
    """--images named from the metadata before Ray starts: a name not in the split would otherwise leave
    nothing to draw, found only after reading the whole split."""
    from geodino.data.config import metadata_rows

    present = set(metadata_rows(data, columns=["name", "original_split", "recommended"])["name"])
    if not present:
        parser.error(f"--split {data.split}: {data.metadata} holds no patches of that split")
    unknown = [name for name in names if name not in present]
    if unknown:
        parser.error(f"--images: {len(unknown)} of {len(names)} names are not patches of the {data.split} split "
                     f"(e.g. {unknown[0]!r}; it holds e.g. {sorted(present)[0]!r}); use the metadata's name column, "
                     "or another --split")


if __name__ == "__main__":
    sys.exit(run_entry("visualize.py", main))
