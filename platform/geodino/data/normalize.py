"""Raw pixels to normalised float32 on the training device: the last step of the pipeline, done where it is cheap.

Ray Data hands the training loop a pack's pixels in their own integer type (uint16 or uint8: 2-4x fewer
bytes through the object store than float32), and the device does the arithmetic. The result equals
what ``geodino.data.config.normalize_in_place`` gives on the CPU, operation for operation.
"""

from __future__ import annotations

import numpy as np
import torch


class Normalizer:
    """(raw - offset) / scale per band, clipped to [0, 1] when `clip` (--normalize max)."""

    def __init__(self, offset: np.ndarray, scale: np.ndarray, clip: bool, device: torch.device):
        self.offset = torch.as_tensor(np.asarray(offset, np.float32), device=device)[:, None, None]
        self.scale = torch.as_tensor(np.asarray(scale, np.float32), device=device)[:, None, None]
        self.clip, self.device = clip, device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():  # already normalised by the pipeline (an archive of files)
            return images.to(self.device, non_blocking=True)
        normalised = images.to(self.device, non_blocking=True).float().sub_(self.offset).div_(self.scale)
        return normalised.clamp_(0.0, 1.0) if self.clip else normalised
