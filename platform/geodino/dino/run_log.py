"""What rank 0 writes about a run as it goes: DINO's log.txt, TensorBoard events, one console line per epoch."""

from __future__ import annotations

import json
import os
import sys

from geodino.dino.config import PretrainConfig


class RunLog:
    """log.txt (one JSON line per epoch, as DINO writes it) and tensorboard/ in the run's output folder."""

    def __init__(self, cfg: PretrainConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = cfg.resolved_output_dir()
        os.makedirs(self.folder, exist_ok=True)
        self.writer = SummaryWriter(os.path.join(self.folder, "tensorboard"))

    def epoch(self, metrics: dict) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"pretrain/{key}", value, metrics["epoch"])
        self.writer.flush()
        with open(os.path.join(self.folder, "log.txt"), "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        print(epoch_line(metrics), file=sys.stderr, flush=True)

    def close(self) -> None:
        self.writer.close()


def epoch_line(metrics: dict) -> str:
    """One console line per epoch: loss, lr, the teacher's entropies, the k-NN score when measured, speed."""
    line = (f"epoch {metrics['epoch']:>3}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
            f"entropy {metrics['teacher_entropy']:.2f}/{metrics['max_entropy']:.2f} "
            f"(batch {metrics.get('teacher_batch_entropy', float('nan')):.2f})")
    if "knn_ap" in metrics:
        line += f"  kNN AP {metrics['knn_ap']:.3f} (random init {metrics['knn_random_ap']:.3f})"
    return line + f"  {metrics['images_per_s']:.1f} img/s"
