"""The monitors that say whether a run learns: entropies, collapse on the right quantities, the k-NN score."""

import math

import numpy as np
import pytest
import torch

from geodino.dino.monitors import KnnMonitor, KnnSets, collapse_state, teacher_entropy_pair
from geodino.metrics import knn_report
from geodino.transfer.backbones import load_backbone

K, BATCH = 256, 32


def one_prototype():
    """Every image on the same prototype, sharply."""
    logits = torch.zeros(BATCH, K)
    logits[:, 7] = 10.0
    return logits


def uniform():
    return torch.randn(BATCH, K) * 1e-4


def sharp_and_diverse():
    """Healthy: each image sharply on its own prototype."""
    logits = torch.zeros(BATCH, K)
    logits[torch.arange(BATCH), torch.arange(BATCH) * 3] = 10.0
    return logits


def epoch_of(teacher_output) -> dict:
    per_sample, batch_mean = teacher_entropy_pair(teacher_output, torch.zeros(1, K), temp=0.04).tolist()
    return {"teacher_entropy": per_sample, "teacher_batch_entropy": batch_mean, "max_entropy": math.log(K)}


def test_entropies_of_the_three_cases():
    per_sample, batch_mean = teacher_entropy_pair(one_prototype(), torch.zeros(1, K), 0.04).tolist()
    assert per_sample < 1e-3 and batch_mean < 1e-3
    per_sample, batch_mean = teacher_entropy_pair(uniform(), torch.zeros(1, K), 0.04).tolist()
    assert per_sample == pytest.approx(math.log(K), rel=1e-3) and batch_mean == pytest.approx(math.log(K), rel=1e-3)
    per_sample, batch_mean = teacher_entropy_pair(sharp_and_diverse(), torch.zeros(1, K), 0.04).tolist()
    assert per_sample < 1e-3 and batch_mean == pytest.approx(math.log(BATCH), rel=1e-3)


def test_collapse_is_told_from_the_right_entropy():
    assert collapse_state([epoch_of(one_prototype())] * 3) == "one_prototype"
    assert collapse_state([epoch_of(uniform())] * 3) == "uniform"
    assert collapse_state([epoch_of(sharp_and_diverse())] * 3) is None  # sharp per image is healthy
    assert collapse_state([epoch_of(one_prototype())] * 2) is None  # not for long enough yet
    assert collapse_state([epoch_of(one_prototype()), epoch_of(sharp_and_diverse()), epoch_of(one_prototype())]) is None


def labelled(count, classes=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, count)]
    images = rng.uniform(0, 1, (count, 3, size, size)).astype(np.float32)
    images[:, 0] = labels.argmax(1)[:, None, None] / classes  # band 0 says the class
    return torch.from_numpy(images), labels


def test_knn_monitor_scores_separable_features_perfectly():
    bank, bank_labels = labelled(64)
    queries, query_labels = labelled(32, seed=1)
    monitor = KnnMonitor(KnnSets(bank, bank_labels, queries, query_labels, "single_label"), image_size=16)

    class ClassFromBandZero(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot((x[:, 0].mean((1, 2)) * 4).round().long(), 4).float()

    assert monitor.score(ClassFromBandZero(), torch.device("cpu")) == {"ap": 1.0, "top1": 1.0}


def test_the_random_init_bar_is_the_probes_random_backbone():
    """The monitor's bar must be what `linear_probe.py --pretrained_weights random:vit_tiny/8` scores."""
    bank, bank_labels = labelled(48, size=32)
    queries, query_labels = labelled(24, size=32, seed=1)
    monitor = KnnMonitor(KnnSets(bank, bank_labels, queries, query_labels, "single_label"), image_size=32)
    bar = monitor.random_init_score("vit_tiny", 8, 3, seed=0, device=torch.device("cpu"))
    model = load_backbone("random:vit_tiny/8", in_chans=3).model
    with torch.no_grad():
        expected = knn_report(model(bank).numpy(), bank_labels, model(queries).numpy(), query_labels, "single_label")
    assert bar == {"ap": pytest.approx(expected["ap_macro"]), "top1": pytest.approx(expected["top1"])}
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    monitor.random_init_score("vit_tiny", 8, 3, seed=0, device=torch.device("cpu"))
    torch.testing.assert_close(torch.rand(3), before)  # measuring the bar leaves the training RNG alone
