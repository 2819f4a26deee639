"""DINO pretraining on Ray Train: geodino's main job.

With no --metadata_dir it generates the embedded demo archive, prepares it, and
pretrains a small ViT on it with settings sized for a laptop CPU (a few minutes).
Flags follow facebookresearch/dino's main_dino.py; `--help` lists them all.
Without Ray (SMDDP, or a plain PyTorch baseline):
  torchrun --nproc_per_node 8 experiments/pretrain.py --launcher torchrun --use_gpu ...
"""

import argparse
import dataclasses
import os
import sys

from geodino.archive.demo import prepared_demo
from geodino.cli import add_dataclass_arguments, dataclass_from_args
from geodino.dino.config import PretrainConfig
from geodino.launch import run_pretraining

# Settings for the embedded demo: small crops and head so 2 CPU cores finish in minutes.
DEMO_SETTINGS = dict(arch="vit_tiny", patch_size=16, out_dim=4096, epochs=20, batch_size_per_gpu=32, warmup_epochs=2,
                     global_crops_size=64, local_crops_size=32, local_crops_number=4, drop_path_rate=0.0,
                     saveckp_freq=5, run_name="demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, PretrainConfig)
    args = parser.parse_args(argv)
    config = dataclass_from_args(PretrainConfig, args)
    if not config.metadata_dir:
        defaults = PretrainConfig()
        changes = {k: v for k, v in DEMO_SETTINGS.items() if getattr(config, k) == getattr(defaults, k)}
        config = dataclasses.replace(config, metadata_dir=prepared_demo(), **changes)
        print(f"no --metadata_dir: pretraining on the embedded demo archive with {changes}", file=sys.stderr)
    result = run_pretraining(config)
    if result is None:  # a rank other than 0 under torchrun / mpirun
        return 0
    last = result.metrics[-1]
    print(f"\nfinished {len(result.metrics)} epochs: loss {result.metrics[0]['loss']:.4f} -> {last['loss']:.4f}, "
          f"teacher entropy {last['teacher_entropy']:.2f} of max {last['max_entropy']:.2f}, "
          f"{last['images_per_s']:.1f} images/s")
    print(f"checkpoint (DINO format): {result.checkpoint_dir}/checkpoint.pth  (stored at {result.storage_checkpoint})")
    print(f"teacher backbone (timm keys): {result.backbone_file}")
    print(f"TensorBoard: tensorboard --logdir {os.path.dirname(result.checkpoint_dir)} --host 127.0.0.1")
    print(f"next: python experiments/linear_probe.py --pretrained_weights {result.backbone_file} "
          f"--arch {config.arch} --patch_size {config.patch_size} --metadata_dir {config.metadata_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
