"""The bad-input catalogue of the README: each bad input, made for real, and the message the user sees."""

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
from conftest import EUROSAT

from geodino.archive.bands import UnknownBandError, parse_bands
from geodino.archive.prepare import PrepareConfig, prepare
from geodino.data.config import DataConfig
from geodino.data.ray_data import build_dataset
from geodino.dino.config import PretrainConfig, steps_per_epoch_for
from geodino.launch.ray_train import check_gpus


def _band(archive, name, band):
    return archive / name / f"{name}_{band}.tif"


def _rewrite(path, array, dtype):
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(dtype=dtype)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(dtype)[None])


def test_band_of_wrong_dtype_and_all_zero_band_are_rejected(ben_v1_copy, tmp_path):
    names = sorted(p.name for p in ben_v1_copy.iterdir())
    as_float = _band(ben_v1_copy, names[0], "B04")
    _rewrite(as_float, rasterio.open(as_float).read(1), "float32")
    zero = _band(ben_v1_copy, names[1], "B08")
    _rewrite(zero, np.zeros((120, 120)), "uint16")
    out = tmp_path / "metadata.parquet"
    result = prepare(PrepareConfig(archive=str(ben_v1_copy), out=str(out), workers=1))
    reasons = pd.read_csv(result.rejects_path).set_index("name")["reason"]
    assert "B04" in reasons[names[0]] and "dtype float32, expected uint16" in reasons[names[0]]
    assert "B08" in reasons[names[1]] and "all zero" in reasons[names[1]]
    assert result.rows == 4


def test_nan_and_empty_images_and_mixed_band_counts_in_a_users_table(tmp_path):
    source = sorted((EUROSAT / "images" / "Forest").glob("*.jpg"))[:4]
    folder = tmp_path / "images"
    folder.mkdir()
    for path in source:
        shutil.copy(path, folder / path.name)
    profile = dict(driver="GTiff", width=16, height=16, count=3, dtype="float32")
    nan = np.ones((3, 16, 16), np.float32)
    nan[0, 0, 0] = np.nan
    with rasterio.open(folder / "nan.tif", "w", **profile) as dst:
        dst.write(nan)
    with rasterio.open(folder / "empty.tif", "w", **profile) as dst:
        dst.write(np.zeros((3, 16, 16), np.float32))
    with rasterio.open(folder / "four_bands.tif", "w", **{**profile, "count": 4}) as dst:
        dst.write(np.ones((4, 16, 16), np.float32))
    rows = [f"images/{p.name}" for p in source] + ["images/nan.tif", "images/empty.tif", "images/four_bands.tif"]
    pd.DataFrame({"path": rows, "label": "Forest"}).to_csv(tmp_path / "table.csv", index=False)
    result = prepare(PrepareConfig(archive=str(tmp_path / "table.csv"), out=str(tmp_path / "m.parquet"), workers=1))
    reasons = pd.read_csv(result.rejects_path).set_index("path")["reason"]
    assert "row 6" in reasons["images/nan.tif"] and "NaN" in reasons["images/nan.tif"]
    assert "row 7" in reasons["images/empty.tif"] and "all zero" in reasons["images/empty.tif"]
    assert "image has 4 bands; the others have 3" == reasons["images/four_bands.tif"]
    assert result.rows == 4


def test_metadata_missing_a_column_is_named(ben_v1_metadata, tmp_path):
    broken = tmp_path / "metadata.parquet"
    pq.write_table(pq.read_table(ben_v1_metadata).drop(["recommended"]), broken)
    shutil.copy(ben_v1_metadata.with_suffix(".json"), broken.with_suffix(".json"))
    with pytest.raises(ValueError, match=r"metadata.parquet lacks the columns \['recommended'\].*run prepare"):
        build_dataset(DataConfig(metadata=str(broken)))


def test_empty_split_after_filters_and_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="no training patches are left after the filters.*original_split"):
        steps_per_epoch_for(0, PretrainConfig(limit=None))
    with pytest.raises(ValueError, match="larger than the 3 training patches"):
        steps_per_epoch_for(3, PretrainConfig(batch_size_per_gpu=4))


def test_warmup_longer_than_the_run_is_refused():
    from geodino.dino.schedules import schedules

    with pytest.raises(ValueError, match="--warmup_epochs 10 is longer than the run's --epochs 2: lower it"):
        schedules(PretrainConfig(epochs=2, warmup_epochs=10), steps_per_epoch=3, world_size=1)


def test_unknown_band_is_named():
    with pytest.raises(UnknownBandError, match="B13"):
        parse_bands("B04,B13")


def test_cluster_without_the_requested_gpus_fails_before_starting(ray_session):
    with pytest.raises(ValueError, match="needs 2 GPUs; the Ray cluster has 0.*--wait_for_gpus"):
        check_gpus(PretrainConfig(use_gpu=True, num_workers=2))
    check_gpus(PretrainConfig(use_gpu=True, num_workers=2, wait_for_gpus=True))  # autoscaling: Ray waits


def test_card_missing_next_to_the_metadata_is_named(ben_v1_metadata, tmp_path):
    lonely = tmp_path / "metadata.parquet"
    shutil.copy(ben_v1_metadata, lonely)
    with pytest.raises(FileNotFoundError, match="metadata.json: the card that prepare writes"):
        build_dataset(DataConfig(metadata=str(lonely)))
    assert json.loads(ben_v1_metadata.with_suffix(".json").read_text())["rows"] == 6
