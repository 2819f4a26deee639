"""Ray Tune sweep of linear-probe hyperparameters per backbone, and the comparison table and plot.

python experiments/sweep_probe.py --metadata_dir META --backbone imagenet=timm:vit_small_patch16_224.dino \
    --backbone ben=runs/dino_vit_small_p16 --backbone random=random:vit_small
"""

import argparse
import sys

from geodino.cli import add_dataclass_arguments, dataclass_from_args
from geodino.transfer.sweep import SweepConfig, markdown, run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", dest="backbones", action="append", default=[], metavar="NAME=SOURCE",
                        help="repeat for each backbone to compare")
    parser.add_argument("--lrs", type=float, nargs="+", default=SweepConfig().lrs)
    parser.add_argument("--weight_decays", type=float, nargs="+", default=SweepConfig().weight_decays)
    parser.add_argument("--label_fractions", type=float, nargs="+", default=SweepConfig().label_fractions)
    add_dataclass_arguments(parser, SweepConfig)
    config = dataclass_from_args(SweepConfig, parser.parse_args(argv))
    if not config.metadata_dir:
        parser.error("--metadata_dir is required")
    result = run_sweep(config)
    print(markdown(result["table"]))
    print(f"\n{len(result['trials'])} trials; backbones run {result['extractions']} times for features (cached otherwise)")
    for name, path in result["paths"].items():
        print(f"{name}: {path}")
    print(f"Tune results (TensorBoard): tensorboard --logdir {config.storage_path} --host 127.0.0.1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
