"""Scores of frozen features: average precision, F1, top-1, and DINO's weighted k-NN.

Computed over the whole evaluation set at once (never averaged per batch). Imports neither Ray nor
the rest of geodino: the probes (geodino.transfer) and the pretraining loop's k-NN monitor share it.

Average precision comes from scikit-learn. Macro AP is the mean over classes that have at
least one positive in the evaluated set; a class with no positive has no defined AP, is
left out of the mean and reported as NaN (scikit-learn would warn and return a misleading value).
Micro AP pools every (patch, class) decision into one ranking.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def average_precision(targets: np.ndarray, scores: np.ndarray) -> dict:
    """targets (N, K) 0/1, scores (N, K) any monotone score -> macro, micro and per-class AP.

    scikit-learn is imported here, not at the top: every Ray worker that trains imports this module, and
    sklearn costs 1.5 s of CPU per process that never scores anything."""
    from sklearn.metrics import average_precision_score

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
    from sklearn.metrics import f1_score

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


@torch.no_grad()
def knn_scores(train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray, k: int,
               temperature: float, chunk: int = 1024) -> np.ndarray:
    """DINO's weighted k-NN: cosine neighbours vote with weight exp(similarity / T); scores per class in [0, 1].
    k and T have one default, knn_report's (DINO's 20 and 0.07); queries go in chunks to bound memory."""
    bank = F.normalize(torch.from_numpy(train_features).float(), dim=1)
    bank_labels = torch.from_numpy(train_labels).float()
    k = min(k, len(bank))
    scores = []
    for start in range(0, len(features), chunk):
        query = F.normalize(torch.from_numpy(features[start:start + chunk]).float(), dim=1)
        similarity, neighbours = (query @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = (weights[..., None] * bank_labels[neighbours]).sum(1)
        scores.append(votes / weights.sum(1, keepdim=True))
    return torch.cat(scores).numpy()


def knn_report(train_features, train_labels, features, labels, task: str, k: int = 20, temperature: float = 0.07) -> dict:
    scores = knn_scores(train_features, train_labels, features, k, temperature)
    return classification_report(labels, scores, scores, task)
