"""How well frozen features transfer: backbones from any source, features (cached), linear probe and
k-NN, Ray Tune sweeps comparing backbones, batch prediction, attention maps.

Public parts: ``load_backbone`` (random:, timm:, a file or a run folder, checked against the data),
``run_linear_probe`` / ``LinearProbeConfig``, ``run_sweep`` / ``SweepConfig``, ``run_predict`` /
``PredictConfig``. Features stream through Ray Data, so this package imports Ray.
"""

from geodino.transfer.backbones import load_backbone
from geodino.transfer.linear_probe import LinearProbeConfig, run_linear_probe
from geodino.transfer.predict import PredictConfig, run_predict
from geodino.transfer.sweep import SweepConfig, run_sweep

__all__ = ["LinearProbeConfig", "PredictConfig", "SweepConfig", "load_backbone", "run_linear_probe", "run_predict",
           "run_sweep"]
