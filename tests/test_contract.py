"""Weights carry their data contract; probes take it as their default and refuse what contradicts it."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from geodino.archive.card import load_card
from geodino.dino.checkpoint import data_contract, write_checkpoint
from geodino.dino.models import create_backbone
from geodino.transfer.contract import ContractError, contract_of, resolve_inputs
from geodino.transfer.predict import PredictConfig, resolved

BEN_RGB = {"arch": "vit_tiny", "patch_size": 8, "global_crops_size": 64, "in_chans": 3,
           "inputs": {"bands": ["B04", "B03", "B02"], "rgb": True, "normalize": "max", "pixel_max": 2750.0,
                      "format": "ben_v1"}}


@pytest.fixture
def run_folder(tmp_path):
    """What pretraining leaves: final/ with checkpoint.pth, teacher_backbone.pth and its contract."""
    model = create_backbone("vit_tiny", 8, 3)
    write_checkpoint(str(tmp_path / "run" / "final"), {"args": BEN_RGB, "epoch": 1},
                     {k: v for k, v in model.state_dict().items()})
    return tmp_path / "run"


def test_the_backbone_file_carries_its_contract(run_folder):
    contract = json.loads((run_folder / "final" / "teacher_backbone.json").read_text())
    assert contract == data_contract(BEN_RGB) == contract_of(str(run_folder))
    assert contract["bands"] == ["B04", "B03", "B02"] and contract["image_size"] == 64 and contract["pixel_max"] == 2750
    assert contract_of(str(run_folder / "final" / "teacher_backbone.pth")) == contract
    assert contract_of(str(run_folder / "final" / "checkpoint.pth")) == contract  # the args say the same
    assert contract_of("random:vit_tiny/8") is None
    assert contract_of("timm:vit_small_patch16_224.dino")["assumes"].startswith("R, G, B in [0, 1], standardised")


def test_probes_default_to_the_contract_and_refuse_what_contradicts_it(run_folder, ben_v1_metadata, capsys):
    card = load_card(str(ben_v1_metadata))
    source = str(run_folder)
    inputs = resolve_inputs(source, card, None, None, None, force=False)
    assert (inputs.bands, inputs.normalize, inputs.image_size) == ("rgb", "max", 64)  # all from the weights
    with pytest.raises(ContractError, match=r"the weights take bands \['B04', 'B03', 'B02'\], the data gives "
                                            r"\['B02', 'B03', 'B04'\]"):
        resolve_inputs(source, card, "B02,B03,B04", None, None, force=False)
    with pytest.raises(ContractError, match="trained with --normalize max, not stats.*--force"):
        resolve_inputs(source, card, None, "stats", None, force=False)
    assert resolve_inputs(source, card, "B02,B03,B04", "stats", 96, force=True).image_size == 96
    assert resolve_inputs("random:vit_tiny/8", card, None, None, None, force=False).bands == "rgb"


def test_rgb_weights_take_rgb_images_and_say_the_scale_differs(run_folder, eurosat_metadata, capsys):
    inputs = resolve_inputs(str(run_folder), load_card(eurosat_metadata), None, None, None, force=False)
    assert inputs.bands == "rgb"
    assert "the weights saw pixels mapped from 0..2750 to 0..1, this data's are mapped from 0..255" in capsys.readouterr().err


def test_rgb_weights_take_a_geotiff_table_that_says_it_is_rgb(run_folder, tmp_path):
    """UC Merced's kind: 8-bit RGB TIFFs, whose colour interpretation says red, green, blue. Before, RGB weights
    (BigEarthNet's B04, B03, B02, or ImageNet's through timm) were refused on them without --force. Measurement
    bands (gray) are not taken for colours, and neither are a chosen two of the three."""
    import numpy as np
    import pandas as pd
    import rasterio
    from conftest import EUROSAT
    from PIL import Image

    from geodino.archive.config import PrepareConfig
    from geodino.archive.prepare import prepare

    for index, source in enumerate(sorted((EUROSAT / "images" / "River").glob("*.jpg"))[:4]):
        Image.open(source).save(tmp_path / f"rgb{index}.tif")
        pixels = np.asarray(Image.open(source)).transpose(2, 0, 1).astype("uint16") * 10
        with rasterio.open(tmp_path / f"gray{index}.tif", "w", driver="GTiff", width=64, height=64, count=3,
                           dtype="uint16") as dst:
            dst.write(pixels)
    cards = {}
    for kind in ("rgb", "gray"):
        pd.DataFrame({"path": [f"{kind}{i}.tif" for i in range(4)], "label": "River"}).to_csv(tmp_path / f"{kind}.csv")
        prepare(PrepareConfig(archive=str(tmp_path / f"{kind}.csv"), out=str(tmp_path / f"{kind}.parquet"), workers=1))
        cards[kind] = load_card(str(tmp_path / f"{kind}.parquet"))
    assert cards["rgb"]["rgb"] is True and cards["gray"]["rgb"] is False
    assert resolve_inputs(str(run_folder), cards["rgb"], None, None, None, force=False).bands == "rgb"
    for card, bands in ((cards["gray"], None), (cards["rgb"], "band1,band2")):
        with pytest.raises(ContractError, match="the weights take bands"):
            resolve_inputs(str(run_folder), card, bands, None, None, force=False)


PROBE_SETTINGS = {"bands": "rgb", "normalize": "max", "arch": "vit_tiny", "patch_size": 8, "n_last_blocks": 4,
                  "avgpool_patchtokens": False, "image_size": 64}


def test_predict_takes_the_probe_of_these_weights_however_spelt_and_refuses_others(run_folder, eurosat_metadata, tmp_path):
    probe = tmp_path / "probe.pth"
    card = load_card(eurosat_metadata)
    torch.save({"state_dict": {}, "classes": card["classes"], "task": card["task"], "backbone": "random:vit_tiny/8",
                "config": PROBE_SETTINGS}, probe)
    config = PredictConfig(pretrained_weights=str(run_folder), probe=str(probe), metadata_dir=eurosat_metadata)
    with pytest.raises(ContractError, match="the probe was fitted on the features of random:vit_tiny/8, not of "):
        resolved(config)
    torch.save({"state_dict": {}, "classes": ["Forest", "Sea"], "task": "single_label", "backbone": "random:vit_tiny/8",
                "config": PROBE_SETTINGS}, probe)
    with pytest.raises(ContractError, match="the probe's 2 classes are not this data's 10"):
        resolved(PredictConfig(pretrained_weights="random:vit_tiny/8", probe=str(probe), metadata_dir=eurosat_metadata))

    # the same weights however the path is spelt (run folder, relative path) are accepted; another part is not
    from geodino.transfer.features import source_identity

    teacher = run_folder / "final" / "teacher_backbone.pth"
    torch.save({"state_dict": {}, "classes": card["classes"], "task": card["task"], "config": PROBE_SETTINGS,
                "backbone": source_identity(str(teacher))}, probe)
    for spelling in (str(run_folder), os.path.relpath(teacher)):
        assert resolved(PredictConfig(pretrained_weights=spelling, probe=str(probe), metadata_dir=eurosat_metadata))
    from geodino.transfer.predict import output_identity  # what a resumed predict must match

    assert output_identity(PredictConfig(pretrained_weights=str(run_folder), probe=str(probe),
                                         metadata_dir=eurosat_metadata)) == output_identity(PredictConfig(
        pretrained_weights=os.path.relpath(teacher), probe=os.path.relpath(probe),
        metadata_dir=os.path.relpath(eurosat_metadata)))
    student = f"{run_folder / 'final' / 'checkpoint.pth'}#student"
    with pytest.raises(ContractError, match="the probe was fitted on the features of .*teacher_backbone.pth@"):
        resolved(PredictConfig(pretrained_weights=student, probe=str(probe), metadata_dir=eurosat_metadata))


def test_the_probe_cli_refuses_a_contradiction_in_one_line_before_ray_starts(run_folder, eurosat_metadata, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "RAY_ADDRESS": "127.0.0.1:9"}  # joining Ray would fail
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "linear_probe.py"), "--pretrained_weights",
                           str(run_folder), "--metadata_dir", eurosat_metadata, "--normalize", "stats",
                           "--output_dir", str(tmp_path / "probe")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"linear_probe.py: error: {run_folder}: the weights were trained with --normalize max, not stats")
