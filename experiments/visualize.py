"""Self-attention maps of a backbone over real patches, and the curves of a pretraining run.

python experiments/visualize.py --pretrained_weights SOURCE --metadata_dir META [--images NAME ...] [--run RUN_FOLDER]
"""

import argparse
import os
import sys

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_weights", help="backbone SOURCE (see linear_probe.py)")
    parser.add_argument("--metadata_dir")
    parser.add_argument("--data_dir")
    parser.add_argument("--images", nargs="*", default=[], help="patch names (default: the first --count patches)")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--split", default="test")
    parser.add_argument("--bands", default="rgb")
    parser.add_argument("--arch")
    parser.add_argument("--patch_size", type=int)
    parser.add_argument("--run", help="a pretraining run folder (with log.txt) to plot curves of")
    parser.add_argument("--output_dir", default="runs/pictures")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.run:
        from geodino.transfer.visualize import plot_curves

        print(plot_curves(args.run, os.path.join(args.output_dir, "pretraining_curves.png")))
    if args.pretrained_weights:
        from geodino.archive.card import load_card
        from geodino.data.config import DataConfig, resolve_bands
        from geodino.data.ray_data import build_dataset
        from geodino.ray_cluster import init_ray
        from geodino.transfer.backbones import load_backbone
        from geodino.transfer.visualize import plot_attention

        init_ray()
        in_chans = len(resolve_bands(load_card(args.metadata_dir), args.bands))
        dataset = build_dataset(DataConfig(metadata=args.metadata_dir, data_dir=args.data_dir, split=args.split,
                                           bands=args.bands, recommended_only=False))
        if args.images:
            wanted = set(args.images)
            dataset = dataset.filter(lambda row: row["name"] in wanted)
        rows = dataset.take(len(args.images) or args.count)
        images = torch.from_numpy(np.stack([row["image"] for row in rows]))
        backbone = load_backbone(args.pretrained_weights, args.arch, args.patch_size, in_chans)
        print(plot_attention(backbone.model, images, [row["name"] for row in rows],
                             os.path.join(args.output_dir, "attention.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
