"""Metric code against hand-computed values."""

import math

import numpy as np
import pytest

from geodino.metrics import average_precision, classification_report, f1_at, knn_scores, top1_accuracy
from geodino.transfer.probe import LinearProbe, evaluate_probe, label_subset, validation_from_train


def test_ap_by_hand():
    # ranking: + - + -  -> precision at the positives: 1/1 and 2/3
    result = average_precision(np.array([[1], [0], [1], [0]]), np.array([[0.9], [0.8], [0.7], [0.6]]))
    assert result["ap_macro"] == pytest.approx((1 + 2 / 3) / 2)


def test_ap_with_ties_counts_a_tied_group_as_one_threshold():
    # 0.5, 0.5 tie (one + one -): precision 1/2 at recall 1/2; then 0.2 (+): precision 2/3 at recall 1
    result = average_precision(np.array([[1], [0], [1]]), np.array([[0.5], [0.5], [0.2]]))
    assert result["ap_macro"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_class_without_positives_is_left_out_of_macro_and_reported():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    result = average_precision(targets, scores)
    assert result["ap_per_class"][0] == pytest.approx(1.0)
    assert math.isnan(result["ap_per_class"][1])
    assert result["ap_macro"] == pytest.approx(1.0)
    assert result["classes_without_positives"] == 1
    # micro pools all six decisions: ranking 0.9+ 0.8- 0.7+ 0.3- 0.2- 0.1-
    assert result["ap_micro"] == pytest.approx((1 + 2 / 3) / 2)


def test_classes_without_positives_counted_per_class_and_nan_when_none_has_one():
    # 3 classes over 4 rows: class 0 has positives, classes 1 and 2 none; rows 1-3 are all negative
    targets = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    scores = np.random.default_rng(0).random((4, 3))
    assert average_precision(targets, scores)["classes_without_positives"] == 2
    nothing = average_precision(np.zeros((3, 2)), np.random.default_rng(1).random((3, 2)))
    assert math.isnan(nothing["ap_macro"]) and math.isnan(nothing["ap_micro"])
    assert nothing["classes_without_positives"] == 2


def test_f1_counts_a_probability_at_the_threshold_and_scores_an_empty_class_zero():
    targets = np.array([[1, 0], [0, 0]])
    at_threshold = f1_at(targets, np.array([[0.5, 0.0], [0.0, 0.0]]), threshold=0.5)
    # class 0: predicted at exactly 0.5 -> F1 1; class 1: never true, never predicted -> 0 (zero_division=0)
    assert at_threshold == {"f1_macro": pytest.approx(0.5), "f1_micro": pytest.approx(1.0)}
    nothing = f1_at(np.zeros((2, 2)), np.zeros((2, 2)))
    assert nothing == {"f1_macro": 0.0, "f1_micro": 0.0}


def test_f1_top1_and_report():
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.9, 0.05, 0.05]])
    assert top1_accuracy(targets, probabilities) == 0.75
    f1 = f1_at(targets, probabilities)
    # class 0: tp 2, fp 1, fn 0 -> 0.8; class 1: no prediction -> 0; class 2: 1.0
    assert f1["f1_macro"] == pytest.approx((0.8 + 0 + 1) / 3)
    assert f1["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    report = classification_report(targets, probabilities, probabilities, "single_label")
    assert report["top1"] == 0.75 and "ap_macro" in report


def test_knn_votes_follow_the_nearest_neighbour():
    bank = np.eye(3, dtype=np.float32)
    labels = np.array([[1, 0], [0, 1], [0, 1]], dtype=np.float32)
    scores = knn_scores(bank, labels, np.array([[1.0, 0.05, 0.0]], np.float32), k=3, temperature=0.07)
    assert scores[0, 0] > 0.99 and scores.sum() == pytest.approx(1.0)


def test_label_fractions_are_seeded_subsets():
    a, b = label_subset(1000, 0.1, seed=3), label_subset(1000, 0.1, seed=3)
    assert len(a) == 100 and (a == b).all() and len(set(a)) == 100
    assert len(label_subset(50, 0.04, seed=0)) == 2
    with pytest.raises(ValueError, match=r"^label fraction 0.01 keeps 0 of the 50 training patches; the probe needs "
                                         r"at least 2 \(its features are standardised with their spread\): raise it$"):
        label_subset(50, 0.01, seed=0)  # one patch would give NaN standardisation, then scikit-learn's "NaN" error
    assert (label_subset(10, 1.0, seed=0) == np.arange(10)).all()  # all labels: every row, in order
    for outside in (0.0, -0.5, 1.01):
        with pytest.raises(ValueError, match=rf"^label fraction must be in \(0, 1\], not {outside}$"):
            label_subset(10, outside, 0)
    train, validation = validation_from_train(100, 0.1, seed=0)
    assert len(validation) == 10 and not set(train) & set(validation) and len(train) + len(validation) == 100
    train, validation = validation_from_train(4)  # 10 % of 4 rounds to none: one row is still held out
    assert len(validation) == 1 and sorted([*train, *validation]) == [0, 1, 2, 3]


def test_single_label_ap_ranks_by_softmax_probability_not_logit():
    # Patch A: logits (10, 9), truly class 1; patch B: logits (0, -5), truly class 0. By logit, class 0 ranks A
    # (a negative) first: AP 0.5. By probability, B (0.993) ranks above A (0.731): AP 1. Class 1: AP 1 either way.
    import torch

    probe = LinearProbe(torch.zeros(2), torch.ones(2), 2)
    with torch.no_grad():
        probe.linear.weight.copy_(torch.eye(2))
    features, targets = np.array([[10.0, 9.0], [0.0, -5.0]]), np.array([[0, 1], [1, 0]])
    report = evaluate_probe(probe, features, targets, "single_label")
    assert report["ap_per_class"] == [1.0, 1.0] and report["ap_macro"] == 1.0
    assert report["top1"] == 0.5
    assert average_precision(targets, features)["ap_per_class"] == [0.5, 1.0]  # what ranking by logits gave


def test_the_probe_standardises_with_the_training_rows_statistics_and_starts_as_dinos_does():
    """DINO's linear evaluation: features standardised with the training set's mean and spread (a constant
    feature gets a floor, not a division by zero), a linear layer from N(0, 0.01) weights and zero biases."""
    import torch

    from geodino.transfer.probe import OPTIMIZERS, ProbeConfig, train_probe

    rng = np.random.default_rng(1)
    features = rng.normal(loc=3.0, scale=2.0, size=(40, 6)).astype(np.float32)
    features[:, 5] = 7.0  # a feature that never varies
    labels = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 40)]
    probe = train_probe(features, labels, "single_label", ProbeConfig(lr=0.0, epochs=1, batch_size=8))
    np.testing.assert_allclose(probe.mean.numpy(), features.mean(0), rtol=1e-5)
    np.testing.assert_allclose(probe.std.numpy()[:5], features.std(0, ddof=1)[:5], rtol=1e-5)
    assert 0 < probe.std[5] <= 1e-5
    with torch.no_grad():
        probe.linear.weight.copy_(torch.eye(2, 6))
        probe.linear.bias.zero_()
        at_mean, one_spread_up = probe(probe.mean[None]), probe((probe.mean + probe.std)[None])
    torch.testing.assert_close(at_mean, torch.zeros(1, 2))
    torch.testing.assert_close(one_spread_up, torch.ones(1, 2))

    with pytest.raises(ValueError, match="^optimizer must be sgd or adamw, not 'sdg'$"):
        train_probe(features, labels, "single_label", ProbeConfig(optimizer="sdg"))
    for offered in OPTIMIZERS:  # every choice the CLIs' --optimizer offers trains
        train_probe(features, labels, "single_label", ProbeConfig(lr=0.0, epochs=1, optimizer=offered))

    fresh = LinearProbe(torch.zeros(384), torch.ones(384), 1000)
    assert 0.0095 < fresh.linear.weight.std().item() < 0.0105 and abs(fresh.linear.weight.mean().item()) < 1e-3
    assert not fresh.linear.bias.any()


def test_the_probe_is_trained_with_softmax_cross_entropy_under_a_cosine_schedule_to_zero():
    """Single-label: softmax cross-entropy, whose bias gradients sum to zero over the classes, so zero-initialised
    biases keep summing to zero (BCE's do not). The learning rate follows a cosine to 0 over all steps: the last
    epoch moves the weights far less than the first."""
    import torch

    from geodino.transfer.probe import ProbeConfig, train_probe

    rng = np.random.default_rng(2)
    features = rng.normal(size=(40, 8)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    weights = []
    probe = train_probe(features, labels, "single_label", ProbeConfig(lr=0.5, epochs=10, batch_size=8),
                        on_epoch=lambda epoch, probe: weights.append(probe.linear.weight.detach().clone()))
    assert abs(probe.linear.bias.sum().item()) < 1e-5 and probe.linear.bias.abs().max() > 1e-2
    torch.manual_seed(0)  # train_probe's seed: the weights before its first epoch
    start = LinearProbe(torch.zeros(8), torch.ones(8), 3).linear.weight.detach()
    first_move, last_move = (weights[0] - start).norm(), (weights[-1] - weights[-2]).norm()
    assert last_move < 0.05 * first_move, (first_move, last_move)


@pytest.mark.parametrize("task, optimizer", [("single_label", "sgd"), ("multi_label", "sgd"),
                                             ("single_label", "adamw")])
def test_the_probe_separates_separable_features_perfectly(task, optimizer):
    """Classes on separate directions of feature space: a working probe reaches AP 1 and top-1 1."""
    from geodino.transfer.probe import ProbeConfig, train_probe

    rng = np.random.default_rng(0)
    classes, count = 4, 200
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, count)]
    if task == "multi_label":
        labels = np.maximum(labels, np.eye(classes, dtype=np.float32)[rng.integers(0, classes, count)])
    features = (labels @ rng.normal(size=(classes, 32)) * 3 + rng.normal(scale=0.1, size=(count, 32))).astype(np.float32)
    config = ProbeConfig(lr=0.1 if optimizer == "sgd" else 0.01, epochs=60, batch_size=32, optimizer=optimizer)
    probe = train_probe(features[:150], labels[:150], task, config)
    report = evaluate_probe(probe, features[150:], labels[150:], task)
    assert report["ap_macro"] == pytest.approx(1.0) and report["f1_macro"] == pytest.approx(1.0)
    if task == "single_label":
        assert report["top1"] == 1.0
