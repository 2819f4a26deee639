"""What a finished pretraining hands back, whichever launcher ran it."""

from __future__ import annotations

import os
from dataclasses import dataclass

from geodino.dino.checkpoint import BACKBONE_FILE


@dataclass
class PretrainResult:
    checkpoint_dir: str  # local folder with checkpoint.pth and teacher_backbone.pth
    storage_checkpoint: str  # where the launcher keeps it (local path or s3:// URI)
    metrics: list[dict]

    @property
    def backbone_file(self) -> str:
        """The teacher ViT with timm's keys: what probes and predict load."""
        return os.path.join(self.checkpoint_dir, BACKBONE_FILE)
