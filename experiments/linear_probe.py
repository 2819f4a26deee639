"""Linear probe (and k-NN) of a frozen backbone: python experiments/linear_probe.py --pretrained_weights SOURCE ...

SOURCE: random:ARCH | timm:NAME | a checkpoint.pth / teacher_backbone.pth / state dict | a geodino run folder.
"""

import argparse
import math
import sys

from geodino import cli
from geodino.cli import add_dataclass_arguments, dataclass_from_args, run_entry
from geodino.transfer.linear_probe import LinearProbeConfig, run_linear_probe


def fmt(value: float) -> str:
    return "  n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, LinearProbeConfig)
    config = dataclass_from_args(LinearProbeConfig, parser.parse_args(argv))
    if not config.metadata_dir:
        parser.error("--metadata_dir is required (the metadata parquet from experiments/prepare.py)")
    report = run_linear_probe(config)
    print(f"backbone {report['backbone']}  ({report['task']}; rows {report['rows']})")
    print(f"{'':8} {'AP macro':>9} {'AP micro':>9} {'F1 macro':>9}" + (f" {'top-1':>7}" if report["task"] == "single_label" else ""))
    for method in ("linear", "knn"):
        for split in ("validation", "test"):
            r = report[method][split]
            extra = f" {fmt(r['top1']):>7}" if "top1" in r else ""
            print(f"{method:6} {split[:4]} {fmt(r['ap_macro']):>9} {fmt(r['ap_micro']):>9} {fmt(r['f1_macro']):>9}{extra}")
    print(f"wrote {config.output_dir}/metrics.json and probe.pth")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry("linear_probe.py", main))
