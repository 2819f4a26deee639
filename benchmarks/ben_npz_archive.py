"""The 36 real BigEarthNet v1 patches of ../shared/data as one archive in BigEarthNet's native layout.

python benchmarks/ben_npz_archive.py OUT
The 30 patches ConfigILM ships (stored there as one .npz per patch) are written back as one GeoTIFF per
band (uint16, pixel values unchanged; without georeferencing, which the npz does not hold) plus
`<name>_labels_metadata.json` with their 43-class labels; the 6 example patches are hard-linked beside
them. prepare then reads all 36 like the real archive: the small multi-label transfer check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("GEODINO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NPZ = SHARED / "bigearthnet-v1-configilm-mock"
EXAMPLE = SHARED / "bigearthnet-s2-example"


def write_band(path: Path, array: np.ndarray) -> None:
    import rasterio

    from geodino.storage import raster_env

    profile = dict(driver="GTiff", width=array.shape[1], height=array.shape[0], count=1, dtype=array.dtype)
    with raster_env(str(path)), rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)


def write_npz_patches(out: Path) -> None:
    """The 30 ConfigILM patches as BigEarthNet v1 folders: one GeoTIFF per band and the labels JSON."""
    out.mkdir(parents=True, exist_ok=True)
    labels = json.loads((NPZ / "labels.json").read_text())
    for npz in sorted((NPZ / "patches").glob("*.npz")):
        name = npz.stem
        folder = out / name
        folder.mkdir(exist_ok=True)
        with np.load(npz) as bands:
            for band in (key for key in bands.files if key.startswith("B")):
                write_band(folder / f"{name}_{band}.tif", bands[band])
        (folder / f"{name}_labels_metadata.json").write_text(json.dumps({"labels": labels[name]["labels_43"]}))


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    write_npz_patches(out)
    for source in sorted(p for p in EXAMPLE.iterdir() if p.is_dir()):
        (out / source.name).mkdir(exist_ok=True)
        for file in source.iterdir():
            target = out / source.name / file.name
            if not target.exists():
                os.link(file, target)
    print(f"{out}: {len(list(out.iterdir()))} patch folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
