"""DINO's multi-crop augmentation for overhead imagery with any number of bands.

Two recipes (``--augment``):

* ``overhead`` (default): in overhead imagery the spectrum is the signal, so photometric changes keep
  it. Brightness is one gain for all bands of a view (band ratios kept), contrast one stretch for all
  bands around each band's own mean (the view's mean spectrum kept); saturation, hue and grayscale
  never run (they would change the spectrum); no independent per-band jitter unless asked for
  (``band_jitter``, a small calibration-like spread). Gaussian blur's sigma is DINO's 0.1-2 px on a
  224-px global / 96-px local crop, scaled to the crop's actual size.
* ``dino``: facebookresearch/dino's ImageNet recipe for comparison: ColorJitter(0.4, 0.4, 0.2, 0.1)
  with p=0.8 and grayscale with p=0.2 (the colour parts only where the bands are R, G, B), blur of
  0.1-2 px whatever the crop size.

Both keep DINO's asymmetry: the first global view is always blurred, the second rarely and may be
solarised, local views are blurred half the time; each view draws its own parameters per image.
Geometry suits overhead imagery: random resized crops, flips and 90-degree rotations (no "up"), in one
``grid_sample`` per view for the whole batch. Everything is batched tensor code, so it runs on the GPU
inside the training loop or on CPUs in Ray Data, unchanged, for any band count.

Photometric changes happen in signal space: ``zero_level`` is where zero signal lies after the data's
normalisation (0 for ``max`` scaling, -mean/std per band for ``stats``), so a gain multiplies the signal,
not the normalised number.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("overhead", "dino")


@dataclass(frozen=True)
class Photometric:
    """Strengths of the photometric augmentations of one recipe."""

    jitter_probability: float  # share of views that get brightness/contrast (and, for RGB, colour) jitter
    brightness: float  # one gain for all bands, uniform in [1 - b, 1 + b]
    contrast: float  # one stretch for all bands around each band's mean, uniform in [1 - c, 1 + c]
    saturation: float  # RGB only: blend with the grey image, factor uniform in [1 - s, 1 + s]
    hue: float  # RGB only: rotation of the colour wheel, uniform in [-h, h] turns
    grayscale_probability: float  # RGB only
    band_jitter: float  # independent gain per band, uniform in [1 - j, 1 + j] (0: off)
    blur_scaled: bool  # blur sigma scaled from DINO's crop sizes (224 global, 96 local) to the crop's


RECIPES = {
    "overhead": Photometric(jitter_probability=0.8, brightness=0.2, contrast=0.2, saturation=0.0, hue=0.0,
                            grayscale_probability=0.0, band_jitter=0.0, blur_scaled=True),
    "dino": Photometric(jitter_probability=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                        grayscale_probability=0.2, band_jitter=0.0, blur_scaled=False),
}
DINO_SIGMA = (0.1, 2.0)  # pixels, on DINO's crops
DINO_GLOBAL_SIZE, DINO_LOCAL_SIZE = 224, 96


@dataclass
class MultiCropConfig:
    global_crops_size: int = 224
    local_crops_size: int = 96
    local_crops_number: int = 8
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    augment: str = "overhead"  # overhead | dino (see the module docstring)
    rgb: bool = False  # the bands are red, green, blue in that order: colour jitter and grayscale may run
    zero_level: tuple[float, ...] | None = None  # per band, the normalised value of zero signal (None: 0)
    solarize_threshold: float = 0.5  # 0.5 for data scaled to [0, 1]; 0.0 for standardised data
    jitter: float | None = None  # overrides the recipe's brightness and contrast spread (0: off)
    band_jitter: float | None = None  # overrides the recipe's per-band gain spread

    @property
    def crop_sizes(self) -> list[int]:
        """The side of each crop, the two global ones first."""
        return [self.global_crops_size] * 2 + [self.local_crops_size] * self.local_crops_number

    def photometric(self) -> Photometric:
        if self.augment not in RECIPES:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, not {self.augment!r}")
        changes = {}
        if self.jitter is not None:
            changes |= {"brightness": self.jitter, "contrast": self.jitter}
        if self.band_jitter is not None:
            changes["band_jitter"] = self.band_jitter
        return dataclasses.replace(RECIPES[self.augment], **changes)


# ============================================================================ geometry


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


# ============================================================================ photometric


def _uniform(shape, spread: float, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, device=like.device, dtype=like.dtype).uniform_(1 - spread, 1 + spread)


def _chosen(batch: int, probability: float, like: torch.Tensor) -> torch.Tensor:
    return (torch.rand(batch, 1, 1, 1, device=like.device) < probability).to(like.dtype)


def shared_gain(images: torch.Tensor, zero: torch.Tensor, spread: float) -> torch.Tensor:
    """Multiply the signal of every band of a view by one gain: band ratios stay exactly as they were."""
    gain = _uniform((images.shape[0], 1, 1, 1), spread, images)
    return zero + (images - zero) * gain


def shared_contrast(images: torch.Tensor, spread: float) -> torch.Tensor:
    """Stretch every band of a view around its own mean by one factor: the view's mean spectrum stays."""
    mean = images.mean(dim=(2, 3), keepdim=True)
    return mean + (images - mean) * _uniform((images.shape[0], 1, 1, 1), spread, images)


def band_gains(images: torch.Tensor, zero: torch.Tensor, spread: float) -> torch.Tensor:
    """An independent gain per band (changes band ratios: keep small, or off)."""
    return zero + (images - zero) * _uniform((images.shape[0], images.shape[1], 1, 1), spread, images)


def grey(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of an RGB batch, (B, 1, H, W)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def saturation(images: torch.Tensor, spread: float) -> torch.Tensor:
    """RGB only: blend each image with its grey version (torchvision's adjust_saturation, per sample)."""
    factor = _uniform((images.shape[0], 1, 1, 1), spread, images)
    luma = grey(images)
    return luma + (images - luma) * factor


def hue(images: torch.Tensor, spread: float) -> torch.Tensor:
    """RGB only: rotate the colour wheel by up to `spread` turns (a rotation about the grey axis, per sample).

    The rotation about the (1, 1, 1) axis in RGB space keeps luma-like grey levels and is what the YIQ hue
    rotation approximates; written out because it is one batched matrix product.
    """
    angle = torch.empty(images.shape[0], device=images.device, dtype=images.dtype).uniform_(-spread, spread)
    angle = angle * 2 * math.pi
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    axis = torch.full((3,), 1 / math.sqrt(3), device=images.device, dtype=images.dtype)
    outer = torch.outer(axis, axis)[None]
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=images.device, dtype=images.dtype)[None]
    cross = cross / math.sqrt(3)
    eye = torch.eye(3, device=images.device, dtype=images.dtype)[None]
    rotation = cos * eye + sin * cross + (1 - cos) * outer  # Rodrigues' formula, (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", rotation, images)


def photometric(images: torch.Tensor, recipe: Photometric, rgb: bool, zero: torch.Tensor) -> torch.Tensor:
    """The recipe's colour changes on a random subset (jitter_probability) of the views, then grayscale.

    Saturation, hue and grayscale run only on 3-band RGB input: on any other band set they have no meaning.
    """
    batch = images.shape[0]
    rgb = rgb and images.shape[1] == 3
    changed = shared_gain(images, zero, recipe.brightness) if recipe.brightness else images
    if recipe.contrast:
        changed = shared_contrast(changed, recipe.contrast)
    if recipe.band_jitter:
        changed = band_gains(changed, zero, recipe.band_jitter)
    if rgb and recipe.saturation:
        changed = saturation(changed, recipe.saturation)
    if rgb and recipe.hue:
        changed = hue(changed, recipe.hue)
    chosen = _chosen(batch, recipe.jitter_probability, images)
    images = chosen * changed + (1 - chosen) * images
    if rgb and recipe.grayscale_probability:
        chosen = _chosen(batch, recipe.grayscale_probability, images)
        images = chosen * grey(images).expand_as(images) + (1 - chosen) * images
    return images


def gaussian_blur(images: torch.Tensor, probability: float, sigma_range=DINO_SIGMA) -> torch.Tensor:
    """Blur with a per-sample sigma (pixels of this crop), separable, any band count."""
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


def blur_sigma(size: int, reference: int, scaled: bool) -> tuple[float, float]:
    """DINO's 0.1-2 px, or the same blur relative to the crop: 0.1-2 px of a `reference`-px crop."""
    if not scaled:
        return DINO_SIGMA
    factor = size / reference
    return DINO_SIGMA[0] * factor, DINO_SIGMA[1] * factor


def solarize(images: torch.Tensor, probability: float, threshold: float) -> torch.Tensor:
    """Reflect values above the threshold (1 - x on [0, 1] data, -x on standardised data)."""
    if probability <= 0:
        return images
    chosen = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < probability
    return torch.where(chosen & (images >= threshold), 2 * threshold - images, images)


# ============================================================================ the views


class MultiCrop:
    """images (B, C, H, W) -> [global, global, local x N], each (B, C, size, size)."""

    def __init__(self, config: MultiCropConfig):
        self.config = config
        self.recipe = config.photometric()

    def zero(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.zero_level is None:
            return torch.zeros((), device=images.device, dtype=images.dtype)
        zero = torch.as_tensor(self.config.zero_level, device=images.device, dtype=images.dtype)
        if zero.numel() != images.shape[1]:
            raise ValueError(f"zero_level has {zero.numel()} bands, the images {images.shape[1]}")
        return zero.view(1, -1, 1, 1)

    def view(self, images: torch.Tensor, size: int, scale, reference: int, blur_p: float,
             solarize_p: float) -> torch.Tensor:
        c = self.config
        crops = resized_crop(images, size, scale)
        crops = photometric(crops, self.recipe, c.rgb, self.zero(crops))
        crops = gaussian_blur(crops, blur_p, blur_sigma(size, reference, self.recipe.blur_scaled))
        return solarize(crops, solarize_p, c.solarize_threshold)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        c = self.config
        crops = [
            self.view(images, c.global_crops_size, c.global_crops_scale, DINO_GLOBAL_SIZE, blur_p=1.0, solarize_p=0.0),
            self.view(images, c.global_crops_size, c.global_crops_scale, DINO_GLOBAL_SIZE, blur_p=0.1, solarize_p=0.2),
        ]
        crops += [
            self.view(images, c.local_crops_size, c.local_crops_scale, DINO_LOCAL_SIZE, blur_p=0.5, solarize_p=0.0)
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
