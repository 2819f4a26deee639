"""Benchmarks are measurements, not assertions; here they only have to run, at toy size."""

import subprocess
import sys

from conftest import REPO


def test_gpu_step_benchmark_runs_at_tiny_size_on_cpu():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_step.py"), "--tiny", "--variants", "0,2,4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| bf16 eager, fused AdamW, crops on CPU | 4 |" in out.stdout
    assert "120-px native BigEarthNet setting" in out.stdout
    assert "| geodino's loop (train_one_epoch), bf16 | 4 |" in out.stdout


def test_loss_benchmark_runs_at_tiny_size(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import dino_loss

    assert dino_loss.main(["--batch", "2", "--out_dim", "64", "--local_crops", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| pairwise (facebookresearch/dino) |" in out and "| geodino DINOLoss (one term per student crop) |" in out


def test_data_benchmark_runs_at_tiny_size(ray_session, tmp_path, capsys):
    """Replicated real patches, prepare and pack in subprocesses, the four data paths through this session's Ray."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import data_throughput

    assert data_throughput.main(["--patches", "24", "--small", "24", "--samples", "128", "--epochs", "2", "--root",
                                 str(tmp_path), "--stats"]) == 0
    out = capsys.readouterr().out
    for path in ("(a) seed", "(b) geodino Ray Data over GeoTIFFs", "(c) geodino Ray Data over packed shards",
                 "(c2) the same, uint16", "(c2u) the same, blocks as they finish", "(c3) the same, split cached",
                 "(d) torchrun launcher"):
        assert f"| {path}" in out
    assert "Ray Data's own statistics, (c3)" in out and "MapBatches(read_shards)" in out
    assert "| pack RGB | 24 |" in out and "Multi-crop" in out


def test_sweep_benchmark_runs_at_tiny_size(ray_session, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import sweep_cache

    assert sweep_cache.main(["--tiny", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(a) features extracted once per backbone and split, cached | 2 |" in out
    assert "(b) features extracted in every trial | 2 |" in out
