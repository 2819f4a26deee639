"""Transfer on real EuroSAT images: cached features, a real Tune sweep, and prepare -> pretrain -> probe."""

import json
import os

import pandas as pd
import pytest
import torch
from conftest import EUROSAT, FAKE_SECRET

from geodino.archive.prepare import PrepareConfig, prepare
from geodino.dino.models import create_backbone
from geodino.transfer.linear_probe import LinearProbeConfig, run_linear_probe, split_features
from geodino.transfer.sweep import SweepConfig, run_sweep


@pytest.fixture(scope="module")
def eurosat_small(tmp_path_factory):
    """90 real EuroSAT images: 6 train and 3 test per class (no validation split, like the subset itself)."""
    folder = tmp_path_factory.mktemp("eurosat-small")
    table = pd.read_csv(EUROSAT / "labels.csv")
    table = pd.concat([table[table["split"] == "train"].groupby("label").head(6),
                       table[table["split"] == "test"].groupby("label").head(3)])
    table.to_csv(folder / "images.csv", index=False)
    result = prepare(PrepareConfig(archive=str(folder / "images.csv"), out=str(folder / "metadata.parquet"),
                                   data_dir=str(EUROSAT), workers=1))
    return folder, result.metadata_path


@pytest.mark.timeout(600)
def test_sweep_two_backbones_two_configs_table_and_plot(ray_session, eurosat_small, tmp_path):
    folder, metadata = eurosat_small
    weights = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save(create_backbone("vit_tiny", 16, 3).state_dict(), weights)
    config = SweepConfig(backbones=["random=random:vit_tiny/16", f"file={weights}"], metadata_dir=metadata,
                         lrs=[0.01, 0.1], weight_decays=[0.0], epochs=4, n_last_blocks=1,
                         storage_path=str(tmp_path / "sweeps"), name="s", cache_dir=str(tmp_path / "cache"))
    result = run_sweep(config)
    assert result["extractions"] == 4  # 2 backbones x (train, test); validation is carved from train
    assert len(result["trials"]) == 4
    table = result["table"].set_index("backbone")
    assert list(table.index) == ["random", "file"] or set(table.index) == {"random", "file"}
    for column in ("test_ap_macro", "test_ap_micro", "test_top1", "knn_test_top1"):
        assert table[column].between(0, 1).all()
    assert result["per_class"].shape == (10, 2)
    with open(result["paths"]["comparison.png"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "average precision" in open(result["paths"]["comparison.md"]).read()
    # Features are cached: a second sweep over the same backbones runs no backbone at all.
    again = run_sweep(SweepConfig(**{**config.__dict__, "name": "s2", "lrs": [0.05]}))
    assert again["extractions"] == 0
    # Tune's results, TensorBoard events and the tables hold no credential of the environment.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20
    assert not [str(p) for p in written if FAKE_SECRET.encode() in p.read_bytes()]


def test_cached_features_are_reused_and_keyed_by_the_weights(ray_session, eurosat_small, tmp_path):
    _, metadata = eurosat_small
    weights = tmp_path / "w.pth"
    torch.save(create_backbone("vit_tiny", 16, 3).state_dict(), weights)
    config = LinearProbeConfig(metadata_dir=metadata, cache_dir=str(tmp_path / "cache"), n_last_blocks=2)
    first, extracted = split_features(str(weights), config)
    assert extracted == 2 and first["train"]["features"].shape[1] == 2 * 192
    again, extracted = split_features(str(weights), config)
    assert extracted == 0
    torch.testing.assert_close(torch.from_numpy(again["test"]["features"]), torch.from_numpy(first["test"]["features"]))
    torch.manual_seed(5)
    torch.save(create_backbone("vit_tiny", 16, 3).state_dict(), weights)  # new weights, same path
    _, extracted = split_features(str(weights), config)
    assert extracted == 2


@pytest.mark.timeout(900)
def test_end_to_end_prepare_pretrain_probe_on_real_images(ray_session, eurosat_small, tmp_path):
    from geodino.dino.config import PretrainConfig
    from geodino.launch import run_pretraining

    _, metadata = eurosat_small
    pretrained = run_pretraining(PretrainConfig(
        arch="vit_tiny", patch_size=16, out_dim=128, global_crops_size=32, local_crops_size=16, local_crops_number=2,
        epochs=1, warmup_epochs=0, batch_size_per_gpu=16, metadata_dir=metadata, storage_path=str(tmp_path / "runs"),
        run_name="e2e"))
    run_folder = os.path.dirname(pretrained.checkpoint_dir)
    report = run_linear_probe(LinearProbeConfig(pretrained_weights=run_folder, arch="vit_tiny", patch_size=16,
                                                num_labels=10, epochs=5, metadata_dir=metadata, n_last_blocks=1,
                                                output_dir=str(tmp_path / "probe"), cache_dir=str(tmp_path / "cache")))
    assert report["task"] == "single_label" and report["rows"]["test"] == 30
    for method in ("linear", "knn"):
        assert 0 <= report[method]["test"]["top1"] <= 1 and 0 < report[method]["test"]["ap_macro"] <= 1
    saved = json.loads(open(tmp_path / "probe" / "metrics.json").read())
    assert saved["linear"]["test"]["top1"] == report["linear"]["test"]["top1"]
    assert torch.load(tmp_path / "probe" / "probe.pth", weights_only=True)["classes"] == report["classes"]


@pytest.mark.timeout(600)
def test_predict_resumes_a_partly_written_output(ray_session, eurosat_small, tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    from geodino.transfer.predict import PredictConfig, run_predict

    _, metadata = eurosat_small
    run_linear_probe(LinearProbeConfig(pretrained_weights="random:vit_tiny/16", epochs=3, metadata_dir=metadata,
                                       n_last_blocks=1, output_dir=str(tmp_path / "probe"),
                                       cache_dir=str(tmp_path / "cache")))
    config = PredictConfig(pretrained_weights="random:vit_tiny/16", probe=str(tmp_path / "probe" / "probe.pth"),
                           metadata_dir=metadata, out=str(tmp_path / "pred"), split="test")
    first = run_predict(config)
    assert first["rows"] == 30 and first["new"] == 30
    (tmp_path / "pred" / "crashed-mid-write.parquet").write_bytes(b"PAR1 truncated")
    second = run_predict(PredictConfig(**{**config.__dict__, "split": None}))
    assert second["skipped"] == 30 and second["new"] == 60 and second["rows"] == second["expected"] == 90
    table = pq.read_table(str(tmp_path / "pred")).to_pandas()
    assert table["name"].is_unique and len(table) == 90
    probs = np.stack(table["probabilities"])
    assert probs.shape == (90, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert all(len(p) == 1 for p in table["predicted"])
    embedded = run_predict(PredictConfig(pretrained_weights="random:vit_tiny/16", metadata_dir=metadata,
                                         out=str(tmp_path / "emb"), embeddings=True, split="test"))
    vectors = np.stack(pq.read_table(str(tmp_path / "emb")).column("embedding").to_pylist())
    assert embedded["rows"] == 30 and vectors.shape == (30, 192)


def test_attention_maps_and_curves_render(tmp_path):
    import numpy as np
    from PIL import Image

    from geodino.dino.models import create_backbone
    from geodino.transfer.visualize import last_block_attention, plot_attention, plot_curves

    model = create_backbone("vit_tiny", 8, 3).eval()
    images = torch.rand(2, 3, 32, 32)
    maps = last_block_attention(model, images)
    assert maps.shape == (2, 3, 4, 4)
    torch.testing.assert_close(maps.sum((2, 3)) <= 1.0 + 1e-5, torch.ones(2, 3, dtype=torch.bool))
    path = plot_attention(model, images, ["a", "b"], str(tmp_path / "attention.png"))
    assert Image.open(path).size[0] > 500
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.txt").write_text("\n".join(
        json.dumps({"epoch": e, "loss": 5 - e, "lr": 1e-4, "teacher_entropy": 3.0, "max_entropy": 6.0}) for e in range(3)))
    assert np.asarray(Image.open(plot_curves(str(tmp_path / "run"), str(tmp_path / "c.png")))).std() > 0
