"""Transfer on real EuroSAT images: cached features, a real Tune sweep, and prepare -> pretrain -> probe."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import EUROSAT, FAKE_SECRET

from geodino.archive.prepare import PrepareConfig, prepare
from geodino.dino.config import PretrainConfig
from geodino.dino.models import create_backbone
from geodino.transfer.linear_probe import LinearProbeConfig, run_linear_probe, split_features, with_image_size
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


@pytest.mark.timeout(300)
def test_ctrl_c_ends_a_sweep_in_one_line_without_a_partial_comparison(ray_address, eurosat_small, tmp_path):
    """Ctrl-C during `python experiments/sweep_probe.py` (joining the session's cluster as a submitted job does).
    Ray Tune's own handler ended fit() early with a partial grid: geodino then failed on a trial never started
    (a TypeError traceback, exit 1), and had every trial started it would have compared unfinished trials as if
    they were done. Now one line, status 130, no comparison written; the features stay cached."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    _, metadata = eurosat_small
    sweeps, cache = tmp_path / "sweeps", tmp_path / "cache"
    command = [sys.executable, str(REPO / "experiments" / "sweep_probe.py"), "--metadata_dir", metadata,
               "--backbone", "random=random:vit_tiny/16", "--lrs", "0.001", "0.01", "0.1", "--weight_decays", "0",
               "--epochs", "100000", "--n_last_blocks", "1", "--storage_path", str(sweeps), "--cache_dir", str(cache)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "RAY_ADDRESS": ray_address}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 200
    while time.time() < deadline and driver.poll() is None and not list(sweeps.glob("*/*/progress.csv")):
        time.sleep(0.2)  # until a trial has reported an epoch
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "sweep_probe.py: interrupted: the sweep stopped before its trials finished, so nothing was compared or "
        "written; the backbones' features stay cached, and the same command runs the trials again without "
        "extracting them")
    assert "Traceback" not in err and not list(sweeps.glob("*/comparison.csv")) and list(cache.glob("*"))


@pytest.mark.timeout(600)
def test_sweep_two_backbones_two_configs_table_and_plot(ray_session, eurosat_small, tmp_path, capsys, monkeypatch):
    folder, metadata = eurosat_small
    weights = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save(create_backbone("vit_tiny", 16, 3).state_dict(), weights)
    config = SweepConfig(backbones=["random=random:vit_tiny/16", f"file={weights}"], metadata_dir=metadata,
                         lrs=[0.001, 0.1], weight_decays=[0.0], epochs=4, n_last_blocks=1,
                         storage_path=str(tmp_path / "sweeps"), run_name="s", cache_dir=str(tmp_path / "cache"),
                         mlflow_tracking_uri=str(tmp_path / "mlruns"))
    result = run_sweep(config)
    assert result["extractions"] == 4  # 2 backbones x (train, test); validation is carved from train
    assert len(result["trials"]) == 4
    table = result["table"].set_index("backbone")
    assert list(table.index) == ["random", "file"] or set(table.index) == {"random", "file"}
    for column in ("test_ap_macro", "test_ap_micro", "test_top1", "knn_test_top1"):
        assert table[column].between(0, 1).all()
    # Each backbone's row is its trial with the best validation AP (the argmax, not any trial).
    trials = result["trials"]
    for name, row in table.iterrows():
        own = trials[trials["backbone"] == name]
        best = own.loc[own["val_ap_macro"].idxmax()]
        assert own["val_ap_macro"].nunique() == len(own)  # no tie: the argmax is one trial
        assert (row["lr"], row["val_ap_macro"]) == (pytest.approx(best["lr"]), pytest.approx(best["val_ap_macro"]))
    assert result["per_class"].shape == (10, 2)
    with open(result["paths"]["comparison.png"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "average precision" in open(result["paths"]["comparison.md"]).read()
    # --mlflow_tracking_uri: a run per trial (Ray Tune's MLflow logger) and a summary run holding the outputs.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file://{tmp_path / 'mlruns'}")
    runs = client.search_runs([client.get_experiment_by_name("geodino").experiment_id])
    summary = [run for run in runs if run.info.run_name == "s comparison"]
    trial_runs = [run for run in runs if run.data.tags.get("geodino.sweep") == "s"]
    assert len(summary) == 1 and len(trial_runs) == 4
    assert {float(run.data.params["lr"]) for run in trial_runs} == {0.001, 0.1}
    assert all("val_ap_macro" in run.data.metrics for run in trial_runs)
    assert summary[0].data.metrics["random/test_ap_macro"] == pytest.approx(table.loc["random", "test_ap_macro"])
    artefacts = {item.path for item in client.list_artifacts(summary[0].info.run_id)}
    assert {"comparison.csv", "comparison.png", "trials.csv"} <= artefacts
    # Features are cached: a second sweep over one of the backbones runs no backbone at all. Its trial with a
    # label fraction that leaves one patch fails; it is listed with its reason, not dropped.
    again = run_sweep(SweepConfig(**{**config.__dict__, "backbones": [f"file={weights}"], "run_name": "s2",
                                     "lrs": [0.05], "label_fractions": [1.0, 0.01]}))
    assert again["extractions"] == 0
    failed = again["trials"][again["trials"]["status"] == "error"]
    assert list(failed["backbone"]) == ["file"] and list(failed["label_fraction"]) == [0.01]
    assert failed["reason"].str.startswith("LabelFractionError: label fraction 0.01 keeps 1 of the 54").all()
    assert list(again["table"]["status"]) == ["ok"] and again["failed_backbones"] == []
    trials_csv = pd.read_csv(again["paths"]["trials.csv"])
    assert len(trials_csv) == 2 and (trials_csv["status"] == "error").sum() == 1
    # One `tensorboard --logdir` over the project's storage shows a pretraining run's curves beside the sweeps'
    # trials (TensorBoard's own multiplexer finds the runs the way the dashboard does).
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from geodino.dino.run_log import RunLog

    pretraining = RunLog(PretrainConfig(storage_path=str(tmp_path), run_name="dino_run"))
    pretraining.epoch({"epoch": 0, "loss": 5.5, "lr": 1e-4, "teacher_entropy": 3.0, "max_entropy": 6.9,
                       "images_per_s": 10.0})
    pretraining.close()
    dashboard = EventMultiplexer().AddRunsFromDirectory(str(tmp_path)).Reload()
    tags = {run: set(found["scalars"]) for run, found in dashboard.Runs().items()}
    assert tags["dino_run/tensorboard"] >= {"pretrain/loss", "pretrain/teacher_entropy"}
    trial_runs = [run for run in tags if run.startswith("sweeps/s/")]  # the first sweep's 4 trials
    assert len(trial_runs) == 4 and all("ray/tune/val_ap_macro" in tags[run] for run in trial_runs), tags
    # Tune's results, TensorBoard events and the tables hold no credential of the environment.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20
    assert not [str(p) for p in written if FAKE_SECRET.encode() in p.read_bytes()]

    # A sweep whose trials all fail, through the CLI (the features are cached: no backbone runs): it says so and
    # exits non-zero, the table naming why.
    from conftest import REPO

    from geodino.cli import run_entry

    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    import sweep_probe

    capsys.readouterr()
    status = run_entry("sweep_probe.py", sweep_probe.main, [
        "--metadata_dir", metadata, "--backbone", "random=random:vit_tiny/16", "--lrs", "0.1", "--weight_decays", "0",
        "--label_fractions", "0.01", "--epochs", "2", "--n_last_blocks", "1", "--storage_path",
        str(tmp_path / "sweeps"), "--cache_dir", str(tmp_path / "cache")])
    printed = capsys.readouterr()
    assert status == 1, printed.err[-3000:]
    assert "1 trials (1 failed)" in printed.out
    assert "failed trial: random lr=0.1 weight_decay=0.0 label_fraction=0.01: LabelFractionError" in printed.err
    assert printed.err.strip().splitlines()[-1] == "sweep_probe.py: no trial succeeded for random"
    table = pd.read_csv(tmp_path / "sweeps" / "probe_sweep" / "comparison.csv")
    assert list(table["status"]) == ["failed"] and "all 1 trials failed" in table.loc[0, "reason"]


def test_asha_weighs_each_backbone_s_trials_against_its_own(ray_session, tmp_path):
    """One ASHA over the whole grid stopped every trial of a weaker backbone against a stronger one's (two identical
    EuroSAT sweeps: random init's trials all stopped after 1 epoch in one of them), so its configuration was chosen
    by a 1-epoch score. Real Tune, one trial at a time in grid order: the strong backbone's trials first, each
    configuration worse than the one before. Within each backbone ASHA still stops the worse configurations."""
    from ray import tune

    from geodino.transfer.sweep import METRIC, PerBackboneASHA

    def trial(config):
        for epoch in range(1, 5):
            tune.report({METRIC: {"strong": 0.8, "weak": 0.4}[config["backbone"]] - config["lr"] * epoch / 100})

    grid = tune.Tuner(trial, param_space={"backbone": tune.grid_search(["strong", "weak"]),
                                          "lr": tune.grid_search([1, 2])},
                      tune_config=tune.TuneConfig(scheduler=PerBackboneASHA(metric=METRIC, mode="max", max_t=4,
                                                                            grace_period=1), max_concurrent_trials=1),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    epochs = sorted((r.config["backbone"], r.config["lr"], r.metrics["training_iteration"]) for r in grid)
    assert epochs == [("strong", 1, 4), ("strong", 2, 1), ("weak", 1, 4), ("weak", 2, 1)]  # one ASHA: ('weak', 1, 1)


def test_cached_features_are_reused_and_keyed_by_the_weights(ray_session, eurosat_small, tmp_path):
    import shutil

    import pyarrow as pa

    from geodino.archive.card import card_file

    # The metadata's rows in reverse name order: Ray Data hands rows back in that order, the cache sorts them by
    # name, and every column must move together.
    _, sorted_metadata = eurosat_small
    table = pq.read_table(sorted_metadata)
    (tmp_path / "meta").mkdir()
    metadata = str(tmp_path / "meta" / "metadata.parquet")
    pq.write_table(table.take(pa.array(range(table.num_rows - 1, -1, -1))), metadata)
    shutil.copy(card_file(sorted_metadata), card_file(metadata))
    weights = tmp_path / "w.pth"
    torch.save(create_backbone("vit_tiny", 16, 3).state_dict(), weights)
    config = with_image_size(str(weights), LinearProbeConfig(metadata_dir=metadata, cache_dir=str(tmp_path / "cache"),
                                                            n_last_blocks=2))  # bands etc. from the weights' contract
    first, extracted = split_features(str(weights), config)
    assert extracted == 2 and first["train"]["features"].shape[1] == 2 * 192
    # Every cached row is its own patch's: name, labels and features, sorted by name.
    from geodino.data.config import DataConfig, metadata_rows
    from geodino.data.indexed import labelled_images
    from geodino.transfer.backbones import load_backbone
    from geodino.transfer.features import backbone_features

    test = DataConfig(metadata=metadata, split="test")
    names = list(metadata_rows(test)["name"])
    assert list(first["test"]["names"]) == sorted(names) != names
    row_of = [names.index(name) for name in first["test"]["names"]]
    images, labels = labelled_images(test)  # in the metadata's order
    np.testing.assert_array_equal(first["test"]["labels"], labels[row_of])
    with torch.no_grad():
        direct = backbone_features(load_backbone(str(weights)).model, images, 2, False).numpy()
    np.testing.assert_allclose(first["test"]["features"], direct[row_of], rtol=1e-4, atol=1e-5)
    again, extracted = split_features(str(weights), config)
    assert extracted == 0
    torch.testing.assert_close(torch.from_numpy(again["test"]["features"]), torch.from_numpy(first["test"]["features"]))
    torch.manual_seed(5)
    torch.save(create_backbone("vit_tiny", 16, 3).state_dict(), weights)  # new weights, same path
    _, extracted = split_features(str(weights), config)
    assert extracted == 2


@pytest.mark.timeout(600)
def test_predict_resumes_a_partly_written_output(ray_session, eurosat_small, tmp_path):
    from geodino.transfer.predict import PredictConfig, run_predict

    _, metadata = eurosat_small
    probe_config = LinearProbeConfig(pretrained_weights="random:vit_tiny/16", epochs=3, metadata_dir=metadata,
                                     n_last_blocks=2, output_dir=str(tmp_path / "probe"), cache_dir=str(tmp_path / "cache"))
    run_linear_probe(probe_config)
    config = PredictConfig(pretrained_weights="random:vit_tiny/16", probe=str(tmp_path / "probe" / "probe.pth"),
                           metadata_dir=metadata, output_dir=str(tmp_path / "pred"), split="test")
    first = run_predict(config)
    assert first["rows"] == 30 and first["new"] == 30
    # predict = the saved probe (standardisation, 2 last blocks) on the same features the probe was scored on
    from geodino.transfer.probe import LinearProbe, probabilities

    saved = torch.load(tmp_path / "probe" / "probe.pth", weights_only=True)
    probe = LinearProbe(saved["state_dict"]["mean"], saved["state_dict"]["std"], 10)
    probe.load_state_dict(saved["state_dict"])
    cached = split_features("random:vit_tiny/16", with_image_size("random:vit_tiny/16", probe_config))[0]["test"]
    with torch.no_grad():
        expected = probabilities(probe(torch.from_numpy(cached["features"])), "single_label").numpy()
    written = pq.read_table(str(tmp_path / "pred")).to_pandas().set_index("name").loc[list(cached["names"])]
    np.testing.assert_allclose(np.stack(written["probabilities"]), expected, rtol=1e-4, atol=1e-5)
    # An interrupted run of predict's own: its part folder is listed in the manifest, one file cut short.
    manifest = json.loads((tmp_path / "pred" / "_predict.json").read_text())
    manifest["parts"].append({"folder": "part-0001", "complete": False})
    (tmp_path / "pred" / "_predict.json").write_text(json.dumps(manifest))
    (tmp_path / "pred" / "part-0001").mkdir()
    (tmp_path / "pred" / "part-0001" / "cut-short.parquet").write_bytes(b"PAR1 truncated")
    second = run_predict(PredictConfig(**{**config.__dict__, "split": None}))
    assert second["skipped"] == 30 and second["new"] == 60 and second["rows"] == second["expected"] == 90
    table = pq.read_table(str(tmp_path / "pred")).to_pandas()
    assert table["name"].is_unique and len(table) == 90
    probs = np.stack(table["probabilities"])
    assert probs.shape == (90, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert all(len(p) == 1 for p in table["predicted"])
    assert not (tmp_path / "pred" / "part-0001" / "cut-short.parquet").exists()  # ours, unreadable: redone
    embedded = run_predict(PredictConfig(pretrained_weights="random:vit_tiny/16", metadata_dir=metadata,
                                         output_dir=str(tmp_path / "emb"), embeddings=True, split="test"))
    vectors = np.stack(pq.read_table(str(tmp_path / "emb")).column("embedding").to_pylist())
    assert embedded["rows"] == 30 and vectors.shape == (30, 192)


@pytest.mark.timeout(600)
def test_predict_never_touches_files_it_did_not_write(ray_session, eurosat_small, tmp_path, capsys, monkeypatch):
    """The user's own parquet in --out survives byte for byte; another probe's folder is refused; through the
    script's own entry (run_entry, as `python experiments/predict.py` runs it), in this process."""
    from conftest import REPO

    from geodino.cli import run_entry

    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    import predict as predict_script

    _, metadata = eurosat_small
    user_folder = tmp_path / "mine"
    user_folder.mkdir()
    user_file = user_folder / "metadata.parquet"  # e.g. the user's own table, with a `name` column
    pq.write_table(pq.read_table(metadata), user_file)
    before = user_file.read_bytes()

    def predict(*args) -> tuple[int, str]:
        status = run_entry("predict.py", predict_script.main, ["--metadata_dir", metadata, "--split", "test",
                                                               "--pretrained_weights", "random:vit_tiny/16", *args])
        return status, capsys.readouterr().err

    status, err = predict("--embeddings", "--out", str(user_folder))
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"predict.py: error: {user_folder} holds 1 files predict did not write (e.g. metadata.parquet); give an "
        "empty or new folder as --output_dir"]
    assert user_file.read_bytes() == before and sorted(os.listdir(user_folder)) == ["metadata.parquet"]

    status, err = predict("--embeddings", "--out", str(tmp_path / "emb"))
    assert status == 0, err[-2000:]
    status, err = predict("--embeddings", "--out", str(tmp_path / "emb"), "--normalize", "stats")
    assert status == 2 and "holds predictions made with other normalize" in err


def test_attention_maps_and_curves_render(tmp_path):
    from PIL import Image

    from geodino.dino.models import create_backbone
    from geodino.transfer.visualize import last_block_attention, plot_attention, plot_curves, short_name

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
    # a patch's name above its picture: whole when it fits (was cut to 18: 'rop_AnnualCrop_586', '0613T101031_0_45')
    assert short_name("AnnualCrop_AnnualCrop_586") == "AnnualCrop_AnnualCrop_586"
    assert short_name("S2A_MSIL2A_20170613T101031_0_45") == "S2A_MSIL2A_20170613T101031_0_45"
    assert short_name("x" * 40 + "_tail") == "…" + ("x" * 40 + "_tail")[-35:]



def test_a_sweep_on_s3_writes_its_tables_here_not_into_a_folder_named_s3():
    """Ray Tune keeps an s3:// --storage_path's results there; the comparison tables and plot are written on this
    machine, and went to a local folder literally named `s3:/bucket/...`. They go to runs/sweeps/RUN_NAME now."""
    from geodino.transfer.sweep import SweepConfig

    config = SweepConfig(backbones=["r=random:vit_tiny/16"], storage_path="s3://bucket/sweeps", run_name="s1")
    assert config.resolved_output_dir() == os.path.join("runs", "sweeps", "s1")
    assert SweepConfig(backbones=[], storage_path="/tmp/sweeps", run_name="s1").resolved_output_dir() == "/tmp/sweeps/s1"


def test_pictures_show_red_green_blue_wherever_they_sit_among_the_bands():
    """A 12-band BigEarthNet input was drawn as B01, B02, B03 and a Sentinel-2 GeoTIFF's B02, B03, B04, B08 as
    blue, green, red: B04, B03, B02 are shown as red, green, blue wherever they sit."""
    from geodino.archive.bands import S2_BANDS
    from geodino.transfer.visualize import display_channels, rgb_view

    assert display_channels(S2_BANDS) == [3, 2, 1]
    assert display_channels(("B02", "B03", "B04", "B08")) == [2, 1, 0]
    assert display_channels(("band1", "band2", "band3")) == [0, 1, 2] and display_channels(("VV",)) == [0, 0, 0]
    bands = np.stack([np.full((4, 4), value, np.float32) for value in (0.1, 0.2, 0.9, 0.5)])  # B02 B03 B04 B08
    bands[:, 0, 0] = 0  # a dark pixel, so the stretch keeps the bands apart
    picture = rgb_view(bands, display_channels(("B02", "B03", "B04", "B08")))
    assert picture[1, 1, 0] > picture[1, 1, 1] > picture[1, 1, 2]  # red is B04's 0.9, blue B02's 0.1
