"""The bad-input catalogue of the README: each bad input, made for real, and the message the user sees."""

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from conftest import EUROSAT

from geodino.archive.bands import UnknownBandError, parse_bands
from geodino.archive.card import OutputError
from geodino.archive.prepare import PrepareConfig, prepare
from geodino.data.config import DataConfig
from geodino.data.ray_data import build_dataset
from geodino.dino.config import PretrainConfig, steps_per_epoch_for
from geodino.errors import ConfigError
from geodino.launch.ray_train import check_gpus, with_cluster_gpus


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
    assert reasons["images/four_bands.tif"] == ("row 8: image has 4 bands, the others 3 bands; image has float32, "
                                                "the others uint8")
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


def test_a_gpu_backend_on_a_cpu_cluster_is_one_line(ray_session, capsys):
    """--backend nccl with --use_gpu auto on a cluster without GPUs: the note '--use_gpu auto: ... runs on the CPU'
    came before the error, two lines for one mistake."""
    with pytest.raises(ValueError, match="--backend nccl joins GPUs, and this run trains on the CPU"):
        with_cluster_gpus(PretrainConfig(backend="nccl"))
    assert capsys.readouterr().out == ""
    assert with_cluster_gpus(PretrainConfig()).use_gpu is False
    assert capsys.readouterr().out == "--use_gpu auto: the Ray cluster has 0 GPUs, so training runs on the CPU\n"


def test_card_missing_next_to_the_metadata_is_named(ben_v1_metadata, tmp_path):
    lonely = tmp_path / "metadata.parquet"
    shutil.copy(ben_v1_metadata, lonely)
    with pytest.raises(FileNotFoundError) as raised:
        build_dataset(DataConfig(metadata=str(lonely)))
    assert str(raised.value).startswith(f"{lonely.with_suffix('.json')}: the card that prepare writes next to {lonely}")


def prepare_cli(*args, env=None):
    import os
    import subprocess
    import sys

    from conftest import REPO

    environment = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "experiments" / "prepare.py"), *map(str, args)],
                          env=environment, capture_output=True, text=True, timeout=300)


def test_sixteen_bit_images_get_their_own_pixel_scale_and_band_statistics(tmp_path):
    """4-band uint16 GeoTIFFs (real Sentinel-2 B02, B03, B04, B08): before, they were scaled as 8-bit (mean 0.998).
    --bands picks some of their channels by the card's names (before: refused, every channel or none)."""
    from conftest import BEN_V1_EXAMPLE

    from geodino.archive.bands import UnknownBandError
    from geodino.archive.card import load_card
    from geodino.data.config import DataConfig, resolve_bands
    from geodino.data.indexed import labelled_images

    rows = []
    for index, folder in enumerate(sorted(p for p in BEN_V1_EXAMPLE.iterdir() if p.is_dir())):
        bands = [rasterio.open(folder / f"{folder.name}_{b}.tif").read(1) for b in ("B02", "B03", "B04", "B08")]
        path = tmp_path / f"{folder.name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=120, height=120, count=4, dtype="uint16") as dst:
            dst.write(np.stack(bands))
        rows.append({"path": path.name, "label": "field" if index % 2 else "forest", "split": "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    done = prepare_cli(tmp_path / "table.csv", "--out", tmp_path / "m.parquet", "--workers", "1")
    assert done.returncode == 0, done.stderr
    card = load_card(str(tmp_path / "m.parquet"))
    assert card["dtype"] == "uint16" and card["pixel_scale"].startswith("99.9th percentile of")
    values = np.concatenate([rasterio.open(tmp_path / r["path"]).read().ravel() for r in rows])
    assert card["pixel_max"] == pytest.approx(np.percentile(values, 99.9), rel=0.05)  # of a sample of them
    assert len(card["band_stats"]["mean"]) == 4 and card["band_stats"]["mean"][3] > card["band_stats"]["mean"][0]
    images, _ = labelled_images(DataConfig(metadata=str(tmp_path / "m.parquet"), split="train"))
    assert 0.05 < float(images.mean()) < 0.5  # reflectances, not a saturated 0.998
    # some channels, by the card's names, from the files and from a pack (here: B04, B03, B02 = red, green, blue)
    packed = prepare_cli(tmp_path / "table.csv", "--out", tmp_path / "m.parquet", "--pack", tmp_path / "pack",
                         "--pack_only")
    assert packed.returncode == 0, packed.stderr
    for data_dir in (str(tmp_path), str(tmp_path / "pack")):
        chosen = DataConfig(metadata=str(tmp_path / "m.parquet"), data_dir=data_dir, split="train",
                            bands="band3,band2,band1", normalize="stats")
        rgb, _ = labelled_images(chosen)
        mean, std = (np.array(card["band_stats"][key])[[2, 1, 0], None, None] for key in ("mean", "std"))
        raw = np.stack([rasterio.open(tmp_path / r["path"]).read()[[2, 1, 0]] for r in rows])
        assert np.allclose(rgb, (raw - mean) / std, atol=1e-4), data_dir
    with pytest.raises(UnknownBandError, match=r"have the channels band1, band2, band3, band4 \('band5' is not"):
        resolve_bands(card, "band3,band5")
    saturating = prepare_cli(tmp_path / "table.csv", "--out", tmp_path / "s.parquet", "--workers", "1",
                             "--pixel_max", "255")
    assert saturating.returncode == 0 and "pixel scale 255 (--pixel_max) leaves" in saturating.stdout


def decibel_images() -> list[np.ndarray]:
    """The real BigEarthNet example patches' B04 and B08 as decibels (10 log10 of reflectance), float32."""
    from conftest import BEN_V1_EXAMPLE

    images = []
    for folder in sorted(p for p in BEN_V1_EXAMPLE.iterdir() if p.is_dir()):
        bands = [rasterio.open(folder / f"{folder.name}_{b}.tif").read(1) for b in ("B04", "B08")]
        images.append((10 * np.log10(np.maximum(np.stack(bands), 1) / 10000)).astype(np.float32))
    return images


def write_float_geotiff(path, pixels: np.ndarray, nodata: float | None = None) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[2], height=pixels.shape[1],
                       count=pixels.shape[0], dtype="float32", nodata=nodata) as dst:
        dst.write(pixels)


def test_channels_a_geotiff_names_are_chosen_by_those_names_and_match_weights_of_those_bands(tmp_path):
    """Real Sentinel-2 B02, B03, B04, B08 as one GeoTIFF per patch, its bands named as Earth Engine names them (B2,
    B3, B4, B8). Before, the card called them band1..band4 only: weights of B04, B03, B02 (BigEarthNet RGB, or
    ImageNet's through timm:) were refused on them (`the weights take bands ['B04', 'B03', 'B02'], the data gives
    ['band1', ..., 'band4'] ... --force`), and --bands B04,B03,B02 was not one of the table's channels."""
    from conftest import BEN_V1_EXAMPLE

    from geodino.archive.card import load_card
    from geodino.data.config import resolve_bands
    from geodino.data.indexed import labelled_images
    from geodino.launch.inputs import input_spec
    from geodino.transfer.contract import resolve_inputs

    rows = []
    for index, folder in enumerate(sorted(p for p in BEN_V1_EXAMPLE.iterdir() if p.is_dir())):
        bands = [rasterio.open(folder / f"{folder.name}_{b}.tif").read(1) for b in ("B02", "B03", "B04", "B08")]
        with rasterio.open(tmp_path / f"{folder.name}.tif", "w", driver="GTiff", width=120, height=120, count=4,
                           dtype="uint16") as dst:
            dst.write(np.stack(bands))
            dst.descriptions = ("B2", "B3", "B4", "B8")
        rows.append({"path": f"{folder.name}.tif", "label": "field" if index % 2 else "forest"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    metadata = str(tmp_path / "m.parquet")
    prepare(PrepareConfig(archive=str(tmp_path / "table.csv"), out=metadata, workers=1))
    card = load_card(metadata)
    assert card["bands"] == ["band1", "band2", "band3", "band4"] and card["band_names"] == ["B02", "B03", "B04", "B08"]
    prepare(PrepareConfig(archive=str(tmp_path / "table.csv"), out=str(tmp_path / "h.parquet"), workers=1,
                          verify="header"))  # reads no pixels but the first image's (before: taken as 3 bands)
    header = load_card(str(tmp_path / "h.parquet"))
    assert [header[key] for key in ("bands", "band_names", "image_size", "dtype")] == [
        card[key] for key in ("bands", "band_names", "image_size", "dtype")]
    assert resolve_bands(card, "B04,B03,B02") == resolve_bands(card, "b4, B3,B2") == ("band3", "band2", "band1")
    with pytest.raises(UnknownBandError, match=r"the channels band1 \(B02\), band2 \(B03\), band3 \(B04\), "
                                               r"band4 \(B08\) \('B11' is not one of them\)"):
        resolve_bands(card, "B04,B11")
    # files without band names (EuroSAT MS's GeoTIFFs have none): --band_names gives them, or says what is wrong
    with rasterio.open(tmp_path / rows[0]["path"], "r+") as dst:
        dst.descriptions = ("", "", "", "")
    unnamed = prepare(PrepareConfig(archive=str(tmp_path / "table.csv"), out=str(tmp_path / "n.parquet"), workers=1))
    assert any("the images' 4 channels have no names (band1..band4): give them with --band_names" in warning
               for warning in unnamed.warnings)
    prepare(PrepareConfig(archive=str(tmp_path / "table.csv"), out=str(tmp_path / "n.parquet"), workers=1,
                          band_names="B2,B3,B4,B8"))
    assert load_card(str(tmp_path / "n.parquet"))["band_names"] == ["B02", "B03", "B04", "B08"]
    with pytest.raises(ConfigError, match=r"--band_names 'B2,B3,B4': 3 names for the images' 4 channels"):
        prepare(PrepareConfig(archive=str(tmp_path / "table.csv"), out=str(tmp_path / "n.parquet"), workers=1,
                              band_names="B2,B3,B4"))
    # weights of red, green, blue: by default the probe takes B04, B03, B02 of these 4 bands, with no --force
    weights = tmp_path / "ben_rgb.pth"
    weights.write_bytes(b"")
    (tmp_path / "ben_rgb.json").write_text('{"bands": ["B04", "B03", "B02"], "rgb": true, "normalize": "max"}')
    for source in (str(weights), "timm:vit_small_patch16_224.dino"):
        assert resolve_inputs(source, card, None, None, None, force=False).bands == "B04,B03,B02"
    images, _ = labelled_images(DataConfig(metadata=metadata, split=None, bands="B04,B03,B02"))
    raw = np.stack([rasterio.open(tmp_path / path).read()[[2, 1, 0]] for path in sorted(r["path"] for r in rows)])
    assert np.allclose(images, np.clip((raw - card["pixel_min"]) / (card["pixel_max"] - card["pixel_min"]), 0, 1),
                       atol=1e-5)  # the red, green and blue of the files, in that order
    # weights pretrained on these channels carry their names, as BigEarthNet's would
    spec = input_spec(PretrainConfig(metadata_dir=metadata, bands="band3,band2,band1"))
    assert spec.bands == ("B04", "B03", "B02") and spec.rgb


def test_images_with_negative_values_span_zero_to_one(tmp_path):
    """Real Sentinel-2 B04/B08 as decibels (10 log10 of reflectance: nearly every value below 0, as Sentinel-1
    backscatter in dB is): --normalize max divided by the 99.9th percentile and clipped, so nearly every pixel
    became 0 (or, with that percentile below 0 too, 1). Now the 0.1th percentile maps to 0 and the images keep
    their contrast."""
    from geodino.archive.card import load_card
    from geodino.data.config import DataConfig
    from geodino.data.indexed import labelled_images

    rows = []
    for index, decibels in enumerate(decibel_images()):
        write_float_geotiff(tmp_path / f"{index}.tif", decibels)
        rows.append({"path": f"{index}.tif", "label": "field" if index % 2 else "forest", "split": "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    prepare(PrepareConfig(archive=str(tmp_path / "table.csv"), out=str(tmp_path / "m.parquet"), workers=1))
    card = load_card(str(tmp_path / "m.parquet"))
    assert card["pixel_min"] < -10 and "maps to 0" in card["pixel_scale"]
    images, _ = labelled_images(DataConfig(metadata=str(tmp_path / "m.parquet"), split="train"))
    images = np.asarray(images)
    assert 0.2 < float(images.mean()) < 0.8
    assert float((images == 0).mean()) < 0.01 and float((images == 1).mean()) < 0.01


def test_signed_and_float_images_are_packed_in_their_own_type(ray_session, tmp_path):
    """The dB images as float32 and as int16 (hundredths of a dB, as SAR products store them): --pack refused both
    (`the images are int16; a pack stores 8- or 16-bit integers`), so such data trained from its files alone. Packed
    now in their own type, they read as the files do, through the in-memory reader and through Ray Data's raw path
    (integers normalised on the device; floats in the pipeline)."""
    import torch

    from geodino.archive.pack import PackConfig, pack
    from geodino.data.indexed import labelled_images
    from geodino.data.normalize import Normalizer
    from geodino.data.ray_data import build_dataset

    for dtype, scale in (("float32", 1), ("int16", 100)):
        folder = tmp_path / dtype
        folder.mkdir()
        rows = []
        for index, decibels in enumerate(decibel_images()):
            with rasterio.open(folder / f"{index}.tif", "w", driver="GTiff", width=120, height=120, count=2,
                               dtype=dtype) as dst:
                dst.write((decibels * scale).astype(dtype))
            rows.append({"path": f"{index}.tif", "label": "field" if index % 2 else "forest", "split": "train"})
        pd.DataFrame(rows).to_csv(folder / "table.csv", index=False)
        metadata = str(folder / "m.parquet")
        prepare(PrepareConfig(archive=str(folder / "table.csv"), out=metadata, workers=1))
        manifest = pack(PackConfig(metadata=metadata, out_dir=str(folder / "pack"), workers=1))
        assert manifest.rows == len(rows)
        assert json.loads((folder / "pack" / "pack.json").read_text())["dtype"] == dtype
        from_files, _ = labelled_images(DataConfig(metadata=metadata, split="train"))
        from_pack, _ = labelled_images(DataConfig(metadata=metadata, data_dir=str(folder / "pack"), split="train"))
        assert np.allclose(from_pack, from_files, atol=1e-6) and 0.2 < float(from_files.mean()) < 0.8, dtype
        config = DataConfig(metadata=metadata, data_dir=str(folder / "pack"), split="train")
        batch = next(iter(build_dataset(config, raw=True).iter_batches(batch_size=len(rows), batch_format="numpy")))
        assert batch["image"].dtype == (np.int16 if dtype == "int16" else np.float32)  # integers go raw, floats not
        card = json.loads((folder / "m.json").read_text())
        offset, scale_ = card["pixel_min"], card["pixel_max"] - card["pixel_min"]
        normalised = Normalizer(np.full(2, offset), np.full(2, scale_), True, torch.device("cpu"))(
            torch.from_numpy(batch["image"]))
        order = np.argsort(batch["name"])
        assert np.allclose(normalised.numpy()[order], from_files, atol=1e-6), dtype


def test_pixels_a_file_marks_as_no_data_are_not_measurements(tmp_path):
    """Those dB images with a swath edge: 40 of 120 columns hold the file's nodata value (-9999, or NaN declared
    as nodata). Before, -9999 became the card's pixel_min, so every real pixel landed in the top fifth of [0, 1],
    and it dragged the band means to about -3,300. Now those pixels read as their band's valid mean; an image
    with no valid pixel is rejected by name."""
    from geodino.archive.card import load_card
    from geodino.archive.pixels import read_image

    images = decibel_images()
    rows = []
    for index, decibels in enumerate(images):
        edged = decibels.copy()
        nodata = float("nan") if index % 2 else -9999.0
        edged[:, :, :40] = nodata
        write_float_geotiff(tmp_path / f"{index}.tif", edged, nodata)
        rows.append({"path": f"{index}.tif", "label": "field" if index % 2 else "forest", "split": "train"})
    write_float_geotiff(tmp_path / "void.tif", np.full_like(images[0], -9999.0), -9999.0)
    rows.append({"path": "void.tif", "label": "forest", "split": "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    result = prepare(PrepareConfig(archive=str(tmp_path / "table.csv"), out=str(tmp_path / "m.parquet"), workers=1))

    assert result.rows == len(images)
    reason = pd.read_csv(result.rejects_path).set_index("path")["reason"]["void.tif"]
    assert "void.tif: band 1 is all no data (the file's nodata value -9999)" in reason, reason
    valid = np.concatenate([image[:, :, 40:].ravel() for image in images])
    card = load_card(str(tmp_path / "m.parquet"))
    assert valid.min() <= card["pixel_min"] < np.percentile(valid, 5) and card["pixel_max"] <= valid.max()
    assert all(valid.min() < mean < valid.max() for mean in card["band_stats"]["mean"])
    for index in (0, 1):  # -9999 and NaN
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nor a NotGeoreferencedWarning: plain TIFFs need no georeference
            pixels = read_image(str(tmp_path / f"{index}.tif"))
        assert np.isfinite(pixels).all() and np.array_equal(pixels[:, :, 40:], images[index][:, :, 40:])
        band_means = images[index][:, :, 40:].mean(axis=(1, 2))
        np.testing.assert_allclose(pixels[:, :, :40], np.broadcast_to(band_means[:, None, None], (2, 120, 40)),
                                   rtol=1e-5)
    # a 4-band uint8 GeoTIFF as rasterio writes it by default declares its 4th band (here NIR) as alpha: its zeros
    # (dark water) are measurements, and the other bands there too (before: filled with the band means)
    from conftest import BEN_V1_EXAMPLE

    folder = sorted(p for p in BEN_V1_EXAMPLE.iterdir() if p.is_dir())[0]
    reflectance = np.stack([rasterio.open(folder / f"{folder.name}_{b}.tif").read(1) for b in ("B04", "B03", "B02",
                                                                                              "B08")])
    rgbn = np.clip(reflectance / 3000 * 255, 1, 255).astype(np.uint8)
    rgbn[3, :30] = 0
    with rasterio.open(tmp_path / "rgbn.tif", "w", driver="GTiff", width=120, height=120, count=4,
                       dtype="uint8") as dst:
        dst.write(rgbn)
        assert dst.colorinterp[3] == rasterio.enums.ColorInterp.alpha
    assert np.array_equal(read_image(str(tmp_path / "rgbn.tif")), rgbn)


def test_sixteen_bit_pngs_and_jpeg_2000_keep_their_values(tmp_path):
    """Real Sentinel-2 bands (uint16 reflectances up to a few thousand) saved as a 16-bit grey PNG, a 16-bit RGB
    and RGBA PNG, and a 4-band JPEG 2000 (how Sentinel-2 and NAIP ship). PIL clipped the grey PNG at 255 and kept
    only the high byte of a colour one (4 of 30 real patches then read as all zero); it reads a JPEG 2000 as 8-bit
    RGB. Each now reads back value for value, alpha dropped."""
    from conftest import BEN_V1_EXAMPLE
    from PIL import Image

    from geodino.archive.pixels import read_image

    folder = sorted(p for p in BEN_V1_EXAMPLE.iterdir() if p.is_dir())[0]
    band_names = ("B04", "B03", "B02", "B08")
    bands = np.stack([rasterio.open(folder / f"{folder.name}_{band}.tif").read(1) for band in band_names])
    assert bands.max() > 255 and bands.dtype == np.uint16
    Image.fromarray(bands[0]).save(tmp_path / "b04.png")
    opaque = np.full_like(bands[:1], 65535)
    written = {"rgb.png": ("PNG", bands[:3], {}), "rgba.png": ("PNG", np.concatenate([bands[:3], opaque]), {}),
               "rgbn.jp2": ("JP2OpenJPEG", bands, {"QUALITY": 100, "REVERSIBLE": "YES"})}
    for name, (driver, array, options) in written.items():
        with rasterio.open(tmp_path / name, "w", driver=driver, width=120, height=120, count=len(array),
                           dtype="uint16", **options) as out:
            out.write(array)
    expected = {"b04.png": np.repeat(bands[:1], 3, axis=0), "rgb.png": bands[:3], "rgba.png": bands[:3],
                "rgbn.jp2": bands}
    for name, pixels in expected.items():
        image = read_image(str(tmp_path / name))
        assert image.dtype == np.uint16 and np.array_equal(image, pixels), name


def test_a_users_table_is_checked_as_a_whole(tmp_path):
    """Duplicates across splits, split spellings, class-name typos and odd image sizes, each named by row; two
    images whose short names (path without extension, / as _) would be the same keep names of their own."""
    import shutil

    from conftest import EUROSAT

    from geodino.data.indexed import labelled_images

    sources = sorted((EUROSAT / "images" / "Forest").glob("*.jpg"))[:4]
    for path in sources:
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(sources[0], tmp_path / "copy-of-first.jpg")  # other name, identical pixels
    from PIL import Image

    Image.open(sources[1]).resize((32, 32)).save(tmp_path / "small.jpg")
    others = sorted((EUROSAT / "images" / "River").glob("*.jpg"))[:3]
    shutil.copy(others[2], tmp_path / "both.jpg")
    (tmp_path / "x").mkdir()
    shutil.copy(others[0], tmp_path / "x" / "y.jpg")
    shutil.copy(others[1], tmp_path / "x_y.png")
    table = pd.DataFrame([
        {"path": sources[0].name, "label": "Forest", "split": "Train"},  # row 2
        {"path": sources[1].name, "label": "Forest", "split": "valid"},  # row 3
        {"path": sources[2].name, "label": "Forrest", "split": "test"},  # row 4: a typo of Forest
        {"path": sources[3].name, "label": "forest", "split": "holdout"},  # row 5: no such split
        {"path": "copy-of-first.jpg", "label": "Forest", "split": "test"},  # row 6: row 2's pixels
        {"path": sources[0].name, "label": "Forest", "split": "test"},  # row 7: row 2's path
        {"path": "small.jpg", "label": "Forest", "split": "train"},  # row 8: 32 px among 64 px images: resized
        {"path": "x/y.jpg", "label": "River", "split": "train"},  # row 9: short name x_y
        {"path": "x_y.png", "label": "River", "split": "test"},  # row 10: short name x_y too
        {"path": "both.jpg", "label": "Forest|River", "split": "train"},  # row 11: two labels, not joined by ';'
    ])
    text = table.to_csv(index=False).replace(",", ", ")  # typed by hand: a space after each comma
    (tmp_path / "table.csv").write_text(text)
    done = prepare_cli(tmp_path / "table.csv", "--out", tmp_path / "m.parquet", "--workers", "1")
    assert done.returncode == 0, done.stderr
    frame = pd.read_parquet(tmp_path / "m.parquet").set_index("path")
    assert dict(frame["original_split"]) == {sources[0].name: "train", sources[1].name: "validation",
                                             sources[2].name: "test", "x/y.jpg": "train", "x_y.png": "test",
                                             "both.jpg": "train", "small.jpg": "train"}
    # names key a feature's split, a pack's rows and predict's resume: one shared would mix train and test
    assert frame["name"].is_unique and dict(frame["name"])["x/y.jpg"] == "x/y.jpg"
    assert dict(frame["name"])[sources[0].name] == sources[0].stem  # the short name where it is unique
    reasons = pd.read_csv(tmp_path / "m.rejects.csv").set_index("path")["reason"].to_dict()
    assert reasons[sources[3].name].startswith("row 5: split 'holdout' is not one of train, validation, test")
    assert reasons["copy-of-first.jpg"] == (f"row 6: same image (identical pixels) as row 2 ({sources[0].name}, "
                                            "split train)")
    # an image of another size is kept (before: rejected, `row 8: image has 32x32 px, the others 64x64 px`) and
    # read at the table's size: the 32 px copy of row 3's image reads as that image, blurred
    assert ("warning: 1 of 7 images are not 64x64 px like the others and are resized to it when read (e.g. row 8 "
            "(32x32 px))") in done.stdout
    images, _ = labelled_images(DataConfig(metadata=str(tmp_path / "m.parquet"), split=None))
    order = list(pd.read_parquet(tmp_path / "m.parquet")["path"])
    small = images[order.index("small.jpg")]
    distances = [float((small - images[order.index(name)]).abs().mean()) for name in (sources[1].name, sources[2].name)]
    assert images.shape[-2:] == (64, 64) and distances[0] < distances[1] / 2, distances
    assert "warning: class names that differ only by case or a typo: 'Forest' and 'Forrest'" in done.stdout
    assert ("warning: labels that join other classes with ',' or '|' (a row's labels are separated by ';'): "
            "'Forest|River'; each is its own class") in done.stdout
    strict = prepare_cli(tmp_path / "table.csv", "--out", tmp_path / "strict.parquet", "--workers", "1", "--strict")
    assert strict.returncode == 2 and "'Forest' and 'Forrest'" in strict.stderr
    assert not (tmp_path / "strict.parquet").exists()  # refused before writing anything


def test_prepare_and_pack_never_replace_files_they_did_not_write(tmp_path):
    """--out at the user's own table or parquet, --pack into a folder of theirs: refused, the files untouched."""
    table = pd.read_csv(EUROSAT / "labels.csv").head(20)
    user_table = tmp_path / "my_images.parquet"
    table.to_parquet(user_table)
    before = user_table.read_bytes()
    same = prepare_cli(user_table, "--out", user_table, "--data_dir", EUROSAT, "--workers", "1")
    assert same.returncode == 2 and "is the table being prepared" in same.stderr
    other = tmp_path / "results.parquet"
    other.write_bytes(before)  # some parquet of the user's, no card beside it
    replaced = prepare_cli(user_table, "--out", other, "--data_dir", EUROSAT, "--workers", "1")
    assert replaced.returncode == 2 and f"--out {other} exists and was not written by prepare" in replaced.stderr
    assert user_table.read_bytes() == before and other.read_bytes() == before
    theirs = tmp_path / "theirs"  # a folder of the user's, with a metadata.json of their own and no parquet
    theirs.mkdir()
    (theirs / "metadata.json").write_text('{"mine": true}')
    with pytest.raises(OutputError, match=r"would replace .*metadata.json, which exists and was not written by"):
        prepare(PrepareConfig(archive=str(user_table), out=str(theirs), data_dir=str(EUROSAT), workers=1))
    assert sorted(p.name for p in theirs.iterdir()) == ["metadata.json"]  # before: replaced by prepare's card
    assert (theirs / "metadata.json").read_text() == '{"mine": true}'
    unwritable = prepare_cli(user_table, "--out", tmp_path / "my_images.parquet" / "m.parquet", "--workers", "1")
    assert unwritable.returncode == 2 and "cannot create its folder" in unwritable.stderr  # before any image is read

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    packed = prepare_cli(user_table, "--out", tmp_path / "m.parquet", "--data_dir", EUROSAT, "--workers", "1",
                         "--pack", folder)
    assert packed.returncode == 2 and "holds 1 files and no pack.json" in packed.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    again = prepare_cli(user_table, "--out", tmp_path / "m.parquet", "--data_dir", EUROSAT, "--workers", "1")
    assert again.returncode == 0, again.stderr  # prepare's own output from the run above: replaced, as before


def test_probe_sweep_and_pictures_never_replace_files_they_did_not_write(ben30_metadata, tmp_path):
    """The user's files carrying an output's name (metrics.json, comparison.csv, attention.png) survive byte for
    byte; the refusal is one line and comes before any Ray, features or training; files geodino wrote are
    replaced. The entry scripts run as users run them, in one fresh process (tests/entry_driver.py)."""
    import json

    from entry_driver import run_lines

    folder = tmp_path / "mine"
    folder.mkdir()
    users = {name: f"the user's own {name}".encode() for name in ("metrics.json", "comparison.csv", "attention.png")}
    for name, content in users.items():
        (folder / name).write_bytes(content)
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text("\n".join(json.dumps({"epoch": e, "loss": 5 - e, "lr": 1e-4, "teacher_entropy": 3.0,
                                                       "max_entropy": 6.0}) for e in range(3)))
    weights = ["--pretrained_weights", "random:vit_tiny/8", "--metadata_dir", str(ben30_metadata)]  # a test split
    pictures = str(tmp_path / "pictures")
    lines = [("linear_probe.py", [*weights, "--output_dir", str(folder)]),
             ("sweep_probe.py", ["--backbone", "r=random:vit_tiny/8", "--metadata_dir", str(ben30_metadata),
                                 "--output_dir", str(folder)]),
             ("visualize.py", [*weights, "--output_dir", str(folder)]),
             ("visualize.py", ["--run", str(run), "--output_dir", pictures]),
             ("visualize.py", ["--run", str(run), "--output_dir", pictures]),  # its own file: replaced
             ("visualize.py", ["--run", str(tmp_path), "--output_dir", pictures]),
             ("visualize.py", ["--run", str(folder), "--output_dir", pictures]),
             ("visualize.py", ["--run", str(tmp_path / "out"), "--output_dir", pictures])]
    # the --output_dir a run was copied to: its final/checkpoint.pth records where the run (and its log) is stored
    (tmp_path / "out" / "final").mkdir(parents=True)
    torch.save({"args": {"storage_path": str(tmp_path), "run_name": "run"}},
               tmp_path / "out" / "final" / "checkpoint.pth")
    probe, sweep, attention, first, second, runs, no_log, copied = run_lines(lines)
    for (script, _), result, name in zip(lines, (probe, sweep, attention),
                                         ("metrics.json", "comparison.csv", "attention.png")):
        assert result["status"] == 2 and not result["ray_started"], result
        assert result["stderr"].strip().splitlines() == [
            f"{script}: error: --output_dir {folder}: {name} already there and not written by geodino; {script} "
            "does not replace files it did not write: choose another --output_dir, or move it away yourself"]
    assert {name: (folder / name).read_bytes() for name in users} == users
    assert sorted(p.name for p in folder.iterdir()) == sorted(users)  # nothing added, not even the ledger
    assert first["status"] == second["status"] == 0, (first, second)
    assert second["stdout"].strip() == f"{pictures}/pretraining_curves.png"
    assert runs["status"] == 2 and runs["stderr"].strip().splitlines() == [
        f"visualize.py: error: --run {tmp_path}: a folder of runs (run); give one: --run {run}"]
    assert no_log["status"] == 2 and no_log["stderr"].strip().splitlines() == [
        f"visualize.py: error: --run {folder}: no log.txt there; give a pretraining run's folder (--storage_path/"
        "--run_name, it holds log.txt) or the --output_dir it was copied to"]
    assert copied["status"] == 0 and copied["stdout"].strip() == f"{pictures}/pretraining_curves.png", copied
