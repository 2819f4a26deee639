"""What rank 0 writes about a run as it goes: DINO's log.txt, TensorBoard events, one console line per epoch,
and, with --mlflow_tracking_uri, the same metrics in MLflow.

Both files live in the run's storage folder (STORAGE_PATH/RUN_NAME, beside the checkpoints), so one
`tensorboard --logdir STORAGE_PATH` shows every run, local or on S3, while they train. S3 cannot append, so
for s3:// storage they are written in a local folder and copied up after every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from geodino import storage
from geodino.dino.config import PretrainConfig
from geodino.tracking import MLflowRun

LOG_FILE = "log.txt"
EVENTS_FOLDER = "tensorboard"


def say(line: str) -> None:
    """One console line from the training process, written to the stream itself: in a Ray Train worker
    `print` is patched to log through Ray Train's logger and also tees to the stream, which showed every
    line twice."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class RunLog:
    """log.txt (one JSON line per epoch, as DINO writes it) and tensorboard/ in the run's storage folder."""

    def __init__(self, cfg: PretrainConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = cfg.resolved_run_dir()
        self.remote = storage.is_uri(self.run_dir)
        self.folder = tempfile.mkdtemp(prefix="geodino-run-log-") if self.remote else self.run_dir
        os.makedirs(self.folder, exist_ok=True)
        remote_log = storage.join(self.run_dir, LOG_FILE)
        if self.remote and storage.exists(remote_log):  # a resumed run appends to its own history
            Path(self.folder, LOG_FILE).write_bytes(storage.read_bytes(remote_log))
        self.writer = SummaryWriter(os.path.join(self.folder, EVENTS_FOLDER))
        self.mlflow = None
        if cfg.mlflow_tracking_uri:
            self.mlflow = MLflowRun(cfg.mlflow_tracking_uri, cfg.mlflow_experiment, cfg.resolved_run_name(),
                                    dataclasses.asdict(cfg), key=self.run_dir)

    def epoch(self, metrics: dict) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"pretrain/{key}", value, metrics["epoch"])
        self.writer.flush()
        with open(os.path.join(self.folder, LOG_FILE), "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if self.remote:
            self.upload()
        if self.mlflow:
            self.mlflow.log_metrics(metrics, step=metrics["epoch"])
        say(epoch_line(metrics))

    def upload(self) -> None:
        """Copy log.txt and the event files to the run's s3:// folder (whole files: they are small)."""
        for path in sorted(Path(self.folder).rglob("*")):
            if path.is_file():
                storage.write_bytes_atomic(storage.join(self.run_dir, path.relative_to(self.folder).as_posix()),
                                           path.read_bytes())

    def close(self) -> None:
        self.writer.close()
        if self.mlflow:
            self.mlflow.finish()
        if self.remote:
            self.upload()
            shutil.rmtree(self.folder, ignore_errors=True)


def epoch_line(metrics: dict) -> str:
    """One console line per epoch: loss, lr, the teacher's entropies, the k-NN score when measured, speed."""
    line = (f"epoch {metrics['epoch']:>3}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
            f"entropy {metrics['teacher_entropy']:.2f}/{metrics['max_entropy']:.2f} "
            f"(batch {metrics.get('teacher_batch_entropy', float('nan')):.2f})")
    if "knn_ap" in metrics:
        line += f"  kNN AP {metrics['knn_ap']:.3f} (random init {metrics['knn_random_ap']:.3f})"
    line += f"  {metrics['images_per_s']:.1f} img/s"
    if "mfu" in metrics:
        line += f"  MFU {metrics['mfu']:.1%}"
    return line


class StepProgress:
    """Progress inside a long epoch on rank 0: a bar (steps, images/s, ETA) when this process writes to a
    terminal, else a plain line every --progress_every_s seconds, which log files and Ray's log forwarding
    (a Ray worker has no terminal) keep readable."""

    def __init__(self, epoch: int, steps: int, images_per_step: int, every_s: float):
        self.epoch, self.steps, self.images_per_step, self.every_s = epoch, steps, images_per_step, every_s
        self.started = self.last_line = time.perf_counter()
        self.bar = None
        if every_s > 0 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="step", leave=False, file=sys.stderr)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            return
        now = time.perf_counter()
        if self.every_s <= 0 or now - self.last_line < self.every_s or done >= self.steps:
            return
        self.last_line = now
        say(progress_line(self.epoch, done, self.steps, self.images_per_step, now - self.started))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_line(epoch: int, done: int, steps: int, images_per_step: int, seconds: float) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    eta = (steps - done) / rate if rate > 0 else float("inf")
    remaining = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
    return (f"epoch {epoch:>3}  step {done}/{steps}  {rate * images_per_step:.1f} img/s  ETA {remaining}")
