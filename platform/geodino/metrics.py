"""Transfer metrics, computed over the whole evaluation set at once (never averaged per batch).

Average precision comes from scikit-learn. Macro AP is the mean over classes that have at
least one positive in the evaluated set; a class with no positive has no defined AP, is
left out of the mean and reported as NaN (scikit-learn would warn and return a misleading value).
Micro AP pools every (patch, class) decision into one ranking.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score


def average_precision(targets: np.ndarray, scores: np.ndarray) -> dict:
    """targets (N, K) 0/1, scores (N, K) any monotone score -> macro, micro and per-class AP."""
    targets = np.asarray(targets).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    per_class = np.full(targets.shape[1], np.nan)
    for k in range(targets.shape[1]):
        if targets[:, k].any():
            per_class[k] = average_precision_score(targets[:, k], scores[:, k])
    return {
        "ap_macro": float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan"),
        "ap_micro": float(average_precision_score(targets.ravel(), scores.ravel())) if targets.any() else float("nan"),
        "ap_per_class": per_class.tolist(),
        "classes_without_positives": int((~targets.any(0)).sum()),
    }


def f1_at(targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict:
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    targets = np.asarray(targets).astype(int)
    return {
        "f1_macro": float(f1_score(targets, predicted, average="macro", zero_division=0)),
        "f1_micro": float(f1_score(targets, predicted, average="micro", zero_division=0)),
    }


def top1_accuracy(targets: np.ndarray, scores: np.ndarray) -> float:
    return float((np.argmax(scores, 1) == np.argmax(targets, 1)).mean())


def classification_report(targets: np.ndarray, scores: np.ndarray, probabilities: np.ndarray, task: str) -> dict:
    """Everything the comparison table shows, for one backbone on one split."""
    report = average_precision(targets, scores) | f1_at(targets, probabilities)
    if task == "single_label":
        report["top1"] = top1_accuracy(targets, scores)
    return report
