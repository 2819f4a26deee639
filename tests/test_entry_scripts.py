"""The entry scripts run as users run them, on real patches: the multi-label transfer chain on BigEarthNet
(linear_probe.py -> predict.py, sweep_probe.py), stream.py, visualize.py, and the main job followed by
exactly the command it prints next.

The main job and its printed next command run as subprocesses that join the test session's cluster through
RAY_ADDRESS, as a job submitted to a cluster does. The other scripts run as `python experiments/X.py` runs them
(runpy with `__name__ == "__main__"` and their argv) inside this process, on the session's Ray: a subprocess
would spend ~10 s per script importing torch and starting fresh Ray workers for a new driver.
"""

import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO

EXPERIMENTS = REPO / "experiments"


def run(script: str, *args: str, ray_address: str | None = None, cwd=None, env: dict | None = None, timeout=600):
    environment = {**os.environ, "PYTHONPATH": str(REPO / "platform"), **(env or {})}
    if ray_address:
        environment["RAY_ADDRESS"] = ray_address
    else:
        environment.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, str(EXPERIMENTS / script), *args], env=environment, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} failed:\n{done.stderr[-4000:]}"
    return done


def run_here(script: str, *args: str, capsys, monkeypatch) -> str:
    """`python experiments/SCRIPT ARGS` in this process: the file's own `__main__` block, its exit status and
    stdout."""
    monkeypatch.setattr(sys, "argv", [str(EXPERIMENTS / script), *args])
    capsys.readouterr()
    try:
        runpy.run_path(str(EXPERIMENTS / script), run_name="__main__")
        status = 0
    except SystemExit as exit_:
        status = exit_.code or 0
    out, err = capsys.readouterr()
    assert status == 0, f"{script} exited {status}:\n{err[-4000:]}"
    return out


@pytest.mark.timeout(900)
def test_multi_label_transfer_through_the_entry_scripts(ray_session, ben30_metadata, tmp_path, capsys, monkeypatch):
    """BCE probe and sigmoid AP on 19 classes, predict's threshold, a sweep, on 30 real BigEarthNet patches."""
    metadata = str(ben30_metadata)
    common = ["--metadata_dir", metadata, "--n_last_blocks", "1", "--cache_dir", str(tmp_path / "cache")]
    source = "random:vit_tiny/8"
    here = {"capsys": capsys, "monkeypatch": monkeypatch}
    run_here("linear_probe.py", "--pretrained_weights", source, "--epochs", "20", "--lr", "0.1",
             "--output_dir", str(tmp_path / "probe"), *common, **here)
    report = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert report["task"] == "multi_label" and len(report["classes"]) == 19
    assert report["rows"] == {"train": 10, "validation": 10, "test": 10}
    test = report["linear"]["test"]
    assert 0 < test["ap_macro"] <= 1 and test["classes_without_positives"] > 0  # 14 of 19 classes occur
    assert "top1" not in test  # multi-label: no top-1

    run_here("predict.py", "--pretrained_weights", source, "--probe", str(tmp_path / "probe" / "probe.pth"),
             "--metadata_dir", metadata, "--split", "test", "--threshold", "0.3", "--output_dir",
             str(tmp_path / "pred"), **here)
    predictions = pq.read_table(str(tmp_path / "pred")).to_pandas()
    probabilities = np.stack(predictions["probabilities"])
    assert probabilities.shape == (10, 19) and not np.allclose(probabilities.sum(1), 1)  # sigmoids, not a softmax
    classes = report["classes"]
    for row, predicted in zip(probabilities, predictions["predicted"]):
        assert list(predicted) == [classes[i] for i in np.flatnonzero(row >= 0.3)]

    out = run_here("sweep_probe.py", "--backbone", f"random={source}", "--lrs", "0.01", "0.1", "--weight_decays",
                   "0", "--epochs", "3", "--storage_path", str(tmp_path / "sweeps"), "--name", "ben", *common, **here)
    table = pd.read_csv(tmp_path / "sweeps" / "ben" / "comparison.csv")
    assert list(table["backbone"]) == ["random"] and "2 trials" in out
    # one TensorBoard command, the sweep's own (Tune's console output named its staging folder in Ray's temp dir)
    assert [line for line in out.splitlines() if "tensorboard --logdir" in line] == [
        f"Tune results (TensorBoard): tensorboard --logdir {tmp_path / 'sweeps'} --host 127.0.0.1"]
    assert 0 < table.loc[0, "test_ap_macro"] <= 1 and "test_top1" not in table


@pytest.mark.timeout(600)
def test_stream_and_visualize_scripts(ray_session, ben30_metadata, tmp_path, capsys, monkeypatch):
    here = {"capsys": capsys, "monkeypatch": monkeypatch}
    out = run_here("stream.py", "--metadata_dir", str(ben30_metadata), "--batches", "1", "--batch_size", "4", **here)
    assert "image (4, 3, 120, 120) float32" in out and "streamed 4 patches" in out
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.txt").write_text("\n".join(json.dumps(
        {"epoch": e, "loss": 6 - e, "lr": 1e-4, "teacher_entropy": 4.0, "max_entropy": 6.9}) for e in range(3)))
    # 16 px patches do not tile 120 px patches: the images are resized to 128 px (before: an AssertionError)
    run_here("visualize.py", "--pretrained_weights", "random:vit_tiny/16", "--metadata_dir", str(ben30_metadata),
             "--count", "2", "--run", str(tmp_path / "run"), "--output_dir", str(tmp_path / "pictures"), **here)
    for picture in ("attention.png", "pretraining_curves.png"):
        assert (tmp_path / "pictures" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
