"""Batch inference: per-patch label probabilities (or --embeddings) for a whole archive, resumable.

python experiments/predict.py --pretrained_weights SOURCE --probe runs/probe/probe.pth --metadata_dir META --output_dir predictions
"""

import argparse
import sys

from geodino import cli
from geodino.cli import add_dataclass_arguments, dataclass_from_args, run_entry
from geodino.transfer.predict import PredictConfig, run_predict


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, PredictConfig)
    config = dataclass_from_args(PredictConfig, parser.parse_args(argv))
    if not config.metadata_dir:
        parser.error("--metadata_dir is required")
    result = run_predict(config)
    print(f"{result['output_dir']}: {result['rows']} of {result['expected']} patches written "
          f"({result['skipped']} were already there; {result['patches_per_second']:.1f} patches/s for the new ones)")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry("predict.py", main))
