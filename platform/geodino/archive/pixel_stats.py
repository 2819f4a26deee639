"""Statistics of an archive's pixels: per-band mean and std, and the pixel scale --normalize max divides by.

Both come from one pass over a deterministic sample of recommended training patches (never validation or
test, so nothing of them leaks into training): sums for the band statistics, and a sample of values and
the images' dtype for the scale, which for a user's 16-bit or float images cannot be known without looking.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from geodino.archive.bands import OPTICAL_MAX
from geodino.archive.pixels import FORMAT_IMAGE, read_patch

VALUES_PER_PATCH = 4096  # pixel values sampled per patch for the pixel scale


def band_stats(frame: pd.DataFrame, data_root: str, bands: tuple[str, ...], limit: int,
               size: tuple[int, int] | None = None):
    """Per-band mean and std of raw values over a deterministic sample of recommended training patches; also a
    sample of their values and their dtype, from which a user's pixel scale is chosen.

    Returns (stats, values, dtype); stats is {} when there is nothing to sample.
    """
    pool = frame[frame["recommended"] & (frame["original_split"] == "train")]
    if pool.empty:
        pool = frame
    sample = pool.sort_values("name").head(limit) if len(pool) <= limit else pool.sample(limit, random_state=0)
    total = total_sq = None
    count = 0
    rng = np.random.default_rng(0)
    values, dtypes = [], Counter()
    for row in sample.itertuples():
        raw = read_patch(row.format, data_root, row.path, row.name, bands, size)
        dtypes[str(raw.dtype)] += 1
        flat = raw.astype(np.float64).reshape(raw.shape[0], -1)
        total = flat.sum(1) if total is None else total + flat.sum(1)
        total_sq = (flat**2).sum(1) if total_sq is None else total_sq + (flat**2).sum(1)
        count += flat.shape[1]
        values.append(rng.choice(flat.ravel(), size=min(VALUES_PER_PATCH, flat.size), replace=False))
    if not count:
        return {}, np.empty(0), None
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    stats = {"bands": list(bands), "mean": mean.round(4).tolist(), "std": std.round(4).tolist(), "patches": len(sample)}
    return stats, np.concatenate(values), dtypes.most_common(1)[0][0]


SATURATED_SHARE = 0.5  # a pixel scale that clips more than this share of the sampled values is reported


def choose_pixel_min(values: np.ndarray) -> float:
    """The value that --normalize max maps to 0: zero, unless the data goes below it (Sentinel-1 backscatter in
    dB, elevations, any signed or float image), where the 0.1th percentile of sampled pixels is used. With zero,
    such data was clipped to 0 (or, all negative, to 1) and training saw blank images."""
    if len(values) and float(values.min()) < 0:
        return float(np.percentile(values, 0.1))
    return 0.0


def choose_pixel_max(fmt: str, dtype: str | None, values: np.ndarray, requested: float | None,
                     warnings: list[str]) -> tuple[float, str]:
    """The value that --normalize max maps to 1, and where it came from: --pixel_max; Sentinel-2's 2750 for
    BigEarthNet (the seed's scaling); 255 for 8-bit images; otherwise the 99.9th percentile of sampled pixels
    (a 16-bit or float image's values say nothing about its maximum without looking)."""
    if requested:
        pixel_max, how = float(requested), "--pixel_max"
    elif fmt != FORMAT_IMAGE:
        pixel_max, how = OPTICAL_MAX, "Sentinel-2 reflectance x 10000: 2750 (bright surfaces) maps to 1"
    elif dtype == "uint8":
        pixel_max, how = 255.0, "8-bit images"
    else:
        pixel_max = float(np.percentile(values, 99.9)) if len(values) else 1.0
        how = f"99.9th percentile of {len(values)} sampled training pixels ({dtype} images)"
    if len(values):
        saturated = float((values >= pixel_max).mean())
        if saturated > SATURATED_SHARE:
            warnings.append(f"pixel scale {pixel_max:g} ({how}) leaves {saturated:.0%} of sampled pixels at or above "
                            f"it: with --normalize max they all become 1. The 99.9th percentile is "
                            f"{np.percentile(values, 99.9):g}: pass --pixel_max near it")
    return pixel_max, how
