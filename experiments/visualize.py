"""Self-attention maps of a backbone over real patches, and the curves of a pretraining run.

python experiments/visualize.py --pretrained_weights SOURCE --metadata_dir META [--images NAME ...] [--run RUN_FOLDER]
"""

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

from geodino import cli
from geodino.cli import run_entry
from geodino.transfer.visualize import VisualizeConfig


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_dataclass_arguments(parser, VisualizeConfig)
    config = cli.dataclass_from_args(VisualizeConfig, parser.parse_args(argv))
    config.validate()
    from geodino.outputs import claim_outputs
    from geodino.transfer.visualize import run_log_folder

    run = run_log_folder(config.run) if config.run else None

    wanted = ["pretraining_curves.png"] * bool(config.run) + ["attention.png"] * bool(config.pretrained_weights)
    paths = claim_outputs(config.output_dir, wanted, "visualize.py", "--output_dir")
    if run:
        from geodino.transfer.visualize import plot_curves

        print(plot_curves(run, paths["pretraining_curves.png"]))
    if config.pretrained_weights:
        from geodino.archive.card import load_card
        from geodino.data.config import DataConfig, channel_names, resolve_bands
        from geodino.data.ray_data import build_dataset
        from geodino.ray_cluster import init_ray
        from geodino.transfer.backbones import load_backbone
        from geodino.transfer.contract import resolve_inputs
        from geodino.transfer.features import fitted_image_size
        from geodino.transfer.visualize import display_channels, plot_attention

        card = load_card(config.metadata_dir)
        inputs = resolve_inputs(config.pretrained_weights, card, config.bands, config.normalize, config.image_size,
                                config.force, "visualize.py")
        config.bands, config.normalize = inputs.bands, inputs.normalize
        chosen = resolve_bands(card, config.bands)
        in_chans = len(chosen)
        data = DataConfig(metadata=config.metadata_dir, data_dir=config.data_dir, split=config.split, bands=config.bands,
                          normalize=config.normalize, recommended_only=False)
        check_images(parser, data, config.images)
        size = fitted_image_size(config.pretrained_weights, data, inputs.image_size, config.arch, config.patch_size)
        init_ray()
        dataset = build_dataset(data)
        if config.images:
            from ray.data.expressions import col

            dataset = dataset.filter(expr=col("name").is_in(sorted(set(config.images))))
        rows = dataset.take(len(config.images) or config.count)
        images = torch.from_numpy(np.stack([row["image"] for row in rows]))
        if size and images.shape[-1] != size:  # a ViT takes whole patches: 120 px images and 16 px patches do not fit
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        backbone = load_backbone(config.pretrained_weights, config.arch, config.patch_size, in_chans)
        print(plot_attention(backbone.model, images, [row["name"] for row in rows], paths["attention.png"],
                             display_channels(channel_names(card, chosen))))
    return 0


def check_images(parser: argparse.ArgumentParser, data, names: list[str]) -> None:
    """--images named from the metadata before Ray starts: a name not in the split would otherwise leave
    nothing to draw, found only after reading the whole split."""
    from geodino.data.config import empty_split_problem, metadata_rows

    present = set(metadata_rows(data, columns=["name", "original_split", "recommended"])["name"])
    if not present:
        parser.error(empty_split_problem(data))
    unknown = [name for name in names if name not in present]
    if unknown:
        parser.error(f"--images: {len(unknown)} of {len(names)} names are not patches of the {data.split} split "
                     f"(e.g. {unknown[0]!r}; it holds e.g. {sorted(present)[0]!r}); use the metadata's name column, "
                     "or another --split")


if __name__ == "__main__":
    sys.exit(run_entry("visualize.py", main))
