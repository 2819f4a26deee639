"""Loading backbones from every kind of SOURCE, and refusing what does not fit or is unsafe."""

import os
import pickle
import re

import pytest
import torch

from geodino.dino.models import build_student_teacher, create_backbone
from geodino.errors import ConfigError
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


def test_weights_made_for_another_image_size_keep_their_position_embeddings(tmp_path):
    """A ViT trained on 64-px crops has 4x4 + 1 position embeddings, not DINO's 14x14 + 1: it loads as what it
    is and gives, at 64 px, exactly the features of the model that saved it."""
    import timm

    torch.manual_seed(0)
    trained = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64).eval()
    torch.save(trained.state_dict(), tmp_path / "at64.pth")
    images = torch.rand(2, 3, 64, 64)
    loaded = load_backbone(str(tmp_path / "at64.pth"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images), trained(images))
    state = trained.state_dict()
    torch.save({**state, "pos_embed": state["pos_embed"][:, :15]}, tmp_path / "odd.pth")
    with pytest.raises(BackboneMismatchError, match="15 tokens, not a class token and a square grid"):
        load_backbone(str(tmp_path / "odd.pth"))
    wider = {**state, "blocks.0.mlp.fc1.weight": torch.zeros(1024, 192)}
    torch.save(wider, tmp_path / "wider.pth")
    with pytest.raises(BackboneMismatchError, match=r"does not fit a vit_tiny/16 \(size mismatch for blocks.0.mlp"):
        load_backbone(str(tmp_path / "wider.pth"))


def test_an_empty_or_cut_off_weights_file_is_called_so(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(BackboneMismatchError, match="empty.pth: the file is empty"):
        load_backbone(str(tmp_path / "empty.pth"))
    torch.save(create_backbone("vit_tiny", 16, 3).state_dict(), tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:100_000])
    with pytest.raises(BackboneMismatchError, match="cut.pth: refused to load .*cut off or damaged"):
        load_backbone(str(tmp_path / "cut.pth"))
    (tmp_path / "notes.pth").write_text("my weights are elsewhere")
    with pytest.raises(BackboneMismatchError, match="notes.pth: refused to load .*not a PyTorch checkpoint"):
        load_backbone(str(tmp_path / "notes.pth"))


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/geodino-pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"teacher": Exploit()}, handle)
    with pytest.raises(BackboneMismatchError, match="refused to load"):
        load_backbone(str(path))
    torch.save({"teacher": Exploit()}, tmp_path / "evil-torch.pth")
    with pytest.raises(BackboneMismatchError, match="unpickling it would run code"):
        load_backbone(str(tmp_path / "evil-torch.pth"))
    assert not os.path.exists("/tmp/geodino-pwned")


def test_timm_hub_source_without_network_says_how_to_pass_a_file():
    """A user's mistake (GeodinoError: one line, exit 2), not a traceback; a typo is named before the hub is asked."""
    from geodino.errors import GeodinoError

    with pytest.raises(GeodinoError, match="pass the file path as the backbone instead"):
        load_backbone("timm:vit_small_patch16_224.dino")
    with pytest.raises(GeodinoError, match="no model 'vit_smal_patch16_224' \\(did you mean vit_small_patch16_224"):
        load_backbone("timm:vit_smal_patch16_224.dino")
    with pytest.raises(GeodinoError, match="no weights 'dinov2' for vit_small_patch16_224 \\(it has: .*dino"):
        load_backbone("timm:vit_small_patch16_224.dinov2")


def test_a_machine_without_network_is_told_at_once_and_its_hub_cache_is_used(tmp_path):
    """Without network, huggingface_hub retried each weight file 5 times: 52 s and 22 'Retrying' lines before the
    error (measured on this machine). The hub is now asked once; unreachable, the local cache alone is read: weights
    cached earlier load (here a cache laid out as huggingface_hub writes it), others are named in one line. The hub
    is an endpoint where nothing listens (HF_ENDPOINT), in a fresh process without HF_HUB_OFFLINE."""
    import subprocess
    import sys

    import timm
    from conftest import free_port
    from safetensors.torch import save_file

    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    script = ("import sys; from geodino.errors import GeodinoError; from geodino.transfer.backbones import "
              "load_backbone\ntry:\n    model = load_backbone(sys.argv[1]).model\nexcept GeodinoError as error:\n"
              "    sys.exit(str(error))\nprint(float(model.blocks[0].attn.qkv.weight.sum()))")
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_CACHE": str(tmp_path / "hub")}

    def load(source: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, source], capture_output=True, text=True, env=env)

    missing = load(f"timm:{name}")
    assert missing.returncode == 1 and "Retrying" not in missing.stderr, missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"timm:{name}: could not fetch pretrained weights (the hub cannot be reached (127.0.0.1:"
        f"{env['HF_ENDPOINT'].rsplit(':', 1)[1]}: Connection refused) and they are not in the local cache). Without hub"
        f" access, download the weights on a connected machine (e.g. timm.create_model('{name}', pretrained=True) and "
        "torch.save(model.state_dict(), 'weights.pth')) and pass the file path as the backbone instead."]
    weights = timm.create_model(name.split(".")[0]).state_dict()
    snapshot = tmp_path / "hub" / f"models--timm--{name}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(weights, snapshot / "model.safetensors")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    cached = load(f"timm:{name}")
    assert cached.returncode == 0, cached.stderr
    assert float(cached.stdout) == pytest.approx(float(weights["blocks.0.attn.qkv.weight"].sum()))


def test_sources_that_name_no_weights_say_what_to_give(tmp_path):
    """Before: ZeroDivisionError and ValueError tracebacks for the patch size, and `s3://...` or a folder without
    weights reported as a missing file of another name."""
    from geodino.errors import GeodinoError

    for source, says in (("random:vit_tiny/0", "after '/' comes the patch side in pixels, such as 8 or 16"),
                         ("random:vit_tiny/16px", "not '16px'"),
                         ("s3://bucket/run/teacher_backbone.pth", "copy them here first (e.g. aws s3 cp s3://bucket"),
                         (str(tmp_path), f"{tmp_path}: a folder without weights (no final/teacher_backbone.pth")):
        with pytest.raises(GeodinoError, match=re.escape(says)):
            load_backbone(source)
    # a run still going (or stopped): Ray Train's checkpoint folders, no final/ yet
    run = tmp_path / "run"
    for stamp in ("2026-11-29_10-00-00.1", "2026-11-29_10-05-00.2"):
        (run / f"checkpoint_{stamp}").mkdir(parents=True)
        (run / f"checkpoint_{stamp}" / "teacher_backbone.pth").write_bytes(b"")
    with pytest.raises(GeodinoError, match=re.escape(
            f"{run}: the run has no final/teacher_backbone.pth yet (it is still running, or stopped before its last "
            f"epoch); to probe its newest checkpoint, give --pretrained_weights "
            f"{run}/checkpoint_2026-11-29_10-05-00.2/teacher_backbone.pth")):  # before: 'a folder without weights'
        load_backbone(str(run))


def test_random_baseline_and_names():
    backbone = load_backbone("random:vit_tiny/8", in_chans=5)
    assert backbone.patch_size == 8 and backbone.in_chans == 5
    assert parse_named("ben=runs/dino") == ("ben", "runs/dino")
    assert parse_named("random:vit_small") == ("random:vit_small", "random:vit_small")
    assert parse_named("imagenet=timm:vit_small_patch16_224.dino") == ("imagenet", "timm:vit_small_patch16_224.dino")
    for spec in ("=random:vit_tiny", "ours=", " = "):
        with pytest.raises(ConfigError, match="give NAME=SOURCE"):
            parse_named(spec)


def test_a_weights_file_whose_name_holds_an_equals_sign_is_a_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr=0.1.pth").write_bytes(b"")
    assert parse_named("lr=0.1.pth") == ("lr=0.1.pth", "lr=0.1.pth")
    assert parse_named("fast=lr=0.1.pth") == ("fast", "lr=0.1.pth")


def test_a_run_folder_loads_its_final_teacher(tmp_path):
    """What pretrain.py leaves (RUN/final/teacher_backbone.pth) is a backbone SOURCE as it is."""
    model = create_backbone("vit_tiny", 8, 3)
    (tmp_path / "run" / "final").mkdir(parents=True)
    torch.save(model.state_dict(), tmp_path / "run" / "final" / "teacher_backbone.pth")
    loaded = load_backbone(str(tmp_path / "run"), arch="vit_tiny", patch_size=8)
    torch.testing.assert_close(loaded.model.state_dict()["blocks.5.attn.qkv.weight"],
                               model.state_dict()["blocks.5.attn.qkv.weight"])
