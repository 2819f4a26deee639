"""geodino: DINO self-supervised pretraining on overhead imagery, on Ray."""

__version__ = "0.1.0"
