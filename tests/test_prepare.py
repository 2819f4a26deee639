import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BEN_V1_EXAMPLE, BEN_V2, EUROSAT, REPO

from geodino.archive.prepare import PrepareConfig, prepare
from geodino.archive.splits import SPLITS, hash_split
from geodino.archive.tile_labels import block_split, read_legend

KNOWN = {
    "S2A_MSIL2A_20170613T101031_87_48": (
        "test", ["Arable land", "Land principally occupied by agriculture, with significant areas of natural vegetation"]),
    "S2A_MSIL2A_20170617T113321_36_85": ("train", ["Arable land", "Pastures"]),
    "S2A_MSIL2A_20170617T113321_4_55": ("train", ["Pastures"]),
    "S2B_MSIL2A_20170924T93020_69_24": (
        "train", ["Coniferous forest", "Mixed forest", "Transitional woodland, shrub", "Inland wetlands", "Inland waters"]),
}


def test_official_lists_give_six_correct_rows(ben_v1_metadata):
    frame = pd.read_parquet(ben_v1_metadata).set_index("name")
    assert len(frame) == 6
    for name, (split, labels) in KNOWN.items():
        assert frame.loc[name, "original_split"] == split
        assert list(frame.loc[name, "labels"]) == labels
    snowy = frame.loc["S2B_MSIL2A_20180204T94161_57_38"]
    assert snowy["snow"] and not snowy["recommended"] and pd.isna(snowy["original_split"])
    assert list(snowy["labels_43"]) == ["Non-irrigated arable land", "Coniferous forest", "Mixed forest"]
    assert frame["recommended"].sum() == 5
    assert frame.loc["S2A_MSIL2A_20170617T113321_4_55", "acquisition_date"] == "2017-06-17 11:33:21"
    card = json.loads(ben_v1_metadata.with_suffix(".json").read_text())
    assert card["split_source"] == "official lists" and len(card["classes"]) == 19
    # Band statistics: mean and (population) std per band over the recommended training patches, each band
    # upsampled to the 10 m grid as the pipeline reads it; computed here independently with rasterio.
    import rasterio
    import torch

    stats = card["band_stats"]
    train = frame[frame["recommended"] & (frame["original_split"] == "train")].index
    assert stats["patches"] == len(train) == 4
    for band, mean, std in zip(stats["bands"], stats["mean"], stats["std"]):
        planes = []
        for name in train:
            with rasterio.open(BEN_V1_EXAMPLE / name / f"{name}_{band}.tif") as src:
                plane = torch.from_numpy(src.read(1).astype(np.float32))[None, None]
            planes.append(torch.nn.functional.interpolate(plane, size=(120, 120), mode="bilinear",
                                                          align_corners=False)[0, 0].double().numpy())
        values = np.concatenate([p.ravel() for p in planes])
        assert mean == pytest.approx(values.mean(), abs=1e-3), band
        assert std == pytest.approx(values.std(), abs=1e-3), band


def test_hash_split_without_lists_is_deterministic(tmp_path):
    out = tmp_path / "m.parquet"
    prepare(PrepareConfig(archive=str(BEN_V1_EXAMPLE), out=str(out), workers=1, verify="header"))
    frame = pd.read_parquet(out)
    assert set(frame["original_split"]) <= set(SPLITS)
    assert all(frame["original_split"] == frame["name"].map(hash_split))
    assert frame["recommended"].all()  # no exclusion lists: nothing is known to be snowy
    counts = pd.Series([hash_split(f"patch_{i}") for i in range(20000)]).value_counts(normalize=True)
    assert abs(counts["train"] - 0.52) < 0.02 and abs(counts["test"] - 0.24) < 0.02


def _break(archive, name, band=None):
    return archive / name / (f"{name}_{band}.tif" if band else f"{name}_labels_metadata.json")


def test_every_bad_patch_is_rejected_with_its_reason_and_good_rows_survive(ben_v1_copy, tmp_path):
    names = sorted(p.name for p in ben_v1_copy.iterdir())
    _break(ben_v1_copy, names[0], "B03").unlink()  # missing band
    truncated = _break(ben_v1_copy, names[1], "B02")
    truncated.write_bytes(truncated.read_bytes()[:5000])
    _break(ben_v1_copy, names[2]).write_text(json.dumps({"labels": ["Moon craters"]}))
    _break(ben_v1_copy, names[3]).write_text("{not json")
    wrong_size = _break(ben_v1_copy, names[4], "B05")  # a 20 m band replaced by a 10 m one
    wrong_size.write_bytes(_break(ben_v1_copy, names[4], "B04").read_bytes())
    out = tmp_path / "out" / "metadata.parquet"
    result = prepare(PrepareConfig(archive=str(ben_v1_copy), out=str(out), workers=1))
    assert result.rows == 1 and result.rejected == 5
    reasons = pd.read_csv(result.rejects_path).set_index("name")["reason"]
    assert "missing band file" in reasons[names[0]] and "B03" in reasons[names[0]]
    assert "truncated" in reasons[names[1]] and "B02" in reasons[names[1]]
    assert "'Moon craters'" in reasons[names[2]]
    assert "not valid JSON" in reasons[names[3]]
    assert "B05" in reasons[names[4]] and "expected 60x60" in reasons[names[4]]
    assert pd.read_parquet(out)["name"].tolist() == [names[5]]


def test_labels_missing_and_split_list_naming_unknown_patches(ben_v1_copy, tmp_path):
    names = sorted(p.name for p in ben_v1_copy.iterdir())
    _break(ben_v1_copy, names[0]).unlink()
    _break(ben_v1_copy, names[1]).write_text(json.dumps({"coordinates": {}}))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.csv").write_text("\n".join(names[2:] + ["S2X_NOT_IN_ARCHIVE_1_1"]) + "\n")
    result = prepare(PrepareConfig(archive=str(ben_v1_copy), out=str(tmp_path / "m.parquet"),
                                   splits_dir=str(splits), workers=1, verify="header"))
    reasons = pd.read_csv(result.rejects_path).set_index("name")["reason"]
    assert "label file" in reasons[names[0]] and "missing" in reasons[names[0]]
    assert "no 'labels' list" in reasons[names[1]]
    assert any("S2X_NOT_IN_ARCHIVE_1_1" in w and "1 patches" in w for w in result.warnings)


def test_strict_exit_code_and_earlier_output_kept_on_failure(ben_v1_copy, tmp_path):
    out = tmp_path / "metadata.parquet"
    script = [sys.executable, str(REPO / "experiments" / "prepare.py")]
    ok = subprocess.run(script + [str(ben_v1_copy), "--out", str(out), "--workers", "1", "--strict"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    before = out.read_bytes()
    for folder in ben_v1_copy.iterdir():  # now every patch is broken
        (folder / f"{folder.name}_labels_metadata.json").unlink()
    failed = subprocess.run(script + [str(ben_v1_copy), "--out", str(out), "--workers", "1"],
                            capture_output=True, text=True)
    assert failed.returncode == 2 and "no usable patch" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert out.read_bytes() == before


def test_parallel_workers_give_the_same_rows(tmp_path):
    one = prepare(PrepareConfig(archive=str(BEN_V1_EXAMPLE), out=str(tmp_path / "a.parquet"), workers=1))
    two = prepare(PrepareConfig(archive=str(BEN_V1_EXAMPLE), out=str(tmp_path / "b.parquet"), workers=2))
    pd.testing.assert_frame_equal(pd.read_parquet(one.metadata_path), pd.read_parquet(two.metadata_path))


def test_reben_v2_metadata_and_lmdb(tmp_path):
    result = prepare(PrepareConfig(archive=str(BEN_V2), out=str(tmp_path / "v2.parquet"), workers=1))
    frame = pd.read_parquet(result.metadata_path)
    assert result.rows == 24 and result.rejected == 0
    assert frame["original_split"].value_counts().to_dict() == {"train": 8, "validation": 8, "test": 8}
    assert (frame["snow"] | frame["cloud_or_shadow"]).sum() == 6
    assert frame["recommended"].sum() == 18
    source = pd.concat([pd.read_parquet(BEN_V2 / "metadata.parquet"),
                        pd.read_parquet(BEN_V2 / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")])
    assert frame.set_index("name")["country"].to_dict() == source.set_index("patch_id")["country"].to_dict()


def test_reben_as_its_official_download_unpacks_reads_the_pixels_of_its_lmdb(tmp_path):
    """BigEarthNet v2.0 is downloaded as GeoTIFFs (BigEarthNet-S2.tar.zst: TILE/PATCH/PATCH_B02.tif) plus
    metadata.parquet; prepare read reBEN only from an LMDB, which only ConfigILM's encoder makes ('no LMDB found
    next to metadata.parquet'). The download's layout is written here from the LMDB's real patches, one GeoTIFF
    per band: prepared, every patch reads the same pixels as from the LMDB; a patch folder missing is rejected
    by its band file."""
    import rasterio
    from safetensors.numpy import load

    from geodino.archive.pixels import open_lmdb, read_patch
    from geodino.archive.reben import find_lmdb, patch_folder

    lmdb_path = find_lmdb(str(BEN_V2))
    table = pd.concat([pd.read_parquet(BEN_V2 / "metadata.parquet"),
                       pd.read_parquet(BEN_V2 / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")])
    archive = tmp_path / "reben"
    with open_lmdb(lmdb_path).begin() as txn:
        for patch_id in table["patch_id"][1:]:  # the first patch's folder is missing
            folder = archive / "BigEarthNet-S2" / patch_folder(patch_id)
            folder.mkdir(parents=True)
            for band, pixels in load(txn.get(patch_id.encode())).items():
                with rasterio.open(folder / f"{patch_id}_{band}.tif", "w", driver="GTiff", width=pixels.shape[1],
                                   height=pixels.shape[0], count=1, dtype=pixels.dtype) as dst:
                    dst.write(pixels[None])
    for name in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet"):
        (archive / name).write_bytes((BEN_V2 / name).read_bytes())
    result = prepare(PrepareConfig(archive=str(archive), out=str(tmp_path / "m.parquet"), workers=1))
    first = table["patch_id"].iloc[0]
    assert (result.rows, pd.read_csv(result.rejects_path)["reason"].tolist()) == (23, [f"missing band file {first}_B01.tif"])
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["data_root"] == str(archive / "BigEarthNet-S2") and card["format"] == "ben_v2"
    frame = pd.read_parquet(tmp_path / "m.parquet")
    assert frame["original_split"].notna().all() and frame["recommended"].sum() == 17
    bands = ("B04", "B03", "B02", "B08", "B11")
    for row in frame.itertuples():
        np.testing.assert_array_equal(read_patch(row.format, card["data_root"], row.path, row.name, bands),
                                      read_patch("ben_v2", lmdb_path, row.name, row.name, bands))
    (archive / "BigEarthNet-S2").rename(tmp_path / "elsewhere")  # metadata downloaded apart: --data_dir
    with pytest.raises(FileNotFoundError, match="neither BigEarthNet v2's GeoTIFF folders"):
        prepare(PrepareConfig(archive=str(archive), out=str(tmp_path / "n.parquet"), workers=1))
    moved = prepare(PrepareConfig(archive=str(archive), out=str(tmp_path / "n.parquet"), workers=1,
                                  data_dir=str(tmp_path / "elsewhere")))
    assert moved.rows == 23


def test_user_image_table_with_bad_rows(tmp_path):
    table = pd.read_csv(EUROSAT / "labels.csv").groupby("label").head(4)
    table.loc[table.index[::2], "path"] = table["path"].str.replace("/", "\\")  # written on Windows: still read
    bad = pd.DataFrame({"path": ["../../etc/passwd", "images/Forest/does_not_exist.jpg"],
                        "label": ["Forest", "Forest"], "split": ["train", "train"]})
    csv = tmp_path / "mine.csv"
    pd.concat([table, bad]).to_csv(csv, index=False)
    result = prepare(PrepareConfig(archive=str(csv), out=str(tmp_path / "m.parquet"), data_dir=str(EUROSAT), workers=1))
    assert result.rows == 40 and result.rejected == 2
    reasons = pd.read_csv(result.rejects_path)["reason"].tolist()
    assert any("leaves the data folder" in r and "row 42" in r for r in reasons)
    assert any("does_not_exist.jpg" in r for r in reasons)
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["task"] == "single_label" and len(card["classes"]) == 10 and card["pixel_max"] == 255.0
    assert card["bands"] == ["band1", "band2", "band3"]
    # files that are not images, and a row without a path, each named for what it is
    import shutil

    from geodino.archive.prepare import summarise

    for index, source in enumerate(sorted((EUROSAT / "images" / "Forest").glob("*.jpg"))[:3]):
        shutil.copy(source, tmp_path / f"forest{index}.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a picture")
    pd.DataFrame({"path": ["forest0.jpg", "forest1.jpg", "forest2.jpg", "empty.jpg", "notes.jpg", ""],
                  "label": "Forest"}).to_csv(tmp_path / "odd.csv", index=False)
    odd = prepare(PrepareConfig(archive=str(tmp_path / "odd.csv"), out=str(tmp_path / "odd.parquet"), workers=1))
    listed = summarise(odd).splitlines()[-3:]
    assert listed == [f"    empty.jpg: row 5: {tmp_path}/empty.jpg: the file is empty (0 bytes)",
                      f"    notes.jpg: row 6: {tmp_path}/notes.jpg: not an image geodino reads (GeoTIFF, JPEG 2000, "
                      "or a JPEG, PNG or other format PIL opens)",
                      "    : row 7: the path cell is empty"], listed


def test_a_table_of_absolute_paths_is_rooted_where_its_images_are(tmp_path):
    """Before, every absolute path was rejected as 'leaves the data folder' (a table written by a script usually
    holds absolute paths). Now metadata keeps them relative to the folder that holds them all (relative paths
    still start at the table's folder), or to --data_dir, outside which an absolute path is rejected by row."""
    import os
    import shutil

    from geodino.data.config import DataConfig
    from geodino.data.indexed import labelled_images

    images = [str(sorted((EUROSAT / "images" / label).glob("*.jpg"))[0]) for label in ("Forest", "River")]
    shutil.copy(sorted((EUROSAT / "images" / "SeaLake").glob("*.jpg"))[0], tmp_path / "mine.jpg")
    for name, mine in (("mixed", "mine.jpg"), ("absolute", str(tmp_path / "mine.jpg"))):
        pd.DataFrame({"path": [*images, mine], "label": ["Forest", "River", "Sea"]}).to_csv(tmp_path / f"{name}.csv",
                                                                                           index=False)
    result = prepare(PrepareConfig(archive=str(tmp_path / "mixed.csv"), out=str(tmp_path / "m.parquet"), workers=1))
    root = json.loads((tmp_path / "m.json").read_text())["data_root"]
    assert result.rows == 3 and root == os.path.commonpath([str(EUROSAT / "images"), str(tmp_path)])
    stored = pd.read_parquet(tmp_path / "m.parquet")["path"]
    assert sorted(os.path.join(root, path) for path in stored) == sorted([*images, str(tmp_path / "mine.jpg")])
    assert labelled_images(DataConfig(metadata=str(tmp_path / "m.parquet"), split=None))[0].shape == (3, 3, 64, 64)
    inside = prepare(PrepareConfig(archive=str(tmp_path / "absolute.csv"), out=str(tmp_path / "d.parquet"),
                                   data_dir=str(EUROSAT), workers=1))
    assert sorted(pd.read_parquet(tmp_path / "d.parquet")["path"]) == [os.path.relpath(p, EUROSAT) for p in images]
    assert pd.read_csv(inside.rejects_path)["reason"].tolist() == [
        f"row 4: path '{tmp_path / 'mine.jpg'}' is not inside --data_dir {EUROSAT}"]


def test_an_archive_unpacked_one_folder_too_deep_is_named(tmp_path):
    """BigEarthNet's tar unpacks into a folder of its own name; given the folder above, prepare read that one
    folder as a patch without labels ("no usable patch")."""
    import shutil

    shutil.copytree(BEN_V1_EXAMPLE, tmp_path / "downloads" / "BigEarthNet-v1.0", ignore=shutil.ignore_patterns("*.md"))
    with pytest.raises(ValueError, match=r"the patch folders are one level down, in .*downloads/BigEarthNet-v1.0; "
                                         r"give that folder"):
        prepare(PrepareConfig(archive=str(tmp_path / "downloads"), out=str(tmp_path / "m.parquet"), workers=1))
    assert not (tmp_path / "m.parquet").exists()


def test_a_folder_of_class_folders_is_prepared_as_a_table(tmp_path):
    """EuroSAT, UC Merced, RESISC45 and AID come as a folder per class (torchvision's ImageFolder), often split
    first. prepare read such a folder as a BigEarthNet archive: 'no usable patch (... Forest: label file
    Forest_labels_metadata.json missing ...)'. Now each image is a row, its class folder its label, with every
    check a table's rows get (a broken image rejected by its path); an image in no class folder has no label."""
    import shutil

    data = tmp_path / "data"
    sources = {label: sorted((EUROSAT / "images" / label).glob("*.jpg"))[:5] for label in ("Forest", "River")}
    for split_folder, chosen in (("train", slice(0, 3)), ("Val", slice(3, 4)), ("test", slice(4, 5))):
        for label, files in sources.items():
            (data / split_folder / label).mkdir(parents=True)
            for source in files[chosen]:
                shutil.copy(source, data / split_folder / label / source.name)
    (data / "train" / "Forest" / "2019").mkdir()
    shutil.copy(sorted((EUROSAT / "images" / "Forest").glob("*.jpg"))[9], data / "train" / "Forest" / "2019" / "a.jpg")
    (data / "train" / "River" / "Thumbs.db").write_bytes(b"\0" * 10)
    (data / "train" / "River" / "broken.jpg").write_text("not a picture")
    (data / "train" / ".ipynb_checkpoints").mkdir()
    shutil.copy(sources["River"][0], data / "train" / ".ipynb_checkpoints" / "copy.jpg")
    shutil.copy(sorted((EUROSAT / "images" / "SeaLake").glob("*.jpg"))[0], data / "train" / "loose.jpg")
    (data / "train" / "Unlabelled").mkdir()
    shutil.copy(sorted((EUROSAT / "images" / "SeaLake").glob("*.jpg"))[1], data / "train" / "Unlabelled" / "s.jpg")
    result = prepare(PrepareConfig(archive=str(data), out=str(tmp_path / "m.parquet"), workers=1))
    frame = pd.read_parquet(tmp_path / "m.parquet").set_index("path")
    assert result.rows == 13 and len(frame) == 13
    assert frame.loc["train/Forest/2019/a.jpg", "labels"].tolist() == ["Forest"]
    for unlabelled in ("train/loose.jpg", "train/Unlabelled/s.jpg"):  # for pretraining only
        assert frame.loc[unlabelled, "labels"].tolist() == []
    for path, row in frame.drop(["train/loose.jpg", "train/Unlabelled/s.jpg"]).iterrows():
        assert row["labels"].tolist() == [path.split("/")[1]]
        assert row["original_split"] == {"train": "train", "Val": "validation", "test": "test"}[path.split("/")[0]]
    assert pd.read_csv(result.rejects_path)["reason"].tolist() == [
        f"train/River/broken.jpg: {data}/train/River/broken.jpg: not an image geodino reads (GeoTIFF, JPEG 2000, "
        "or a JPEG, PNG or other format PIL opens)"]
    assert [warning.split(" (e.g. ")[0].split(":")[0] for warning in result.warnings] == [
        "left out 1 files that are not images by their name", "2 of 13 images have no label"]
    card = json.loads((tmp_path / "m.json").read_text())
    assert (card["classes"], card["task"], card["rgb"], card["data_root"]) == (["Forest", "River"], "single_label",
                                                                               True, str(data))
    # The folder above the class folders, as EuroSAT's download holds them beside a table: both are named.
    for folder in ("Val", "test", "train/River", "train/Unlabelled"):
        shutil.rmtree(data / folder)
    (data / "train" / "loose.jpg").unlink()
    (data / "train").rename(data / "images")
    (data / "labels.csv").write_text("path,label\nimages/Forest/2019/a.jpg,Forest\n")
    with pytest.raises(ValueError, match=rf"the class folders are one level down, in {data}/images; give that "
                                         rf"folder, or the table {data}/labels.csv"):
        prepare(PrepareConfig(archive=str(data), out=str(tmp_path / "n.parquet"), workers=1))


def test_images_without_labels_are_for_pretraining_only(ray_session, tmp_path):
    """Self-supervised pretraining needs no labels, yet a row without one was rejected ('no label'), a table without
    a label column refused, and a folder of tiles without class folders read as a BigEarthNet archive. Now such
    images are pretraining data: in the training split unless one is named, in every pretraining pipeline (Ray
    Data and a pack), and left out of what probes and the k-NN monitor read, which refuse data with no labels
    at all; predict labels them with a probe fitted elsewhere."""
    import shutil

    import torch

    from geodino.archive.pack import PackConfig, pack
    from geodino.data.config import DataConfig, dataset_size
    from geodino.data.ray_data import build_dataset, tensor_columns
    from geodino.dino.config import PretrainConfig
    from geodino.errors import ConfigError
    from geodino.launch.inputs import knn_monitor
    from geodino.transfer.linear_probe import LinearProbeConfig, run_linear_probe
    from geodino.transfer.predict import PredictConfig, resolved

    table = pd.read_csv(EUROSAT / "labels.csv").groupby("label").head(6).reset_index(drop=True)
    unlabelled = table.index % 3 == 0  # 20 of 60
    table.loc[unlabelled, "label"] = ""
    table.loc[unlabelled & (table.index % 2 == 0), "split"] = ""  # 10 without a split: train
    table.to_csv(tmp_path / "mixed.csv", index=False)
    mixed = prepare(PrepareConfig(archive=str(tmp_path / "mixed.csv"), out=str(tmp_path / "mixed.parquet"),
                                  data_dir=str(EUROSAT), pack=str(tmp_path / "pack"), workers=1))
    assert (mixed.rows, mixed.rejected) == (60, 0)
    assert mixed.warnings == ["20 of 60 images have no label: pretraining uses them (split train unless the table "
                              "names one), probes leave them out"]
    frame = pd.read_parquet(tmp_path / "mixed.parquet")
    without = frame["labels"].map(len) == 0
    assert without.sum() == 20 and frame["recommended"].all()
    assert (frame.loc[without, "original_split"] == "train").sum() == 10 + (table.loc[unlabelled, "split"] == "train").sum()
    card = json.loads((tmp_path / "mixed.json").read_text())
    assert len(card["classes"]) == 10 and card["split_source"] == ("the archive's own split column; train for images "
                                                                   "without labels")
    pack(PackConfig(metadata=str(tmp_path / "mixed.parquet"), out_dir=str(tmp_path / "pack"), workers=1))
    expected = {False: int((frame["original_split"] == "train").sum()),
                True: int(((frame["original_split"] == "train") & ~without).sum())}
    for data_dir in (str(EUROSAT), str(tmp_path / "pack")):  # pixels from the files, then from the pack
        for labelled_only, count in expected.items():
            data = DataConfig(metadata=str(tmp_path / "mixed.parquet"), data_dir=data_dir, labelled_only=labelled_only)
            assert dataset_size(data) == count
            labels = [batch["labels"] for batch in tensor_columns(build_dataset(data)).iter_torch_batches(batch_size=64)]
            assert sum(map(len, labels)) == count
            assert torch.cat(labels).sum(1).min() == (1 if labelled_only else 0)
    monitor = knn_monitor(PretrainConfig(metadata_dir=str(tmp_path / "mixed.parquet"), knn_every=1, knn_samples=20))
    assert monitor.sets.bank_labels.sum(1).min() == 1 and monitor.sets.query_labels.sum(1).min() == 1
    table.loc[table["split"] == "test", "label"] = ""  # labels left on training images only: no test to measure on
    table.to_csv(tmp_path / "untested.csv", index=False)
    prepare(PrepareConfig(archive=str(tmp_path / "untested.csv"), out=str(tmp_path / "untested.parquet"),
                          data_dir=str(EUROSAT), workers=1))
    with pytest.raises(ConfigError, match=r"its test split holds no labelled images \(\d+ without labels\)"):
        run_linear_probe(LinearProbeConfig(pretrained_weights="random:vit_tiny/8",
                                           metadata_dir=str(tmp_path / "untested.parquet")))

    # A table of paths alone, and a folder of tiles: nothing to probe, but predict labels them with a probe of
    # other data.
    pd.DataFrame({"path": table["path"][:8]}).to_csv(tmp_path / "paths.csv", index=False)
    for index, path in enumerate(table["path"][:8]):
        shutil.copy(EUROSAT / path, (tmp_path / "tiles").mkdir(exist_ok=True) or tmp_path / "tiles" / f"{index}.jpg")
    probe = tmp_path / "probe.pth"
    torch.save({"state_dict": {}, "classes": card["classes"], "task": card["task"], "backbone": "random:vit_tiny/8",
                "config": {"bands": "rgb", "normalize": "max", "arch": "vit_tiny", "patch_size": 8, "n_last_blocks": 4,
                           "avgpool_patchtokens": False, "image_size": 64}}, probe)
    for archive, data_dir in ((tmp_path / "paths.csv", str(EUROSAT)), (tmp_path / "tiles", None)):
        out = str(tmp_path / f"{archive.stem}.parquet")
        result = prepare(PrepareConfig(archive=str(archive), out=out, data_dir=data_dir, workers=1))
        assert result.rows == 8 and set(pd.read_parquet(out)["original_split"]) == {"train"}
        assert json.loads((tmp_path / f"{archive.stem}.json").read_text())["classes"] == []
        assert dataset_size(DataConfig(metadata=out)) == 8
        with pytest.raises(ConfigError, match="these images have no labels .* so there is nothing to probe"):
            run_linear_probe(LinearProbeConfig(pretrained_weights="random:vit_tiny/8", metadata_dir=out))
        assert knn_monitor(PretrainConfig(metadata_dir=out, knn_every=1)) is None
        assert resolved(PredictConfig(pretrained_weights="random:vit_tiny/8", probe=str(probe), metadata_dir=out,
                                      split="train")).bands == "rgb"


def test_demo_archive_is_deterministic_and_learnable_shaped(tmp_path):
    from geodino.archive.demo import make_demo_archive

    a = make_demo_archive(str(tmp_path / "a"), patches=6, seed=3)
    make_demo_archive(str(tmp_path / "b"), patches=6, seed=3)
    files = sorted(p.relative_to(a) for p in (tmp_path / "a").rglob("*.tif"))
    assert len(files) == 6 * 12
    for rel in files[:24]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    result = prepare(PrepareConfig(archive=a, out=str(tmp_path / "m.parquet"), workers=1))
    assert result.rows == 6 and result.rejected == 0
    import rasterio

    with rasterio.open(tmp_path / "a" / files[0]) as src:
        assert src.crs.to_epsg() == 32633 and src.dtypes[0] == "uint16"
        assert 0 < np.median(src.read(1)) < 10000


def test_a_scene_is_cut_into_tiles_that_prepare_reads(tmp_path):
    """A user with scenes rather than patches: a scene in a table was read whole for every sample (a Sentinel-2
    scene is gigabytes). Now prepare refuses an image beyond 4,096 px a side, pointing at tile.py, which cuts
    scenes into GeoTIFF tiles keeping bands, dtype, nodata and georeference; its printed next command prepares
    them. The scene here is 2 x 3 real BigEarthNet patches (B04, B03, B02, B08) side by side, with a no-data
    corner in one and another all no data."""
    import rasterio
    from conftest import BEN_V1_NPZ
    from rasterio.transform import from_origin

    patches = sorted((BEN_V1_NPZ / "patches").glob("*.npz"))[:6]
    bands = [np.stack([np.load(path)[band] for band in ("B04", "B03", "B02", "B08")]) for path in patches]
    scene = np.zeros((4, 240, 410), np.uint16)  # a 50 px strip on the right that no whole tile covers
    for index, pixels in enumerate(bands):
        scene[:, 120 * (index // 3):120 * (index // 3 + 1), 120 * (index % 3):120 * (index % 3 + 1)] = pixels
    scene[:, :10, 240:250] = 0  # a no-data corner in the third patch
    scene[:, 120:, 240:360] = 0  # the sixth patch: outside the swath
    path = tmp_path / "T32UNA.tif"
    with rasterio.open(path, "w", driver="GTiff", width=410, height=240, count=4, dtype="uint16", nodata=0,
                       crs="EPSG:32632", transform=from_origin(500000, 5600000, 10, 10)) as dst:
        dst.write(scene)
        dst.descriptions = ("B4", "B3", "B2", "B8")  # as Earth Engine names them: kept in the tiles
    script = [sys.executable, str(REPO / "experiments" / "tile.py")]
    done = subprocess.run(script + [str(path), "--out", "tiles"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote 4 tiles of 120 px" in done.stdout and "skipped 2 with no data beyond --max_nodata 0" in done.stdout
    for index in (0, 1, 3, 4):
        top, left = 120 * (index // 3), 120 * (index % 3)
        with rasterio.open(tmp_path / "tiles" / f"T32UNA_y{top:05d}_x{left:05d}.tif") as tile:
            np.testing.assert_array_equal(tile.read(), bands[index])  # value for value
            assert tile.descriptions == ("B4", "B3", "B2", "B8")  # before: (None, None, None, None)
            assert (tile.nodata, str(tile.crs), tile.transform.c, tile.transform.f) == (
                0, "EPSG:32632", 500000 + 10 * left, 5600000 - 10 * top)
    again = subprocess.run(script + [str(tmp_path), "--out", str(tmp_path / "tiles")], capture_output=True,
                           text=True)  # the scene's folder stands for its scenes (before: 'cannot read the scene')
    assert again.returncode == 0, again.stderr
    assert "wrote 0 tiles of 120 px to" in again.stdout and "(4 were already there" in again.stdout
    other = subprocess.run(script + [str(path), "--out", str(tmp_path / "tiles"), "--max_nodata", "0.01"],
                           capture_output=True, text=True)
    assert (other.returncode, other.stderr) == (2, f"tile.py: error: --out {tmp_path / 'tiles'} holds tiles cut with "
                                                   "other settings (--max_nodata 0.0 there, 0.01 now); give a new "
                                                   "--out, or the same settings to continue\n")
    next_command = done.stdout.splitlines()[-1].removeprefix("next: ")
    assert next_command == f"python {REPO / 'experiments' / 'prepare.py'} tiles --out tiles_metadata/metadata.parquet"
    prepared = subprocess.run([sys.executable, *next_command.split()[1:]], capture_output=True, text=True, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    frame = pd.read_parquet(tmp_path / "tiles_metadata" / "metadata.parquet")
    assert len(frame) == 4 and frame["recommended"].all() and set(frame["original_split"]) == {"train"}
    card = json.loads((tmp_path / "tiles_metadata" / "metadata.json").read_text())
    assert card["band_names"] == ["B04", "B03", "B02", "B08"]

    # labels from a land-cover map in CORINE's CRS (EPSG:3035, 20 m): class 10 west of 1,800 m into the scene,
    # 40 east of it, and a 30 m strip of 80 along the top (3 % of a tile: under --label_min 0.05)
    from rasterio.warp import transform as reproject_points
    from rasterio.warp import transform_bounds

    west, south, east, north = transform_bounds("EPSG:32632", "EPSG:3035", 500000, 5600000 - 2400, 504100, 5600000)
    width, height = int((east - west) // 20) + 4, int((north - south) // 20) + 4
    columns, rows = np.meshgrid(west - 40 + 20 * (np.arange(width) + 0.5), north + 40 - 20 * (np.arange(height) + 0.5))
    utm_x, utm_y = (np.array(values).reshape(rows.shape) for values in reproject_points(
        "EPSG:3035", "EPSG:32632", columns.ravel(), rows.ravel()))
    classes = np.where(utm_x < 501800, 10, 40).astype(np.uint8)
    classes[utm_y > 5600000 - 30] = 80
    with rasterio.open(tmp_path / "corine.tif", "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint8", nodata=0, crs="EPSG:3035",
                       transform=rasterio.Affine(20, 0, west - 40, 0, -20, north + 40)) as dst:
        dst.write(classes[None])
    labelled = subprocess.run(script + [str(path), "--out", "labelled", "--labels", "corine.tif"], capture_output=True,
                              text=True, cwd=tmp_path)
    assert labelled.returncode == 0, labelled.stderr
    table = pd.read_csv(tmp_path / "labelled" / "labels.csv", keep_default_na=False)
    assert dict(zip(table["path"], table["labels"])) == {
        "T32UNA_y00000_x00000.tif": "10", "T32UNA_y00000_x00120.tif": "10;40",
        "T32UNA_y00120_x00000.tif": "10", "T32UNA_y00120_x00120.tif": "10;40"}
    assert table["split"].nunique() == 1  # the four tiles lie in one 8 x 8 block: one split, no neighbour across
    assert "tiles lie in too few blocks of 8 x 8; cut more scenes, or edit the split column" in labelled.stdout
    (tmp_path / "corine_tiles").mkdir()  # the same map as two map tiles, west and east (WorldCover ships tiles),
    for part, columns in (("west", slice(0, width // 2)), ("east", slice(width // 2, width))):  # without nodata
        with rasterio.open(tmp_path / "corine_tiles" / f"{part}.tif", "w", driver="GTiff", width=columns.stop -
                           columns.start, height=height, count=1, dtype="uint8", crs="EPSG:3035",
                           transform=rasterio.Affine(20, 0, west - 40 + 20 * columns.start, 0, -20, north + 40)) as dst:
            dst.write(classes[None, :, columns])
    from_tiles = subprocess.run(script + [str(path), "--out", "labelled", "--labels", "corine_tiles"],
                                capture_output=True, text=True, cwd=tmp_path)
    assert from_tiles.returncode == 0, from_tiles.stderr
    assert pd.read_csv(tmp_path / "labelled" / "labels.csv", keep_default_na=False).equals(table)
    assert labelled.stdout.splitlines()[-2].startswith(
        "labelled 4 of 4 tiles from corine.tif (classes covering at least 0.05 of a tile: 10, 40); split by blocks")
    next_command = labelled.stdout.splitlines()[-1].removeprefix("next: ")
    assert next_command.split()[2:] == ["labelled/labels.csv", "--out", "labelled_metadata/metadata.parquet"]
    prepared = subprocess.run([sys.executable, *next_command.split()[1:]], capture_output=True, text=True, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    card = json.loads((tmp_path / "labelled_metadata" / "metadata.json").read_text())
    assert (card["classes"], card["task"]) == (["10", "40"], "multi_label")
    assert "typo" not in prepared.stdout  # before: '10' and '40' "differ only by case or a typo" (--strict: refused)
    (tmp_path / "legend.csv").write_text("value,name\n10,Tree cover\n40,Cropland\n80,Permanent water bodies\n")
    named = subprocess.run(script + [str(path), "--out", "labelled", "--labels", "corine.tif", "--label_names",
                                     "legend.csv"], capture_output=True, text=True, cwd=tmp_path)  # the tiles kept
    assert named.returncode == 0 and "wrote 0 tiles" in named.stdout, named.stderr
    table = pd.read_csv(tmp_path / "labelled" / "labels.csv", keep_default_na=False)
    assert table["labels"].tolist() == ["Tree cover", "Tree cover;Cropland", "Tree cover", "Tree cover;Cropland"]
    worldcover = subprocess.run(script + [str(path), "--out", "labelled", "--labels", "corine.tif", "--label_names",
                                          "worldcover"], capture_output=True, text=True, cwd=tmp_path)
    assert worldcover.returncode == 0 and "(classes covering at least 0.05 of a tile: Cropland, Tree cover)" in (
        worldcover.stdout)  # ESA WorldCover's legend: 10 Tree cover, 40 Cropland
    # CORINE itself, by CLC code (the vector's 311, 211, rasterised), named by CORINE's classes or merged into
    # BigEarthNet's 19, which have no place for roads (122, the strip along the top, 3 %: counted at 0.02)
    with rasterio.open(tmp_path / "corine.tif") as src, rasterio.open(tmp_path / "clc.tif", "w", **(
            src.profile | {"dtype": "uint16"})) as dst:
        dst.write(np.select([classes == 10, classes == 40], [311, 211], 122).astype(np.uint16)[None])
    by_name = {}
    for nomenclature in ("corine", "bigearthnet19"):
        run = subprocess.run(script + [str(path), "--out", "labelled", "--labels", "clc.tif", "--label_min", "0.02",
                                       "--label_names", nomenclature], capture_output=True, text=True, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        by_name[nomenclature] = pd.read_csv(tmp_path / "labelled" / "labels.csv")["labels"].tolist()
    road, arable, forest = "Road and rail networks and associated land", "Non-irrigated arable land", "Broad-leaved forest"
    assert by_name == {  # the tiles top left, top right, bottom left, bottom right; classes in the order of values
        "corine": [f"{road};{forest}", f"{road};{arable};{forest}", forest, f"{arable};{forest}"],
        "bigearthnet19": [forest, f"Arable land;{forest}", forest, f"Arable land;{forest}"]}
    # CORINE's own raster: int8 grid codes (23 forest, 12 arable) with nodata -128, here the strip along the top;
    # it came back as class 0 (a masked read ignored the alpha band of the int8 map warped onto the tile)
    with rasterio.open(tmp_path / "corine.tif") as src, rasterio.open(tmp_path / "clc_grid.tif", "w", **(
            src.profile | {"dtype": "int8", "nodata": -128})) as dst:
        dst.write(np.select([classes == 10, classes == 40], [23, 12], -128).astype(np.int8)[None])
    grid = subprocess.run(script + [str(path), "--out", "labelled", "--labels", "clc_grid.tif", "--label_min", "0.02",
                                    "--label_names", "corine"], capture_output=True, text=True, cwd=tmp_path)
    assert grid.returncode == 0, grid.stderr
    assert pd.read_csv(tmp_path / "labelled" / "labels.csv")["labels"].tolist() == [
        forest, f"{arable};{forest}", forest, f"{arable};{forest}"]
    assert read_legend("bigearthnet19")["48"] is None  # CORINE's NODATA value is no class
    assert block_split("mosaic_y123480_x00000.tif", 120) in SPLITS  # a mosaic past 99,999 px: its tiles are labelled

    # the scene itself, beyond 4,096 px a side, in a table: refused by row, pointing at tile.py
    with rasterio.open(tmp_path / "wide.tif", "w", driver="GTiff", width=4100, height=8, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 8, 4100), np.uint8))
    pd.DataFrame({"path": ["tiles/T32UNA_y00000_x00000.tif", "wide.tif"], "label": ["a", "b"]}).to_csv(
        tmp_path / "scenes.csv", index=False)
    result = prepare(PrepareConfig(archive=str(tmp_path / "scenes.csv"), out=str(tmp_path / "s.parquet"), workers=1))
    assert pd.read_csv(result.rejects_path)["reason"].tolist() == [
        f"row 3: {tmp_path}/wide.tif: the image is 4100x8 px, a scene rather than a patch (geodino reads images up to "
        f"4096 px a side); cut it into tiles: python experiments/tile.py {tmp_path}/wide.tif --size 120 --out DIR, "
        "then prepare DIR"]


def test_a_scene_kept_as_a_file_per_band_is_cut_as_one_raster_of_its_bands(tmp_path):
    """A Sentinel-2 product keeps each band in a file of its own (R10m/T32UNA_..._B02_10m.jp2, R20m/..._B05_20m.jp2).
    tile.py cut each file as a scene: single-band tiles that prepare took as grey images, every band of a place a
    sample of its own, nothing said (and the .SAFE folder itself was 'a folder without rasters'). The band files of
    a scene are stacked now, coarser bands resampled onto the finest's grid as BigEarthNet resamples them. The
    product here is one real BigEarthNet patch written as an L2A product's lossless JPEG 2000 files, and a second
    granule of another patch's 10 m bands with a swath edge: zeros, which the product's metadata (not the files)
    declares no data. Its pixels are stored as processing baseline 04.00 (2022 on) stores them, 1000 above the
    earlier scale, which the product's MTD_MSIL2A.xml declares: tiles are brought back to BigEarthNet's scale."""
    import rasterio

    from geodino.archive.bands import NATIVE_SIZE, S2_BANDS
    from geodino.archive.pixels import read_ben_v1

    patch = sorted(path.name for path in BEN_V1_EXAMPLE.iterdir() if path.is_dir())[0]
    with rasterio.open(BEN_V1_EXAMPLE / patch / f"{patch}_B02.tif") as src:
        crs, (west, north) = src.crs, (src.bounds.left, src.bounds.top)
    granule = tmp_path / "S2A_MSIL2A_20170613T101031_N9999_R022_T32UNA_20170613T101031.SAFE" / "GRANULE" / "L2A"
    lossless = {"driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": "YES", "crs": crs}

    def write(name: str, pixels: np.ndarray, metres: int, tile: str = "T32UNA", where: Path = granule) -> None:
        folder = where / "IMG_DATA" / f"R{metres}m"
        folder.mkdir(parents=True, exist_ok=True)
        with rasterio.open(folder / f"{tile}_20170613T101031_{name}_{metres}m.jp2", "w", **lossless,
                           width=pixels.shape[-1], height=pixels.shape[-2], count=pixels.shape[0],
                           dtype=pixels.dtype, transform=rasterio.transform.from_origin(west, north, metres, metres)
                           ) as dst:
            dst.write(pixels)

    for band in S2_BANDS:
        with rasterio.open(BEN_V1_EXAMPLE / patch / f"{patch}_{band}.tif") as src:
            write(band, src.read() + 1000, 1200 // NATIVE_SIZE[band])
    with rasterio.open(BEN_V1_EXAMPLE / patch / f"{patch}_B02.tif") as src:
        write("B02", src.read(out_shape=(1, 60, 60)), 20)  # the same band again at 20 m: the 10 m one is kept
    offsets = "".join(f'<BOA_ADD_OFFSET band_id="{index}">-1000</BOA_ADD_OFFSET>' for index in range(13))
    (granule.parents[1] / "MTD_MSIL2A.xml").write_text(
        '<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">'
        f"<n1:General_Info><Product_Image_Characteristics><BOA_ADD_OFFSET_VALUES_LIST>{offsets}"
        "</BOA_ADD_OFFSET_VALUES_LIST></Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>")
    write("TCI", np.full((3, 120, 120), 90, np.uint8), 10)  # the product's other rasters: not bands
    write("SCL", np.full((1, 60, 60), 4, np.uint8), 20)
    other = sorted(path.name for path in BEN_V1_EXAMPLE.iterdir() if path.is_dir())[1]
    rows, cols = np.mgrid[:120, :120]
    for band in ("B02", "B03", "B04", "B08"):
        with rasterio.open(BEN_V1_EXAMPLE / other / f"{other}_{band}.tif") as src:
            pixels = src.read() + 1000
        pixels[:, rows + cols < 100] = 0  # outside the swath: 3 of the 4 tiles partly
        write(band, pixels, 10, "T32UNB", granule.parent / "L2A_B")

    script = [sys.executable, str(REPO / "experiments" / "tile.py")]
    done = subprocess.run(script + [str(granule.parents[1]), "--out", "tiles", "--size", "60"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    scene = "T32UNA_20170613T101031"
    assert done.stdout.splitlines()[0] == (
        f"{scene} (12 band files stacked: {', '.join(S2_BANDS)}; left out 3 other rasters of it ({scene}_TCI_10m.jp2, "
        f"{scene}_B02_20m.jp2, {scene}_SCL_20m.jp2); the product's add offset -1000 added to 12 bands, the scale of "
        "products before 2022) (no data: 0, a Sentinel-2 product's): 4 tiles")
    assert done.stdout.splitlines()[1] == (
        "T32UNB_20170613T101031 (4 band files stacked: B02, B03, B04, B08; the product's add offset -1000 added to 4 "
        "bands, the scale of products before 2022) (no data: 0, a Sentinel-2 product's): 1 tiles")
    assert "wrote 5 tiles of 60 px" in done.stdout and "skipped 3 with no data beyond --max_nodata 0" in done.stdout
    with rasterio.open(tmp_path / "tiles" / "T32UNB_20170613T101031_y00060_x00060.tif") as tile:
        assert tile.nodata == 0 and tile.read().min() > 0
    patch_pixels = read_ben_v1(str(BEN_V1_EXAMPLE), patch, patch, S2_BANDS, 120).astype(np.float64)
    for top in (0, 60):
        for left in (0, 60):
            with rasterio.open(tmp_path / "tiles" / f"{scene}_y{top:05d}_x{left:05d}.tif") as tile:
                assert tile.descriptions == S2_BANDS and tile.res == (10, 10) and tile.crs == crs
                difference = np.abs(tile.read() - patch_pixels[:, top:top + 60, left:left + 60])
            ten_metres = [S2_BANDS.index(band) for band in ("B02", "B03", "B04", "B08")]
            assert difference[ten_metres].max() == 0  # value for value
            assert difference.max() <= 0.51  # 20 m and 60 m bands: BigEarthNet's bilinear, to the rounding

    raw = subprocess.run(script + [str(granule.parents[1]), "--out", "raw", "--size", "60", "--add_offset", "false"],
                         capture_output=True, text=True, cwd=tmp_path)
    with rasterio.open(tmp_path / "raw" / f"{scene}_y00000_x00000.tif") as tile:
        assert raw.returncode == 0 and np.array_equal(tile.read(2), patch_pixels[1, :60, :60] + 1000)  # B02 as stored

    # --bands chooses and orders them; prepare names the channels of the tiles by the bands
    r10m = granule / "IMG_DATA" / "R10m"
    chosen = subprocess.run(script + [str(r10m), "--out", "rgbn", "--bands", "B4,B3,B2,B8"], capture_output=True,
                            text=True, cwd=tmp_path)
    assert chosen.returncode == 0, chosen.stderr
    next_command = chosen.stdout.splitlines()[-1].removeprefix("next: ")
    prepared = subprocess.run([sys.executable, *next_command.split()[1:]], capture_output=True, text=True, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    card = json.loads((tmp_path / "rgbn_metadata" / "metadata.json").read_text())
    assert card["band_names"] == ["B04", "B03", "B02", "B08"] and len(card["bands"]) == 4
    missing = subprocess.run(script + [str(r10m), "--out", "b5", "--bands", "B04,B05"], capture_output=True,
                             text=True, cwd=tmp_path)
    assert (missing.returncode, missing.stderr) == (
        2, f"tile.py: error: {scene}: no band file for B05 (its bands: B02, B03, B04, B08)\n")
    assert not (tmp_path / "b5").exists()

    # Landsat names its bands otherwise (Landsat 5's B4 is near infrared): stacked, its other rasters left out, the
    # bands left unnamed rather than taken for Sentinel-2's
    landsat = tmp_path / "LC08_L2SP_191031_20200101_20200113_02_T1"
    landsat.mkdir()
    for index, name in enumerate(["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "ST_B10", "QA_PIXEL"]):
        with rasterio.open(landsat / f"{landsat.name}_{name}.TIF", "w", driver="GTiff", width=120, height=120, count=1,
                           dtype="uint16", crs=crs, transform=rasterio.Affine(30, 0, west, 0, -30, north)) as dst:
            dst.write(patch_pixels[index % 12:index % 12 + 1].astype(np.uint16) + 1)
    cut = subprocess.run(script + [str(landsat), "--out", "landsat"], capture_output=True, text=True, cwd=tmp_path)
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout.splitlines()[0] == (
        f"{landsat.name}_SR (7 band files stacked: B01, B02, B03, B04, B05, B06, B07; left out 2 other rasters of it "
        f"({landsat.name}_QA_PIXEL.TIF, {landsat.name}_ST_B10.TIF); not named as Sentinel-2's, so the tiles' bands are "
        "left unnamed): 1 tiles")
    with rasterio.open(tmp_path / "landsat" / f"{landsat.name}_SR_y00000_x00000.tif") as tile:
        assert tile.count == 7 and tile.descriptions == (None,) * 7

    # band files that do not lie on one another are refused, by file, before a tile is written
    with rasterio.open(r10m / f"{scene}_B08_10m.jp2", "r+") as band:
        band.transform = rasterio.transform.from_origin(west + 1200, north, 10, 10)
    moved = subprocess.run(script + [str(r10m), "--out", "moved"], capture_output=True, text=True, cwd=tmp_path)
    assert (moved.returncode, moved.stderr.count("\n")) == (2, 1), moved.stderr
    assert moved.stderr.startswith(f"tile.py: error: {r10m}/{scene}_B08_10m.jp2: it covers another area than "
                                   f"{scene}_B02_10m.jp2, the finest band of scene {scene}; its bands cannot be "
                                   "stacked")
    assert not (tmp_path / "moved").exists()


def test_table_headers_are_matched_by_name_and_never_guessed(tmp_path):
    """'Path,Label' (a spreadsheet's capitals) was refused as lacking a 'path' column; it is read now. Headers of
    other names ('filename', 'class') are named in the error with the rename to make, never taken on a guess; and
    a table whose classes sit in a 'Class' column is refused rather than prepared as images without labels. Excel's
    tab-separated text, with its byte-order mark, is read as the same table (before: a .tsv was listed as a
    BigEarthNet folder, a pyarrow NotADirectoryError traceback)."""
    from geodino.errors import DamagedInputError

    rows = pd.read_csv(EUROSAT / "labels.csv").head(4)
    for header in (["Path", " Label", "SPLIT"], ["filename", "class", "split"], ["path", "Class", "split"]):
        rows.set_axis(header, axis=1).to_csv(tmp_path / f"{header[0]}.csv", index=False)
    result = prepare(PrepareConfig(archive=str(tmp_path / "Path.csv"), out=str(tmp_path / "m.parquet"),
                                   data_dir=str(EUROSAT), workers=1))
    frame = pd.read_parquet(tmp_path / "m.parquet")
    assert result.rows == 4 and frame["labels"].map(list).tolist() == [[label] for label in rows["label"]]
    assert sorted(frame["original_split"]) == sorted(rows["split"])
    rows.to_csv(tmp_path / "excel.tsv", sep="\t", index=False, encoding="utf-8-sig")
    prepare(PrepareConfig(archive=str(tmp_path / "excel.tsv"), out=str(tmp_path / "t.parquet"),
                          data_dir=str(EUROSAT), workers=1))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame)
    with pytest.raises(DamagedInputError, match=r"has \['filename', 'class', 'split'\] \(rename 'filename' to 'path', "
                                                r"'class' to 'label', if that is what they hold\)"):
        prepare(PrepareConfig(archive=str(tmp_path / "filename.csv"), out=str(tmp_path / "n.parquet"), workers=1))
    with pytest.raises(DamagedInputError, match="no 'label' or 'labels' column, but 'Class': rename it to 'label' if "
                                                "it holds the classes"):
        prepare(PrepareConfig(archive=str(tmp_path / "path.csv"), out=str(tmp_path / "n.parquet"), workers=1))


def test_a_label_column_naming_two_classes_in_a_row_makes_the_task_multi_label(tmp_path):
    """A 'label' column is one class per image, unless a row names two ('Forest;River'): before, such a table was
    still single-label, so probes scored that row by one of its classes (softmax and top-1)."""
    from geodino.archive.card import load_card

    rows = pd.read_csv(EUROSAT / "labels.csv").head(4)
    for name, labels in (("one", rows["label"]), ("two", ["Forest;River", *rows["label"][1:]])):
        rows.assign(label=labels).to_csv(tmp_path / f"{name}.csv", index=False)
        prepare(PrepareConfig(archive=str(tmp_path / f"{name}.csv"), out=str(tmp_path / f"{name}.parquet"),
                              data_dir=str(EUROSAT), workers=1))
    assert load_card(str(tmp_path / "one.parquet"))["task"] == "single_label"
    assert load_card(str(tmp_path / "two.parquet"))["task"] == "multi_label"


def test_telling_a_bigearthnet_archive_from_a_folder_of_images_lists_one_patch_folder(monkeypatch):
    """Looking for class folders listed every sub-folder: 10 s for 20,000 BigEarthNet patch folders (measured),
    so about 5 minutes before prepare began on the 590,326 of the real archive. The first patch folder decides."""
    import os

    from geodino.archive.detect import detect_format

    listed = []
    for name in ("scandir", "listdir"):
        monkeypatch.setattr(os, name, lambda path, real=getattr(os, name): listed.append(path) or real(path))
    assert detect_format(str(BEN_V1_EXAMPLE)) == "ben_v1"
    assert len([path for path in listed if path != str(BEN_V1_EXAMPLE)]) == 1, listed  # of its 6 patch folders
