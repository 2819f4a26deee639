"""Ray Tune sweep of linear-probe hyperparameters per backbone, and the comparison table and plot.

python experiments/sweep_probe.py --metadata_dir META --backbone imagenet=timm:vit_small_patch16_224.dino \
    --backbone ben=runs/dino_vit_small_p16 --backbone random=random:vit_small
"""

import argparse
import dataclasses
import sys

from geodino import cli
from geodino.cli import add_dataclass_arguments, dataclass_from_args, run_entry
from geodino.transfer.sweep import SweepConfig, markdown, run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    backbones = next(item for item in dataclasses.fields(SweepConfig) if item.name == "backbones")
    parser.add_argument("--backbone", dest="backbones", action="append", default=[], metavar="NAME=SOURCE",
                        help=backbones.metadata["help"] + "; repeat the flag for each backbone")
    add_dataclass_arguments(parser, SweepConfig)
    config = dataclass_from_args(SweepConfig, parser.parse_args(argv))
    if not config.metadata_dir:
        parser.error("--metadata_dir is required")
    result = run_sweep(config)
    print(markdown(result["table"]))
    trials = result["trials"]
    failed = trials[trials["status"] == "error"]
    print(f"\n{len(trials)} trials ({len(failed)} failed); backbones run {result['extractions']} times for features "
          "(cached otherwise)")
    for trial in failed.itertuples():
        print(f"failed trial: {trial.backbone} lr={trial.lr} weight_decay={trial.weight_decay} "
              f"label_fraction={trial.label_fraction}: {trial.reason}", file=sys.stderr)
    for name, path in result["paths"].items():
        print(f"{name}: {path}")
    print(f"Tune results (TensorBoard): tensorboard --logdir {config.storage_path} --host 127.0.0.1")
    if result["failed_backbones"]:
        print(f"sweep_probe.py: no trial succeeded for {', '.join(result['failed_backbones'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_entry("sweep_probe.py", main))
