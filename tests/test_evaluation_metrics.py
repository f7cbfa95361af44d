"""Evaluation metrics against hand computations on small examples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mammoclip_monai.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    roc_curve,
    sensitivity_at_specificity,
)


def pairwise_auroc(scores, labels) -> float:
    """AUROC by its definition: P(score of a positive > score of a negative), ties half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_sensitivity(scores, labels, specificity) -> float:
    """Try every threshold (each score and +inf): best sensitivity with specificity >= target."""
    scores, labels = np.asarray(scores), np.asarray(labels).astype(bool)
    best = 0.0
    for t in list(scores) + [np.inf]:
        called = scores >= t
        spec = (~called[~labels]).mean()
        if spec >= specificity:
            best = max(best, called[labels].mean())
    return float(best)


def test_roc_curve_on_a_hand_made_example():
    scores = [0.9, 0.8, 0.8, 0.4, 0.3, 0.1]
    labels = [1, 1, 0, 1, 0, 0]
    fpr, tpr, thresholds = roc_curve(scores, labels)
    # thresholds: inf, 0.9, 0.8 (tie: one positive, one negative), 0.4, 0.3, 0.1
    assert thresholds[0] == np.inf and list(thresholds[1:]) == [0.9, 0.8, 0.4, 0.3, 0.1]
    assert np.allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1, 1])
    assert np.allclose(fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    # trapezoid area equals the pairwise definition (ties half)
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairwise_auroc(scores, labels))


@pytest.mark.parametrize("seed", range(5))
def test_sensitivity_at_specificity_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties occur
    for spec in (0.5, 0.8, 0.9, 1.0):
        assert (sensitivity_at_specificity(scores, labels, spec)
                == pytest.approx(brute_sensitivity(scores, labels, spec)))


def test_binary_metrics_by_hand():
    # p(positive) for 6 samples; prediction = argmax
    p1 = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(probs, labels, class_names=["no", "yes"], specificity=2 / 3)
    # predicted: 1, 1, 0, 1, 0, 0 -> TP 2, FN 1, FP 1, TN 2
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    # positive/negative pairs won: 0.9 beats 3, 0.6 beats 2 (not 0.7), 0.4 beats 2 -> 7 / 9
    assert m["auroc"] == pytest.approx(pairwise_auroc(p1, labels)) == pytest.approx(7 / 9)
    assert m["auroc_yes"] == m["auroc"] == pytest.approx(m["auroc_no"])  # one-vs-rest of 1 - p: the same
    # specificity >= 2/3 allows one false positive (0.7): threshold 0.4 calls every positive
    assert m["sensitivity_at_67spec"] == pytest.approx(1.0)
    strict = classification_metrics(probs, labels, specificity=1.0)
    assert strict["sensitivity_at_100spec"] == pytest.approx(1 / 3)  # only 0.9 lies above every negative
    assert m["n"] == 6


def test_multiclass_balanced_accuracy_and_macro_auroc_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    probs = np.full((8, 4), 0.1)
    predicted = [0, 1, 1, 1, 2, 2, 0, 3]
    for row, c in enumerate(predicted):
        probs[row, c] = 0.7
    m = classification_metrics(probs, labels, class_names=list("ABCD"))
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 2 / 3 + 1) / 4)
    expected = [pairwise_auroc(probs[:, c], labels == c) for c in range(4)]
    assert [m[f"auroc_{n}"] for n in "ABCD"] == pytest.approx(expected)
    assert m["auroc"] == pytest.approx(np.mean(expected))
    assert np.array(m["confusion_matrix"]).sum() == 8 and m["confusion_matrix"][2] == [1, 0, 2, 0]
    assert not any(k.startswith("sensitivity_at") for k in m)


def test_absent_class_gives_nan_with_a_warning_and_unknown_labels_are_left_out():
    labels = np.array([0, 0, 1, 1, -1])
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.0, 0.0, 1.0]])
    with pytest.warns(UserWarning, match=r"class\(es\) \['D'\] absent"):
        m = classification_metrics(probs, labels, class_values=[0, 1, 3], class_names=["A", "B", "D"], task="density")
    assert m["n"] == 4 and math.isnan(m["auroc_D"])
    assert m["auroc"] == pytest.approx(1.0) and m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    with pytest.warns(UserWarning):
        binary = classification_metrics(np.array([[0.8, 0.2], [0.6, 0.4]]), np.array([0, 0]))
    assert math.isnan(binary["auroc"]) and math.isnan(binary["sensitivity_at_90spec"]) and binary["accuracy"] == 1.0


def test_bad_shapes_and_labels_are_clear_errors():
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        classification_metrics(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="not among the classes"):
        classification_metrics(np.full((2, 2), 0.5), np.array([0, 5]), task="mass")
    with pytest.raises(ValueError, match="both classes"):
        roc_curve([0.1, 0.2], [1, 1])
    assert confusion_matrix([1, 0], [1, 1], [0, 1]).tolist() == [[0, 0], [1, 1]]
