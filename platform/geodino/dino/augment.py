"""DINO's multi-crop augmentation for overhead imagery with any number of bands.

A satellite image has no "up": views are flipped and rotated by multiples of 90
degrees instead of being kept upright. Colour jitter is done per band (brightness
and contrast), since saturation and hue mean nothing for 12 bands. Everything is
batched tensor code (one affine_grid/grid_sample per view for the whole batch), so
it runs on the GPU inside the training loop or on CPUs in Ray Data, unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MultiCropConfig:
    global_crops_size: int = 224
    local_crops_size: int = 96
    local_crops_number: int = 8
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    jitter_probability: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    solarize_threshold: float = 0.5  # 0.5 for data scaled to [0, 1]; 0.0 for standardised data


def crop_boxes(batch: int, scale: tuple[float, float], device, ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-sample (half-width, half-height, centre x, centre y) in [-1, 1] image coordinates."""
    area = torch.empty(batch, device=device).uniform_(*scale)
    log_ratio = torch.empty(batch, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    width = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    height = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    centre_x = (torch.rand(batch, device=device) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(batch, device=device) * 2 - 1) * (1 - height)
    return torch.stack([width, height, centre_x, centre_y], dim=1)


def dihedral_matrices(batch: int, device) -> torch.Tensor:
    """Random elements of the 8-element symmetry group of the square (90-degree rotations x flip)."""
    quarter_turns = torch.randint(0, 4, (batch,), device=device)
    angle = quarter_turns.float() * (math.pi / 2)
    cos, sin = torch.cos(angle).round(), torch.sin(angle).round()
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    flip = torch.where(torch.rand(batch, device=device) < 0.5, -1.0, 1.0)
    mirror = torch.diag_embed(torch.stack([flip, torch.ones_like(flip)], -1))
    return rotation @ mirror


def resized_crop(images: torch.Tensor, size: int, scale: tuple[float, float],
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crop + flip + 90-degree rotation, one grid_sample for the whole batch."""
    batch = images.shape[0]
    box = crop_boxes(batch, scale, images.device, ratio)
    linear = torch.diag_embed(box[:, :2]) @ dihedral_matrices(batch, images.device)
    theta = torch.cat([linear, box[:, 2:, None]], dim=2).to(images.dtype)
    grid = F.affine_grid(theta, [batch, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def jitter(images: torch.Tensor, probability: float, brightness: float, contrast: float) -> torch.Tensor:
    """Per-band brightness and contrast, applied to a random subset of the batch."""
    batch, bands = images.shape[:2]
    shape = (batch, bands, 1, 1)
    gain = torch.empty(shape, device=images.device).uniform_(1 - brightness, 1 + brightness)
    stretch = torch.empty(shape, device=images.device).uniform_(1 - contrast, 1 + contrast)
    mean = images.mean(dim=(2, 3), keepdim=True)
    jittered = (images - mean) * stretch + mean * gain
    chosen = (torch.rand(batch, 1, 1, 1, device=images.device) < probability).to(images.dtype)
    return chosen * jittered + (1 - chosen) * images


def gaussian_blur(images: torch.Tensor, probability: float, sigma_range=(0.1, 2.0)) -> torch.Tensor:
    """Blur with a per-sample sigma in pixels of the crop, as DINO does for both crop sizes."""
    if probability <= 0:
        return images
    batch, bands, size, _ = images.shape
    sigma = torch.empty(batch, device=images.device).uniform_(*sigma_range)
    radius = max(1, min(math.ceil(3 * sigma_range[1]), size - 1))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    identity = (offsets == 0).to(images.dtype).expand(batch, -1)
    chosen = (torch.rand(batch, 1, device=images.device) < probability).to(images.dtype)
    kernel = chosen * kernel / kernel.sum(1, keepdim=True) + (1 - chosen) * identity
    kernel = kernel.repeat_interleave(bands, dim=0)  # (batch * bands, taps)
    flat = F.pad(images.reshape(1, batch * bands, size, size), (radius,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=batch * bands)
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=batch * bands)
    return flat.reshape(batch, bands, size, size)


def solarize(images: torch.Tensor, probability: float, threshold: float) -> torch.Tensor:
    """Reflect values above the threshold (1 - x on [0, 1] data, -x on standardised data)."""
    if probability <= 0:
        return images
    chosen = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < probability
    return torch.where(chosen & (images >= threshold), 2 * threshold - images, images)


class MultiCrop:
    """images (B, C, H, W) -> [global, global, local x N], each (B, C, size, size)."""

    def __init__(self, config: MultiCropConfig):
        self.config = config

    def view(self, images: torch.Tensor, size: int, scale, blur_p: float, solarize_p: float) -> torch.Tensor:
        c = self.config
        crops = resized_crop(images, size, scale)
        crops = jitter(crops, c.jitter_probability, c.brightness, c.contrast)
        crops = gaussian_blur(crops, blur_p)
        return solarize(crops, solarize_p, c.solarize_threshold)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        c = self.config
        crops = [
            self.view(images, c.global_crops_size, c.global_crops_scale, blur_p=1.0, solarize_p=0.0),
            self.view(images, c.global_crops_size, c.global_crops_scale, blur_p=0.1, solarize_p=0.2),
        ]
        crops += [
            self.view(images, c.local_crops_size, c.local_crops_scale, blur_p=0.5, solarize_p=0.0)
            for _ in range(c.local_crops_number)
        ]
        return crops

    @property
    def ncrops(self) -> int:
        return 2 + self.config.local_crops_number


def crop_columns(batch: dict, config: MultiCropConfig) -> dict:
    """Ray Data map_batches form: numpy batch with "image" -> "crop0" .. "cropN" columns."""
    crops = MultiCrop(config)(torch.from_numpy(batch["image"]))
    return {f"crop{i}": crop.numpy() for i, crop in enumerate(crops)}
