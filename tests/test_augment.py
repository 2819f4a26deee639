"""The overhead recipe keeps the spectrum; the DINO recipe's colour ops stay on RGB; blur follows the crop size."""

import numpy as np
import pytest
import torch

from geodino.dino.augment import (
    DINO_SIGMA,
    RECIPES,
    MultiCrop,
    MultiCropConfig,
    Photometric,
    blur_sigma,
    gaussian_blur,
    hue,
    photometric,
    shared_contrast,
    shared_gain,
)

ZERO = torch.zeros(())


def reflectances(batch=16, bands=12, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(0.05, 0.6, (batch, bands, size, size))).float()


def test_a_shared_gain_keeps_every_band_ratio():
    images = reflectances()
    gained = shared_gain(images, ZERO, 0.4)
    ratios = gained[:, :, None] / gained[:, None, :]  # every band over every other band, per pixel
    torch.testing.assert_close(ratios, images[:, :, None] / images[:, None, :], rtol=1e-5, atol=0)
    assert not torch.allclose(gained, images)  # it did change the brightness


def test_gain_multiplies_the_signal_not_the_standardised_number():
    """On standardised data a gain must scale (x - zero), where zero is the normalised value of no signal."""
    raw = reflectances(bands=3)
    mean, std = torch.tensor([0.3, 0.2, 0.1]).view(1, 3, 1, 1), torch.tensor([0.1, 0.05, 0.02]).view(1, 3, 1, 1)
    standardised = (raw - mean) / std
    torch.manual_seed(1)
    gained = shared_gain(standardised, -mean / std, 0.4)
    back = gained * std + mean
    ratio = (back / raw).flatten(1)
    assert (ratio.max(1).values - ratio.min(1).values).max() < 1e-4  # one gain per image on the signal


def test_shared_contrast_keeps_each_bands_mean():
    images = reflectances()
    stretched = shared_contrast(images, 0.4)
    torch.testing.assert_close(stretched.mean((2, 3)), images.mean((2, 3)), rtol=1e-5, atol=1e-6)


def test_the_overhead_recipe_keeps_the_mean_spectrum_of_every_view():
    """Brightness scales a view's mean spectrum by one number; nothing else moves its band ratios."""
    torch.manual_seed(0)
    images = reflectances(batch=64, bands=12)
    out = photometric(images, RECIPES["overhead"], rgb=False, zero=ZERO)
    spectrum_in = images.mean((2, 3))
    spectrum_out = out.mean((2, 3))
    share_in = spectrum_in / spectrum_in.sum(1, keepdim=True)
    share_out = spectrum_out / spectrum_out.sum(1, keepdim=True)
    torch.testing.assert_close(share_out, share_in, rtol=1e-4, atol=1e-6)


def test_colour_ops_never_touch_a_twelve_band_input_even_when_told_rgb():
    colour_only = Photometric(jitter_probability=1.0, brightness=0.0, contrast=0.0, saturation=0.5, hue=0.5,
                              grayscale_probability=1.0, band_jitter=0.0, blur_scaled=True)
    images = reflectances(bands=12)
    torch.testing.assert_close(photometric(images, colour_only, rgb=True, zero=ZERO), images)
    rgb = reflectances(bands=3)
    assert not torch.allclose(photometric(rgb, colour_only, rgb=True, zero=ZERO), rgb)  # RGB: they do run


def test_hue_rotation_keeps_the_grey_level_and_turns_colours():
    rgb = reflectances(bands=3)
    turned = hue(rgb, 0.5)
    torch.testing.assert_close(turned.mean(1), rgb.mean(1), rtol=1e-5, atol=1e-6)
    assert (turned - rgb).abs().mean() > 0.01


def test_blur_sigma_scales_with_the_crop_size():
    assert blur_sigma(224, 224, scaled=True) == pytest.approx(DINO_SIGMA)
    assert blur_sigma(64, 224, scaled=True) == pytest.approx((0.1 * 64 / 224, 2.0 * 64 / 224))
    assert blur_sigma(32, 96, scaled=True) == pytest.approx((0.1 / 3, 2.0 / 3))
    assert blur_sigma(64, 224, scaled=False) == DINO_SIGMA  # the DINO recipe keeps ImageNet's pixels
    # What it means: DINO's blur scaled to a 64-px crop removes a small share of the detail, the unscaled one most.
    torch.manual_seed(0)
    images = reflectances(batch=64, bands=3, size=64)
    scaled = gaussian_blur(images, 1.0, blur_sigma(64, 224, True))
    unscaled = gaussian_blur(images, 1.0, DINO_SIGMA)
    removed = [1 - (b - b.mean((2, 3), keepdim=True)).var() / (images - images.mean((2, 3), keepdim=True)).var()
               for b in (scaled, unscaled)]
    assert removed[0] < 0.5 * removed[1]


def test_the_two_global_views_draw_different_parameters():
    """DINO's asymmetry: view 1 always blurred, view 2 rarely; each view its own crop and gain per image."""
    torch.manual_seed(0)
    config = MultiCropConfig(global_crops_size=224, local_crops_size=16, local_crops_number=0, augment="overhead")
    images = reflectances(batch=48, bands=2, size=224)
    first, second = MultiCrop(config)(images)[:2]

    def detail(views):  # high-frequency energy per image
        return (views[..., 1:, :] - views[..., :-1, :]).pow(2).mean((1, 2, 3))

    assert detail(first).median() < 0.8 * detail(second).median()  # view 1 blurred, view 2 mostly not
    brightness = first.mean((1, 2, 3)) / second.mean((1, 2, 3))
    assert brightness.std() > 0.02  # independent gains: the two views of one image differ in brightness
    assert not torch.allclose(first, second)


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="augment must be one of overhead, dino, not 'imagenet'"):
        MultiCrop(MultiCropConfig(augment="imagenet"))
