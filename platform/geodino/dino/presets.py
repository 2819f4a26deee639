"""Named recipes (``--preset NAME``): settings that belong together, each with where it comes from.

A preset fills in PretrainConfig's fields; flags the user typed always win over it (the entry script
tracks which flags were given, not which equal a default).
"""

from __future__ import annotations

import dataclasses

from geodino.dino.config import PretrainConfig
from geodino.errors import ConfigError

PRESETS: dict[str, dict] = {
    # The seed blog's run: ViT-S/16 at ImageNet resolution, 2 x 224 + 10 x 96 crops, 100 epochs, DINO's
    # ViT-S settings otherwise (main_dino.py's defaults: out_dim 65536, momentum 0.996, lr 0.0005 per 256).
    "seed": dict(arch="vit_small", patch_size=16, global_crops_size=224, local_crops_size=96, local_crops_number=10,
                 epochs=100, warmup_epochs=10, out_dim=65536, batch_size_per_gpu=64),
    # BigEarthNet's native 120-px patches without upsampling: ViT-S/8 on 112-px global and 48-px local crops
    # (the same 14 x 14 and 6 x 6 token grids as DINO's 224/96 with patch 16, at a quarter of the pixels).
    "bigearthnet120": dict(arch="vit_small", patch_size=8, global_crops_size=112, local_crops_size=48,
                           local_crops_number=10, epochs=100, warmup_epochs=10, out_dim=65536,
                           batch_size_per_gpu=64),
    # A few thousand 64-px images on a laptop CPU within 30 minutes; chosen with benchmarks/recipe.py on the
    # shared EuroSAT subset (table in benchmarks/RESULTS.md). Patch 16 at 64 px costs a third of patch 8; short
    # runs need a fast teacher (momentum 0.99), few prototypes for few images, a learning rate above DINO's
    # 0.0005 per 256 images, and DINOv2's KoLeo term: without it the features collapse onto ~4 directions
    # (mean colour, brightness) that suffice to match two views, and k-NN falls below random init.
    "small_cpu": dict(arch="vit_tiny", patch_size=16, global_crops_size=64, local_crops_size=32, local_crops_number=4,
                      out_dim=1024, momentum_teacher=0.99, teacher_temp=0.04, warmup_teacher_temp=0.04,
                      lr=0.002, warmup_epochs=3, epochs=25, batch_size_per_gpu=64, drop_path_rate=0.0,
                      freeze_last_layer=1, koleo_weight=0.1, saveckp_freq=5),
    # The embedded demo archive (geodino.archive.demo) on 2 CPU cores in a few minutes: what
    # `python experiments/pretrain.py` runs when given no --metadata_dir.
    # 208 training patches give few steps per epoch: batch 16 and lr 0.004 per 256 images (measured at seed 0:
    # loss 6.49 -> 5.73, k-NN AP 0.790 vs 0.774 at random init; seeds 1-3 ahead by 0.015-0.025; batch 32 and
    # lr 0.002 left the teacher uniform).
    "demo": dict(arch="vit_tiny", patch_size=16, global_crops_size=64, local_crops_size=32, local_crops_number=4,
                 out_dim=1024, momentum_teacher=0.99, lr=0.004, warmup_epochs=1, epochs=20, batch_size_per_gpu=16,
                 drop_path_rate=0.0, koleo_weight=0.1, knn_every=5, saveckp_freq=5, run_name="demo"),
}


def preset_values(name: str | None) -> dict:
    if not name:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(sorted(PRESETS))}, not {name!r}")
    return dict(PRESETS[name])


def preset_config(name: str | None, given: dict | None = None) -> PretrainConfig:
    """PretrainConfig's defaults, then the preset's values, then `given` (what the user typed) on top."""
    given = {key: value for key, value in (given or {}).items() if key != "preset"}
    return dataclasses.replace(PretrainConfig(), **(preset_values(name) | given), preset=name)
