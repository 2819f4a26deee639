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
