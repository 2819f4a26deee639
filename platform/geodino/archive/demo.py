"""The embedded default dataset: a small BigEarthNet-v1-layout archive generated on the spot.

Scenes are mosaics of a few land covers, each with a plausible Sentinel-2 L2A spectrum and the spatial
structure it has from above: field strips, smooth pasture, small dense conifer crowns, large
broad-leaved crowns, open water, a street grid. As in real imagery, a cover's spectrum varies from
place to place (per-band factors and brightness), so colour alone separates the covers only in part
and the structure carries the rest of the label. Everything is seeded: the same call writes the same
bytes, and no download or credential is involved.
"""

from __future__ import annotations

import json
import os

import numpy as np

from geodino import storage
from geodino.archive.bands import NATIVE_SIZE, S2_BANDS
from geodino.archive.card import card_file
from geodino.archive.pixels import to_grid
from geodino.archive.prepare import PrepareConfig, prepare
from geodino.storage import default_home

DEMO_VERSION = 2
SIZE = 120
PATCH_METRES = 1200

# Reflectance x10000 per band, in S2_BANDS order (B01 .. B12).
SPECTRA: dict[str, tuple[int, ...]] = {
    "Non-irrigated arable land": (800, 700, 1000, 1200, 1500, 1900, 2100, 2300, 2400, 900, 2600, 1900),
    "Pastures": (500, 450, 750, 550, 1100, 2400, 2900, 3100, 3200, 1000, 2100, 1100),
    "Coniferous forest": (300, 250, 400, 250, 700, 1800, 2200, 2400, 2500, 800, 1100, 500),
    "Broad-leaved forest": (300, 300, 550, 300, 900, 2600, 3200, 3500, 3600, 1000, 1600, 700),
    "Water bodies": (1200, 900, 800, 500, 400, 300, 250, 200, 180, 100, 80, 60),
    "Discontinuous urban fabric": (1300, 1200, 1300, 1400, 1500, 1700, 1800, 1900, 1950, 900, 2300, 2100),
}
COVERS = tuple(SPECTRA)


def smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Noise in [-1, 1] with features about SIZE/cells pixels wide."""
    coarse = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return to_grid(coarse, SIZE)


def crowns(rng: np.random.Generator, radius: tuple[float, float], cover: float) -> np.ndarray:
    """Tree crowns seen from above: bright domes on shadow, `cover` of the area, radii in pixels."""
    canopy = np.full((SIZE, SIZE), 0.55, np.float32)  # shadow and understorey between crowns
    count = int(cover * SIZE * SIZE / (np.pi * np.mean(radius) ** 2))
    for cy, cx, r in zip(rng.uniform(0, SIZE, count), rng.uniform(0, SIZE, count), rng.uniform(*radius, count)):
        y0, y1 = max(0, int(cy - r)), min(SIZE, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(SIZE, int(cx + r) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
        dome = np.where(distance < 1, 1.15 - 0.35 * distance**2, 0).astype(np.float32)
        canopy[y0:y1, x0:x1] = np.maximum(canopy[y0:y1, x0:x1], dome)
    return canopy


def texture(cover: str, rng: np.random.Generator) -> np.ndarray:
    """Relative brightness modulation of one land cover, (SIZE, SIZE), around 1."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if cover == "Non-irrigated arable land":  # field strips of alternating crops, one orientation per scene
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(10, 22)
        stripes = np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))
        return 1 + 0.25 * stripes + 0.05 * smooth_noise(rng, 30)
    if cover == "Pastures":
        return 1 + 0.08 * smooth_noise(rng, 6)
    if cover == "Coniferous forest":  # small, dense crowns
        return crowns(rng, radius=(1.8, 3.0), cover=1.1)
    if cover == "Broad-leaved forest":  # large crowns
        return crowns(rng, radius=(5.0, 8.0), cover=0.9)
    if cover == "Water bodies":
        return 1 + 0.03 * smooth_noise(rng, 4)
    period = int(rng.integers(10, 16))  # a street grid between blocks of roofs
    roads = ((xx % period) < 2) | ((yy % period) < 2)
    blocks = rng.uniform(0.7, 1.4, size=(SIZE // period + 1, SIZE // period + 1)).astype(np.float32)
    buildings = blocks[(yy // period).astype(int), (xx // period).astype(int)]
    return np.where(roads, 1.35, buildings)


SPECTRAL_SPREAD = 0.15  # per-band factor of a cover's spectrum from place to place: uniform in 1 +- this
BRIGHTNESS_SPREAD = 0.3  # and its overall brightness


def scene(rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """A (12, SIZE, SIZE) reflectance mosaic of 1-3 covers, and the covers present."""
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    covers = list(rng.choice(COVERS, size=count, replace=False))
    seeds = rng.uniform(0, SIZE, size=(count + 2, 2))
    owner = np.concatenate([np.arange(count), rng.integers(0, count, size=2)])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    distance = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    region = owner[np.argmin(distance, axis=0)]
    image = np.zeros((len(S2_BANDS), SIZE, SIZE), np.float32)
    present = []
    for index, cover in enumerate(covers):
        mask = region == index
        if not mask.any():
            continue
        present.append(cover)
        spectrum = np.asarray(SPECTRA[cover], np.float32) * rng.uniform(1 - SPECTRAL_SPREAD, 1 + SPECTRAL_SPREAD, 12)
        spectrum *= rng.uniform(1 - BRIGHTNESS_SPREAD, 1 + BRIGHTNESS_SPREAD)
        image += spectrum[:, None, None].astype(np.float32) * texture(cover, rng)[None] * mask[None]
    image *= rng.uniform(0.9, 1.1)  # illumination differs between acquisitions
    image += rng.normal(0, 20, size=image.shape).astype(np.float32)  # sensor noise
    return np.clip(image, 1, 20000), [c for c in COVERS if c in present]


def downsample(band: np.ndarray, factor: int) -> np.ndarray:
    size = band.shape[0] // factor
    return band.reshape(size, factor, size, factor).mean(axis=(1, 3))


def write_patch(root: str, name: str, image: np.ndarray, labels: list[str], ulx: float, uly: float) -> None:
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    crs = CRS.from_epsg(32633)
    for band_index, band in enumerate(S2_BANDS):
        size = NATIVE_SIZE[band]
        factor = SIZE // size
        pixels = downsample(image[band_index], factor) if factor > 1 else image[band_index]
        profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint16", crs=crs,
                       transform=Affine(PATCH_METRES / size, 0, ulx, 0, -PATCH_METRES / size, uly))
        path = os.path.join(folder, f"{name}_{band}.tif")
        with storage.raster_env(path), rasterio.open(path, "w", **profile) as dst:
            dst.write(np.round(pixels).astype(np.uint16), 1)
    meta = {
        "labels": labels,
        "coordinates": {"ulx": ulx, "uly": uly, "lrx": ulx + PATCH_METRES, "lry": uly - PATCH_METRES},
        "projection": crs.to_wkt(),
        "tile_source": "GEODINO_DEMO_T33UUP",
        "acquisition_date": "2017-07-01 10:10:31",
    }
    with open(os.path.join(folder, f"{name}_labels_metadata.json"), "w") as handle:
        json.dump(meta, handle)


def make_demo_archive(root: str, patches: int = 200, seed: int = 0) -> str:
    """Write the demo archive under `root` (reused when an identical one is already there)."""
    marker = os.path.join(root, ".geodino-demo.json")
    wanted = {"version": DEMO_VERSION, "patches": patches, "seed": seed}
    if os.path.exists(marker):
        with open(marker) as handle:
            if json.load(handle) == wanted:
                return root
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    columns = int(np.ceil(np.sqrt(patches)))
    for index in range(patches):
        row, col = divmod(index, columns)
        image, labels = scene(rng)
        name = f"S2A_MSIL2A_20170701T101031_{row}_{col}"
        write_patch(root, name, image, labels, ulx=400000.0 + col * PATCH_METRES, uly=5800000.0 - row * PATCH_METRES)
    with open(marker, "w") as handle:
        json.dump(wanted, handle)
    return root


def prepared_demo(patches: int = 400) -> str:
    """Generate (once) and prepare the demo archive under GEODINO_HOME; returns its metadata parquet."""
    home = default_home()
    archive = make_demo_archive(os.path.join(home, "demo-archive"), patches=patches)
    out = os.path.join(home, "demo-metadata", "metadata.parquet")
    marker = os.path.join(archive, ".geodino-demo.json")
    stale = (not os.path.exists(out) or not os.path.exists(card_file(out))
             or os.path.getmtime(out) < os.path.getmtime(marker)  # the archive was generated again (a new version)
             or json.load(open(card_file(out))).get("rows") != patches)
    if stale:
        prepare(PrepareConfig(archive=archive, out=out))
    return out
