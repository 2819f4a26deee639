"""The Ray Data pipeline on real patches: pixels must equal a direct rasterio/LMDB read."""

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import torch.nn.functional as F
from conftest import BEN_V1_EXAMPLE, BEN_V2, EUROSAT

from geodino.archive.bands import S2_BANDS
from geodino.archive.card import load_card
from geodino.archive.labels import BEN19_CLASSES
from geodino.archive.prepare import PrepareConfig, prepare
from geodino.data.config import DataConfig, dataset_size
from geodino.data.ray_data import build_dataset


def rows_by_name(dataset):
    rows = {}
    for batch in dataset.iter_batches(batch_size=8):
        for i, name in enumerate(batch["name"]):
            rows[name] = {key: batch[key][i] for key in ("image", "labels")}
    return rows


def direct_read(name, band):
    with rasterio.open(BEN_V1_EXAMPLE / name / f"{name}_{band}.tif") as src:
        return src.read(1).astype(np.float32)


def test_rgb_pixels_and_labels_match_direct_reads(ray_session, ben_v1_metadata):
    config = DataConfig(metadata=str(ben_v1_metadata), split=None, bands="rgb")
    rows = rows_by_name(build_dataset(config))
    assert len(rows) == dataset_size(config) == 5  # the snowy patch is not recommended
    meta = pd.read_parquet(ben_v1_metadata).set_index("name")
    for name, row in rows.items():
        assert row["image"].shape == (3, 120, 120) and row["image"].dtype == np.float32
        expected = np.stack([direct_read(name, b) for b in ("B04", "B03", "B02")])
        np.testing.assert_allclose(row["image"], np.clip(expected / 2750.0, 0, 1), rtol=1e-6)
        assert [BEN19_CLASSES[i] for i in row["labels"].nonzero()[0]] == list(meta.loc[name, "labels"])


def test_twelve_bands_on_the_10m_grid(ray_session, ben_v1_metadata):
    rows = rows_by_name(build_dataset(DataConfig(metadata=str(ben_v1_metadata), split="train", bands="all",
                                                 normalize="stats")))
    assert len(rows) == 4
    name = "S2A_MSIL2A_20170617T113321_36_85"
    image = rows[name]["image"]
    assert image.shape == (12, 120, 120)
    import json

    stats = json.loads(ben_v1_metadata.with_suffix(".json").read_text())["band_stats"]
    mean, std = np.array(stats["mean"])[:, None, None], np.array(stats["std"])[:, None, None]
    raw = image * std + mean
    b08 = S2_BANDS.index("B08")
    np.testing.assert_allclose(raw[b08], direct_read(name, "B08"), rtol=1e-4, atol=0.05)
    for band in ("B05", "B01"):  # 20 m and 60 m bands: bilinear upsampling of the native grid
        native = torch.from_numpy(direct_read(name, band))[None, None]
        expected = F.interpolate(native, size=(120, 120), mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(raw[S2_BANDS.index(band)], expected, rtol=1e-4, atol=0.05)
        assert abs(raw[S2_BANDS.index(band)].mean() - native.mean().item()) < 0.02 * native.mean().item()


def test_reben_lmdb_stream_matches_safetensors(ray_session, tmp_path):
    from safetensors.numpy import load

    from geodino.archive.pixels import open_lmdb

    result = prepare(PrepareConfig(archive=str(BEN_V2), out=str(tmp_path / "v2.parquet"), workers=1))
    rows = rows_by_name(build_dataset(DataConfig(metadata=result.metadata_path, split="validation", bands="B08,B04")))
    assert len(rows) == 6
    env = open_lmdb(str(BEN_V2 / "BigEarthNet-V2-LMDB"))  # an LMDB opens once per process
    with env.begin() as txn:
        for name, row in rows.items():
            arrays = load(txn.get(name.encode()))
            expected = np.stack([arrays["B08"], arrays["B04"]]).astype(np.float32)
            np.testing.assert_allclose(row["image"], np.clip(expected / 2750.0, 0, 1), rtol=1e-6)


def test_user_jpegs_stream_as_rgb(ray_session, tmp_path):
    table = pd.read_csv(EUROSAT / "labels.csv").groupby("label").head(2)
    table.to_csv(tmp_path / "t.csv", index=False)
    result = prepare(PrepareConfig(archive=str(tmp_path / "t.csv"), out=str(tmp_path / "m.parquet"),
                                   data_dir=str(EUROSAT), workers=1))
    assert load_card(result.metadata_path)["rgb"] is True  # JPEGs are read as RGB: colour augmentations may run
    rows = rows_by_name(build_dataset(DataConfig(metadata=result.metadata_path, split=None)))
    assert len(rows) == 20
    for row in rows.values():
        assert row["image"].shape == (3, 64, 64) and row["labels"].sum() == 1
        assert 0 <= row["image"].min() and row["image"].max() <= 1


def test_bands_grow_onto_the_10m_grid_as_before_and_larger_images_shrink_without_aliasing():
    """to_grid grew a case: a user's image larger than its table's size shrinks with antialiasing. Upsampling a
    20 m band stays plain bilinear, value for value: with antialiasing there too it moved by 1e-7, and the demo's
    run (loss 6.4878 -> 5.7268, k-NN AP 0.790) came out 5.7276 and 0.789."""
    from geodino.archive.pixels import to_grid

    band = np.random.default_rng(0).uniform(0, 3000, (60, 60)).astype(np.float32)
    plain = F.interpolate(torch.from_numpy(band)[None, None], size=(120, 120), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(to_grid(band, 120), plain[0, 0].numpy())
    stripes = np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (3, 64, 16))  # a bright column in 4: mean 0.25
    shrunk = to_grid(stripes, (16, 16))  # plain bilinear samples between the dark columns: 0 everywhere
    assert shrunk.shape == (3, 16, 16) and np.allclose(shrunk, 0.25, atol=0.08)  # averaged, not sampled


def test_a_file_gone_mid_run_is_one_line_not_ray_datas_traceback(ray_session, tmp_path, capfd):
    """Ray Data logged a failed read with 170 lines of traceback, calling it an error "in Ray Data or Ray Core
    internal code", and appended its retry advice to the message: the script's one line came last of 172. The
    error is geodino's own (it names the file), so Ray Data's log of it is left out and the line stays one."""
    import shutil
    import time

    from geodino.archive.pixels import PatchReadError
    from geodino.cli import run_entry

    table = pd.read_csv(EUROSAT / "labels.csv").groupby("label").head(2)
    for path in table["path"][1:]:  # the first image stays: the check before Ray starts passes
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EUROSAT / path, tmp_path / path)
    (tmp_path / table["path"].iloc[-1]).unlink()  # gone since prepare
    table.to_csv(tmp_path / "t.csv", index=False)
    metadata = prepare(PrepareConfig(archive=str(tmp_path / "t.csv"), out=str(tmp_path / "m.parquet"),
                                     data_dir=str(EUROSAT), workers=1)).metadata_path
    capfd.readouterr()
    with pytest.raises(PatchReadError, match="cannot read image") as raised:
        rows_by_name(build_dataset(DataConfig(metadata=metadata, data_dir=str(tmp_path), split=None)))

    def main(argv):
        raise raised.value  # as the script's main sees it, Ray Data's advice appended to its message

    assert run_entry("stream.py", main, []) == 2
    time.sleep(2)  # Ray Data's executor thread logs on its own time
    printed = capfd.readouterr().err
    assert "Traceback" not in printed and "internal code" not in printed and "Failed to apply" not in printed, printed
    said = [line for line in printed.splitlines() if line.startswith("stream.py: ")]
    assert len(said) == 1 and said[0].startswith("stream.py: error: ") and "cannot read image" in said[0]


@pytest.mark.timeout(300)
def test_actor_cpus_leave_ray_data_a_whole_cpu():
    from geodino.ray_cluster import actor_cpus

    assert actor_cpus(1, cluster_cpus=1) == 0.0  # a 1-CPU host: the reading tasks (1 CPU each) must still run
    assert actor_cpus(1, cluster_cpus=2) == 1.0 and actor_cpus(2, cluster_cpus=2) == 0.5
    assert actor_cpus(4, cluster_cpus=64) == 1.0


def test_worker_cpus_derive_from_the_cluster():
    from geodino.ray_cluster import worker_cpus

    assert worker_cpus(1, cluster_cpus=2) == 1.0
    # 2 workers x 1 CPU on 2 CPUs left Ray Data none and hung forever; test_pretrain's two-worker run reads
    # uncached (--cache_data off) at these 0.5 CPUs each
    assert worker_cpus(2, cluster_cpus=2) == 0.5
    assert worker_cpus(4, cluster_cpus=2) == 0.25
    assert worker_cpus(8, cluster_cpus=64, use_gpu=True) == 2.0
    # a split cached in the object store needs little of Ray Data: the workers take the rest of the cores
    assert worker_cpus(1, cluster_cpus=2, data_cached=True) == 1.75
    assert worker_cpus(2, cluster_cpus=2, data_cached=True) == 0.875
    with pytest.raises(ValueError, match="do not fit"):
        worker_cpus(20, cluster_cpus=2)
