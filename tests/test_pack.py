"""The packed format: real BigEarthNet GeoTIFFs and EuroSAT JPEGs into Parquet shards, read back by Ray Data
and by the torchrun launcher's dataset, resumed after a failure, refused when settings or bands differ."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import BEN_V1_LISTS, EUROSAT

from geodino.archive.card import load_card
from geodino.archive.pack import PackConfig, PackMismatchError, pack
from geodino.archive.packed import MANIFEST
from geodino.archive.pixels import PatchReadError, read_patch
from geodino.archive.prepare import PrepareConfig, prepare
from geodino.data.config import DataConfig
from geodino.data.indexed import PatchDataset
from geodino.data.normalize import Normalizer
from geodino.data.ray_data import build_dataset
from geodino.dino.config import PretrainConfig
from geodino.launch.inputs import input_spec
from geodino.launch.ray_train import ingest_options, training_dataset

REPO = Path(__file__).resolve().parents[1]


def own_metadata(metadata: Path, folder: Path) -> str:
    """A private copy of prepared metadata: packing records the pack in the card, shared fixtures must not see it."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".parquet", ".json"):
        shutil.copy(metadata.with_suffix(suffix), folder / f"metadata{suffix}")
    return str(folder / "metadata.parquet")


def all_rows(metadata: str, data_dir: str | None = None, bands: str = "rgb") -> dict:
    config = DataConfig(metadata=metadata, data_dir=data_dir, split=None, recommended_only=False, bands=bands)
    batch = build_dataset(config).take_batch(100)
    order = np.argsort(batch["name"])
    return {key: value[order] for key, value in batch.items()}


def test_packed_bigearthnet_streams_the_same_tensors_as_the_geotiffs(ray_session, ben_v1_metadata, tmp_path):
    metadata = own_metadata(ben_v1_metadata, tmp_path / "meta")
    from_files = all_rows(metadata)  # before packing: the card points at the GeoTIFFs
    result = pack(PackConfig(metadata=metadata, out_dir=str(tmp_path / "pack"), bands="B04,B03,B02,B08",
                             shard_size=4, workers=2))
    assert (result.shards, result.written, result.rows) == (2, 2, 6)
    manifest = json.loads((tmp_path / "pack" / MANIFEST).read_text())
    assert manifest["complete"] and manifest["dtype"] == "uint16" and manifest["shape"] == [4, 120, 120]
    assert load_card(metadata)["packed"] == str(tmp_path / "pack")

    # Raw values survive exactly (10 m bands are not resampled), in the metadata's order.
    shard = pq.read_table(tmp_path / "pack" / "shard-00000.parquet").to_pylist()
    card = load_card(metadata)
    first = shard[0]
    raw = np.frombuffer(first["pixels"], "<u2").reshape(4, 120, 120)
    row = pq.read_table(metadata).to_pandas().iloc[0]
    assert first["name"] == row["name"]
    np.testing.assert_array_equal(raw, read_patch(row["format"], card["data_root"], row["path"], row["name"],
                                                  ("B04", "B03", "B02", "B08")))

    # The card now names the pack, so the same DataConfig reads shards: same names, labels and images.
    from_pack = all_rows(metadata)
    assert list(from_pack["name"]) == list(from_files["name"])
    np.testing.assert_array_equal(from_pack["labels"], from_files["labels"])
    np.testing.assert_allclose(from_pack["image"], from_files["image"], atol=1e-6)
    # --data_dir still picks the GeoTIFFs, and bands the pack lacks are refused by name.
    np.testing.assert_array_equal(all_rows(metadata, data_dir=card["data_root"])["image"], from_files["image"])
    with pytest.raises(ValueError, match=r"packs the bands .*not \['B11'\].*--data_dir"):
        build_dataset(DataConfig(metadata=metadata, bands="B04,B11"))

    # Training reads a pack raw (uint16, half of float32's bytes) and normalises on its device: the same tensors.
    for normalize in ("max", "stats"):
        config = DataConfig(metadata=metadata, split=None, recommended_only=False, normalize=normalize)
        decoded, raw = (build_dataset(config, raw=raw).take_batch(6) for raw in (False, True))
        decoded, raw = (torch.from_numpy(batch["image"][np.argsort(batch["name"])]) for batch in (decoded, raw))
        assert raw.dtype == torch.uint16 and decoded.dtype == torch.float32
        inputs = input_spec(PretrainConfig(metadata_dir=metadata, normalize=normalize))
        assert torch.equal(Normalizer(*inputs.normalizer(), torch.device("cpu"))(raw), decoded), normalize


def test_training_reads_every_patch_once_per_epoch_in_a_new_order(ray_session, ben_v1_metadata, tmp_path):
    """Ray Train's dataset over a pack of six one-patch shards, through streaming_split with Ray Train's ingest
    options as a worker gets it: each epoch every patch once, the order new every epoch and the same again in
    a second run with the same seed (six read tasks finish in any order: --preserve_order); uncached, the
    shards are shuffled before reading (a shuffle of decoded blocks would read the whole split first)."""
    metadata = own_metadata(ben_v1_metadata, tmp_path / "meta")
    pack(PackConfig(metadata=metadata, out_dir=str(tmp_path / "pack"), bands="rgb", shard_size=1, workers=1))
    everything = DataConfig(metadata=metadata, split=None, recommended_only=False)

    def epoch_orders(cached: bool) -> list[list[bytes]]:
        dataset = training_dataset(everything, raw=True, cached=cached, seed=0)
        if not cached:  # the plan, last step first: the shuffle lies under the reading
            assert str(dataset).splitlines()[1:3] == ["+- MapBatches(read_shards)", "   +- RandomizeBlockOrder"]
        dataset.context.execution_options = ingest_options(preserve_order=True)  # as Ray Train's DataConfig
        worker_shard, = dataset.streaming_split(1, equal=True)
        return [[row["image"].tobytes() for row in worker_shard.iter_rows()] for _ in range(2)]

    for cached in (False, True):
        orders = epoch_orders(cached)
        assert all(sorted(order) == sorted(orders[0]) and len(set(order)) == 6 for order in orders), cached
        assert len({tuple(order) for order in orders}) > 1, f"the same order every epoch (cached={cached})"
        assert epoch_orders(cached) == orders, f"another run, another order (cached={cached})"
    train = training_dataset(DataConfig(metadata=metadata), raw=True, cached=False, seed=0)  # filters apply per shard
    assert train.count() == len(PatchDataset(DataConfig(metadata=metadata))) < 6

    (tmp_path / "pack" / "shard-00003.parquet").unlink()
    with pytest.raises(ValueError, match=r"shard-00003.parquet: this shard of the pack is missing \(1 of 6.*pack again"):
        build_dataset(everything)


def test_torchrun_dataset_reads_the_pack_without_ray(ben_v1_metadata, tmp_path):
    metadata = own_metadata(ben_v1_metadata, tmp_path / "meta")
    data_root = load_card(metadata)["data_root"]
    from_files = PatchDataset(DataConfig(metadata=metadata, split=None, recommended_only=False))
    pack(PackConfig(metadata=metadata, out_dir=str(tmp_path / "pack"), bands="rgb", shard_size=4, workers=1))
    from_pack = PatchDataset(DataConfig(metadata=metadata, split=None, recommended_only=False))
    assert from_pack.packed is not None and from_pack.packed.dtype == np.dtype("<u2")
    assert len(from_pack) == len(from_files) == 6
    for index in range(6):
        np.testing.assert_allclose(from_pack[index]["image"], from_files[index]["image"], atol=1e-6)
    train = PatchDataset(DataConfig(metadata=metadata))  # split and recommended filters apply to packs too
    assert len(train) == len(PatchDataset(DataConfig(metadata=metadata, data_dir=data_root)))


def test_a_failed_pack_keeps_finished_shards_and_continues(ben_v1_copy, tmp_path):
    metadata = str(tmp_path / "metadata.parquet")
    prepare(PrepareConfig(archive=str(ben_v1_copy), out=metadata, splits_dir=str(BEN_V1_LISTS), workers=1))
    names = pq.read_table(metadata, columns=["name"]).column("name").to_pylist()
    broken = ben_v1_copy / names[5] / f"{names[5]}_B03.tif"  # the last patch: in the second shard of 4
    original = broken.read_bytes()
    broken.write_bytes(original[:500])  # what a half-finished copy leaves
    out = tmp_path / "pack"
    config = PackConfig(metadata=metadata, out_dir=str(out), bands="rgb", shard_size=4, workers=1)
    with pytest.raises(PatchReadError, match=f"{broken.name}: cannot read GeoTIFF"):
        pack(config)
    assert sorted(os.listdir(out)) == [MANIFEST, "shard-00000.parquet"]  # no partial shard under a final name
    assert not json.loads((out / MANIFEST).read_text())["complete"]
    with pytest.raises(ValueError, match="packing has not finished"):
        build_dataset(DataConfig(metadata=metadata, data_dir=str(out)))
    finished = (out / "shard-00000.parquet").stat().st_mtime_ns

    broken.write_bytes(original)
    result = pack(config)
    assert (result.written, result.shards) == (1, 2)  # only the missing shard was written
    assert (out / "shard-00000.parquet").stat().st_mtime_ns == finished
    assert pq.read_table(out / "shard-00001.parquet").num_rows == 2

    with pytest.raises(PackMismatchError, match=r"bands: pack has \['B04', 'B03', 'B02'\], now \['B08'\]"):
        pack(PackConfig(metadata=metadata, out_dir=str(out), bands="B08", shard_size=4, workers=1))


def test_prepare_cli_packs_eurosat_jpegs_as_uint8(tmp_path):
    table = tmp_path / "labels.csv"
    rows = (EUROSAT / "labels.csv").read_text().splitlines()
    table.write_text("\n".join(rows[:1] + rows[1:40]) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "TQDM_DISABLE": "1"}
    command = [sys.executable, str(REPO / "experiments" / "prepare.py"), str(table), "--data_dir", str(EUROSAT),
               "--out", str(tmp_path / "metadata.parquet"), "--workers", "1", "--pack", str(tmp_path / "pack"),
               "--shard_size", "16"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "packed 39 patches into 3 shards" in done.stdout
    manifest = json.loads((tmp_path / "pack" / MANIFEST).read_text())
    assert (manifest["dtype"], manifest["shape"], manifest["bands"]) == ("uint8", [3, 64, 64],
                                                                          ["band1", "band2", "band3"])
    again = subprocess.run(command[:-4] + ["--pack", str(tmp_path / "pack"), "--pack_only", "--shard_size", "16"],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert "0 written now, 3 already there" in again.stdout
    other = subprocess.run(command[:-1] + ["8", "--pack_only"], capture_output=True, text=True, env=env)
    assert other.returncode == 2 and "shard_size: pack has 16, now 8" in other.stderr
