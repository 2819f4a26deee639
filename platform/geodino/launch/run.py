"""One entry to pretraining: pick the launcher the config names and run it.

The choice of launcher is also the choice of whether Ray is needed at all, so Ray Train's module is
imported only when ``--launcher ray`` is chosen: a bare GPU machine without Ray runs ``--launcher
torchrun`` through this same function.
"""

from __future__ import annotations

from geodino.archive.card import load_card
from geodino.dino.config import PretrainConfig
from geodino.launch.result import PretrainResult
from geodino.launch.torchrun import run_torchrun


def run_pretraining(cfg: PretrainConfig) -> PretrainResult | None:
    """Train; returns the result (None on a torchrun/mpirun rank other than 0)."""
    cfg.validate()
    cfg = cfg.with_absolute_paths()
    if cfg.metadata_dir:
        load_card(cfg.metadata_dir)  # a wrong path is named here, before Ray or a process group starts
    if cfg.launcher == "torchrun":
        return run_torchrun(cfg)
    if cfg.launcher == "ray":
        from geodino.launch.ray_train import run_ray_train  # the one place that decides Ray is needed

        return run_ray_train(cfg)
    raise AssertionError(f"unchecked launcher {cfg.launcher!r}")  # validate() refuses it
