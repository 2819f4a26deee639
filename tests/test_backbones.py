"""Loading backbones from every kind of SOURCE, and refusing what does not fit or is unsafe."""

import os
import pickle

import pytest
import torch

from geodino.dino.models import build_student_teacher, create_backbone
from geodino.transfer.backbones import BackboneMismatchError, load_backbone, parse_named


@pytest.fixture(scope="module")
def dino_checkpoint(tmp_path_factory):
    """A checkpoint in facebookresearch/dino's layout: DDP 'module.' prefixes, wrapper 'backbone.'/'head.' keys."""
    folder = tmp_path_factory.mktemp("dino")
    student, teacher = build_student_teacher("vit_tiny", 16, 3, out_dim=32, norm_last_layer=True, drop_path_rate=0.0)
    with torch.no_grad():  # after training the two differ; a loader that mixes them up must show it
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    ddp_student = {f"module.{k}": v for k, v in student.state_dict().items()}
    path = folder / "checkpoint.pth"
    torch.save({"student": ddp_student, "teacher": teacher.state_dict(), "epoch": 3, "args": {"arch": "vit_tiny"}}, path)
    return path, teacher, student


def test_dino_format_checkpoint_loads_the_teacher(dino_checkpoint):
    path, teacher, student = dino_checkpoint
    backbone = load_backbone(str(path), arch="vit_tiny", patch_size=16)
    assert (backbone.arch, backbone.patch_size, backbone.in_chans) == ("vit_tiny", 16, 3)
    key = "blocks.3.attn.qkv.weight"
    torch.testing.assert_close(backbone.model.state_dict()[key], teacher.state_dict()[f"backbone.{key}"])
    loaded_student = load_backbone(f"{path}#student")
    torch.testing.assert_close(loaded_student.model.state_dict()[key], student.state_dict()[f"backbone.{key}"])
    assert not torch.equal(loaded_student.model.state_dict()[key], backbone.model.state_dict()[key])
    assert not any(p.requires_grad for p in loaded_student.model.parameters())


def test_timm_format_state_dict_and_band_adaptation(tmp_path):
    model = create_backbone("vit_tiny", 8, 3)
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    same = load_backbone(str(path))
    assert same.patch_size == 8
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(same.model(x), model.eval()(x))
    twelve = load_backbone(str(path), in_chans=12)
    # repeated RGB filters scaled by 3/12: a grey 12-band image gives the grey RGB image's features
    grey = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(twelve.model(grey.expand(-1, 12, -1, -1)), model(grey.expand(-1, 3, -1, -1)),
                               atol=1e-4, rtol=1e-4)


def test_mismatches_are_named(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(create_backbone("vit_small", 16, 4).state_dict(), path)
    with pytest.raises(BackboneMismatchError, match="arch is vit_small, not vit_tiny.*patch size is 16, not 8"):
        load_backbone(str(path), arch="vit_tiny", patch_size=8, in_chans=4)
    with pytest.raises(BackboneMismatchError, match="takes 4 bands but the data has 12"):
        load_backbone(str(path), in_chans=12)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/geodino-pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"teacher": Exploit()}, handle)
    with pytest.raises(BackboneMismatchError, match="refused to load"):
        load_backbone(str(path))
    assert not os.path.exists("/tmp/geodino-pwned")


def test_timm_hub_source_without_network_says_how_to_pass_a_file():
    with pytest.raises(RuntimeError, match="pass the file path as the backbone instead"):
        load_backbone("timm:vit_small_patch16_224.dino")


def test_random_baseline_and_names():
    backbone = load_backbone("random:vit_tiny/8", in_chans=5)
    assert backbone.patch_size == 8 and backbone.in_chans == 5
    assert parse_named("ben=runs/dino") == ("ben", "runs/dino")
    assert parse_named("random:vit_small") == ("random:vit_small", "random:vit_small")
    assert parse_named("imagenet=timm:vit_small_patch16_224.dino") == ("imagenet", "timm:vit_small_patch16_224.dino")


def test_a_run_folder_loads_its_final_teacher(tmp_path):
    """What pretrain.py leaves (RUN/final/teacher_backbone.pth) is a backbone SOURCE as it is."""
    model = create_backbone("vit_tiny", 8, 3)
    (tmp_path / "run" / "final").mkdir(parents=True)
    torch.save(model.state_dict(), tmp_path / "run" / "final" / "teacher_backbone.pth")
    loaded = load_backbone(str(tmp_path / "run"), arch="vit_tiny", patch_size=8)
    torch.testing.assert_close(loaded.model.state_dict()["blocks.5.attn.qkv.weight"],
                               model.state_dict()["blocks.5.attn.qkv.weight"])
