"""The checkpoint files on their own: what is written, what loads back, what a damaged file says (no Ray)."""

import json
import os

import numpy as np
import pytest
import torch

from geodino.dino.checkpoint import (
    BACKBONE_FILE,
    CHECKPOINT_FILE,
    CONTRACT_FILE,
    data_contract,
    plain_values,
    read_checkpoint,
    source_path_and_part,
    strip_prefixes,
    write_checkpoint,
)

ARGS = {"arch": "vit_tiny", "patch_size": 8, "global_crops_size": 96, "in_chans": 4, "epochs": 3,
        "inputs": {"bands": ["B04", "B03", "B02", "B08"], "rgb": False, "normalize": "stats", "pixel_max": 2750.0,
                   "pixel_min": 0.0, "band_mean": [0.1, 0.2, 0.3, 0.4], "band_std": [1.0, 2.0, 3.0, 4.0], "format": "ben_v1",
                   "not_part_of_the_contract": 1}}


def test_a_written_checkpoint_loads_back_with_weights_only_and_carries_its_contract(tmp_path):
    student = {"w": torch.arange(6.0).reshape(2, 3)}
    state = {"student": student, "epoch": 2, "args": plain_values(ARGS),
             "metrics": plain_values([{"loss": np.float32(1.5), "lr": torch.tensor(0.25)}])}
    write_checkpoint(str(tmp_path / "final"), state, {"patch_embed.proj.weight": torch.ones(2, 2)})
    # DINO's own file names: its eval scripts, timm's loader and users' tools look for exactly these
    assert sorted(os.listdir(tmp_path / "final")) == ["checkpoint.pth", "teacher_backbone.json", "teacher_backbone.pth"]
    assert (CHECKPOINT_FILE, BACKBONE_FILE, CONTRACT_FILE) == ("checkpoint.pth", "teacher_backbone.pth",
                                                              "teacher_backbone.json")
    loaded = read_checkpoint(str(tmp_path / "final"))
    torch.testing.assert_close(loaded["student"]["w"], student["w"])
    assert loaded["epoch"] == 2 and loaded["metrics"] == [{"loss": 1.5, "lr": 0.25}]
    backbone = torch.load(tmp_path / "final" / BACKBONE_FILE, weights_only=True)
    assert list(backbone) == ["patch_embed.proj.weight"]
    contract = json.loads((tmp_path / "final" / CONTRACT_FILE).read_text())
    assert contract == {"arch": "vit_tiny", "patch_size": 8, "image_size": 96, "in_chans": 4,
                        "bands": ["B04", "B03", "B02", "B08"], "rgb": False, "normalize": "stats",
                        "pixel_max": 2750.0, "pixel_min": 0.0, "band_mean": [0.1, 0.2, 0.3, 0.4],
                        "band_std": [1.0, 2.0, 3.0, 4.0], "format": "ben_v1"}
    assert contract == data_contract(ARGS)
    assert not [name for name in os.listdir(tmp_path / "final") if name.endswith(".tmp")]


def test_rewriting_replaces_every_file_and_a_damaged_one_is_named(tmp_path):
    folder = str(tmp_path / "ckpt")
    write_checkpoint(folder, {"epoch": 1, "args": {}}, {})
    write_checkpoint(folder, {"epoch": 2, "args": {"arch": "vit_small"}}, {})
    assert read_checkpoint(folder)["epoch"] == 2
    assert json.loads((tmp_path / "ckpt" / CONTRACT_FILE).read_text())["arch"] == "vit_small"
    (tmp_path / "ckpt" / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(RuntimeError) as damaged:
        read_checkpoint(folder)
    assert str(damaged.value).startswith(f"{tmp_path / 'ckpt' / CHECKPOINT_FILE}: cannot load checkpoint (")


class RunsCode:
    """What a checkpoint must never smuggle in: an object whose unpickling calls a function."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    torch.save({"epoch": 1, "payload": RunsCode()}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(RuntimeError, match="cannot load checkpoint .*Unpickling"):
        read_checkpoint(str(tmp_path))


def test_plain_values_keeps_builtins_and_turns_the_rest_into_them():
    class Named:
        def __str__(self):
            return "named"

    value = {1: (np.int64(3), [torch.tensor(2.5), None, True]), "s": Named(), "f": 0.5}
    assert plain_values(value) == {"1": [3, [2.5, None, True]], "s": "named", "f": 0.5}
    assert type(plain_values({"x": np.int64(3)})["x"]) is int


def test_weights_source_parts_and_key_prefixes():
    assert source_path_and_part("runs/a/final#student") == ("runs/a/final", "student")
    assert source_path_and_part("runs/a/final#teacher") == ("runs/a/final", "teacher")
    assert source_path_and_part("runs/exp#3/final") == ("runs/exp#3/final", "teacher")
    assert source_path_and_part("w.pth") == ("w.pth", "teacher")
    assert strip_prefixes({"module.backbone.blocks.0": 1, "backbone.norm": 2, "head.last": 3, "x.module.y": 4}) == {
        "blocks.0": 1, "norm": 2, "head.last": 3, "x.module.y": 4}
    assert strip_prefixes({"module.a": 1}, prefixes=("backbone.",)) == {"module.a": 1}
