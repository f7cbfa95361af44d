"""FROC and COCO AP of mammoclip_monai.detection.metrics against hand computations, and as an Ignite metric."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from mammoclip_monai.detection.metrics import (
    DetectionMetrics,
    FROCCurve,
    _coco_metric,
    average_precision,
    detections_of,
    froc_curve,
    froc_score,
    froc_sensitivities,
    plot_froc,
)

MASS, CALC = 0, 1
CLASSES = ("mass", "calcification")
RATES = (0.125, 0.25, 0.5, 1, 2, 4, 8)


def box(x: float, y: float, w: float = 10.0, h: float = 10.0) -> list[float]:
    return [x, y, x + w, y + h]


def pred(boxes, scores, labels) -> dict:
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "scores": np.asarray(scores, np.float64),
            "labels": np.asarray(labels, np.int64)}


def target(boxes, labels) -> dict:
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}


def empty_pred() -> dict:
    return pred(np.zeros((0, 4)), [], [])


def empty_target() -> dict:
    return target(np.zeros((0, 4)), [])


def froc_set() -> tuple[list[dict], list[dict]]:
    """4 images (one negative with false positives, one empty), 3 mass lesions.

    image 0: lesions A, B; predictions on A (0.9, TP), on A again (0.8, duplicate -> FP), on B (0.6, TP)
    image 1: lesion C; on C (0.5, TP) and elsewhere (0.5, FP): a TP/FP tie, the TP listed first
    image 2: negative; false positives at 0.8 (tie with the duplicate of image 0) and 0.3
    image 3: negative, no prediction
    """
    a, b, c = box(0, 0), box(50, 50), box(20, 20)
    predictions = [pred([a, a, b], [0.9, 0.8, 0.6], [MASS] * 3),
                   pred([c, box(100, 100)], [0.5, 0.5], [MASS] * 2),
                   pred([box(0, 0), box(70, 0)], [0.8, 0.3], [MASS] * 2),
                   empty_pred()]
    targets = [target([a, b], [MASS, MASS]), target([c], [MASS]), empty_target(), empty_target()]
    return predictions, targets


# ----------------------------------------------------------------------------- FROC
def test_froc_curve_by_hand():
    curve = froc_curve(*froc_set(), class_index=MASS)
    # scores descending, ties entering together; n_images = 4, n_lesions = 3
    #   +inf: TP 0 FP 0 -> (0/4, 0/3)
    #   0.9 : TP 1 FP 0 -> (0,    1/3)
    #   0.8 : TP 1 FP 2 -> (2/4,  1/3)   the duplicate on A and image 2's FP, together
    #   0.6 : TP 2 FP 2 -> (2/4,  2/3)
    #   0.5 : TP 3 FP 3 -> (3/4,  3/3)   TP and FP of the tie together (never a point (2/4, 3/3))
    #   0.3 : TP 3 FP 4 -> (4/4,  3/3)
    assert (curve.n_images, curve.n_lesions) == (4, 3)
    np.testing.assert_allclose(curve.fp_per_image, [0, 0, 0.5, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.sensitivity, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.8, 0.6, 0.5, 0.3])

    # step rule: best sensitivity with fp_per_image <= r
    #   1/8, 1/4 -> only points at 0 FP: 1/3;  1/2 -> 2/3 (the tie keeps 1.0 out);  1, 2, 4, 8 -> 1
    expected = {0.125: 1 / 3, 0.25: 1 / 3, 0.5: 2 / 3, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    got = froc_sensitivities(curve, RATES)
    assert list(got) == list(expected)
    np.testing.assert_allclose(list(got.values()), list(expected.values()))
    # mean = (1/3 + 1/3 + 2/3 + 4 * 1) / 7 = (16/3) / 7 = 16/21
    assert froc_score(curve, RATES) == pytest.approx(16 / 21)


def test_froc_rate_below_every_point_and_counting_negatives():
    predictions, targets = froc_set()
    # a first-ranked false positive: at 1/8 FP per image nothing is reachable -> 0.0
    predictions[2] = pred([box(0, 0)], [0.95], [MASS])
    curve = froc_curve(predictions, targets, MASS)
    assert curve.fp_per_image[1] == 0.25 and curve.sensitivity[1] == 0.0
    assert froc_sensitivities(curve, (0.125,)) == {0.125: 0.0}
    # adding 4 empty negatives halves the FP rate: the first FP then sits at 1/8
    more = froc_curve(predictions + [empty_pred()] * 4, targets + [empty_target()] * 4, MASS)
    assert more.n_images == 8 and more.fp_per_image[1] == 0.125


def test_froc_iou_threshold_is_respected_and_inclusive():
    gt = [target([box(0, 0)], [MASS])]
    at_02 = [pred([[0, 0, 10, 2]], [0.7], [MASS])]  # inside the lesion: IoU = 20 / 100 = 0.2
    strict = froc_curve(at_02, gt, MASS, iou_threshold=0.25)
    np.testing.assert_allclose(strict.fp_per_image, [0, 1])
    np.testing.assert_allclose(strict.sensitivity, [0, 0])
    loose = froc_curve(at_02, gt, MASS, iou_threshold=0.1)
    np.testing.assert_allclose(loose.fp_per_image, [0, 0])
    np.testing.assert_allclose(loose.sensitivity, [0, 1])
    exactly = froc_curve([pred([[0, 0, 10, 2.5]], [0.7], [MASS])], gt, MASS, iou_threshold=0.25)  # IoU 0.25
    assert exactly.sensitivity[-1] == 1.0


def test_froc_greedy_match_takes_the_highest_iou_lesion():
    # lesions L1, L2 (L1 listed first); the top prediction overlaps both above 0.5 but L2 most, the second only L1:
    # taking the first lesion above the threshold instead of the best one would leave the second without a match
    l1, l2 = [0, 0, 10, 10], [0, 2, 10, 12]
    top = [0, 3, 10, 12]      # with L1: 70 / (100 + 90 - 70) = 0.583; with L2: 90 / 100 = 0.9
    second = [0, 0, 10, 7]    # with L1: 70 / 100 = 0.7; with L2: 50 / (100 + 70 - 50) = 0.417
    curve = froc_curve([pred([top, second], [0.9, 0.8], [MASS, MASS])], [target([l1, l2], [MASS, MASS])], MASS,
                       iou_threshold=0.5)
    np.testing.assert_allclose(curve.sensitivity, [0, 0.5, 1.0])
    np.testing.assert_allclose(curve.fp_per_image, [0, 0, 0])


def test_froc_class_separation():
    mass_box, calc_box = box(0, 0), box(40, 40)
    predictions = [pred([calc_box, calc_box], [0.9, 0.4], [MASS, CALC])]
    targets = [target([mass_box, calc_box], [MASS, CALC])]
    mass = froc_curve(predictions, targets, MASS)
    # the mass prediction on the calcification is a mass FP; the mass lesion stays unfound
    np.testing.assert_allclose(mass.fp_per_image, [0, 1])
    np.testing.assert_allclose(mass.sensitivity, [0, 0])
    calc = froc_curve(predictions, targets, CALC)
    # for calcification only its own prediction counts: found at 0 FP, the 0.9 mass box is neither TP nor FP
    np.testing.assert_allclose(calc.fp_per_image, [0, 0])
    np.testing.assert_allclose(calc.sensitivity, [0, 1])
    np.testing.assert_allclose(calc.thresholds, [np.inf, 0.4])
    assert calc.n_lesions == 1 and mass.n_lesions == 1


def test_froc_without_predictions_and_without_lesions():
    targets = [target([box(0, 0)], [MASS]), empty_target()]
    none = froc_curve([empty_pred(), empty_pred()], targets, MASS)
    assert none.n_images == 2 and list(none.sensitivity) == [0.0]
    assert set(froc_sensitivities(none).values()) == {0.0}
    no_lesion = froc_curve([pred([box(0, 0)], [0.5], [CALC]), empty_pred()], targets, CALC)
    assert no_lesion.n_lesions == 0 and no_lesion.fp_per_image[-1] == 0.5
    with pytest.warns(UserWarning, match="no lesion"):
        assert all(math.isnan(v) for v in froc_sensitivities(no_lesion).values())
    with pytest.warns(UserWarning, match="no lesion"):
        assert math.isnan(froc_score(no_lesion))


def test_froc_accepts_torch_and_checks_inputs():
    predictions, targets = froc_set()
    as_torch = [{k: torch.as_tensor(v) for k, v in p.items()} for p in predictions]
    np.testing.assert_allclose(froc_curve(as_torch, targets, MASS).sensitivity,
                               froc_curve(predictions, targets, MASS).sensitivity)
    with pytest.raises(ValueError, match="one of each per image"):
        froc_curve(predictions[:2], targets, MASS)
    with pytest.raises(KeyError, match="scores"):
        froc_curve([{"boxes": np.zeros((0, 4)), "labels": []}], [empty_target()], MASS)
    with pytest.raises(ValueError, match="one entry per box"):
        froc_curve([pred([box(0, 0)], [0.5, 0.4], [MASS])], [empty_target()], MASS)


# ----------------------------------------------------------------------------- AP
def coco_ap(hits: list[bool], n_gt: int) -> float:
    """Independent COCO AP: mean over recall r = 0, 0.01, ..., 1 of max{precision(r') : r' >= r}, exactly."""
    tp = fp = 0
    points = []
    for hit in hits:
        tp, fp = tp + hit, fp + (not hit)
        points.append((Fraction(tp, n_gt), Fraction(tp, tp + fp)))
    total = Fraction(0)
    for k in range(101):
        total += max((p for r, p in points if r >= Fraction(k, 100)), default=Fraction(0))
    return float(total / 101)


def test_coco_metric_evaluates_exactly_the_requested_thresholds():
    metric = _coco_metric((0.1, 0.25, 0.5), ["c0"], 100)
    assert list(metric.iou_thresholds) == [0.1, 0.25, 0.5]
    assert list(metric.iou_thresholds[metric.iou_list_idx]) == [0.1, 0.25, 0.5]
    assert list(_coco_metric((0.3,), ["c0"], 100).iou_thresholds) == [0.3]


def test_ap_perfect_detector_is_one():
    predictions = [pred([box(0, 0), box(30, 30)], [0.9, 0.2], [MASS, CALC]), pred([box(5, 5)], [0.6], [MASS])]
    targets = [target([box(0, 0), box(30, 30)], [MASS, CALC]), target([box(5, 5)], [MASS])]
    result = average_precision(predictions, targets, CLASSES)
    assert set(result) == {f"{c}_ap@{t}" for c in CLASSES for t in ("0.1", "0.25", "0.5")} | {
        "map@0.1", "map@0.25", "map@0.5"}
    assert all(v == pytest.approx(1.0) for v in result.values())


def test_ap_false_positive_ranked_above_a_true_positive():
    # one image, lesions A and B; ranking: TP (0.9), FP (0.8), TP (0.7)
    # cumulative TP 1, 1, 2; FP 0, 1, 1 -> recall 1/2, 1/2, 1; precision 1, 1/2, 2/3
    # interpolated p(r) = max precision at recall >= r: r <= 0.5 -> 1 (51 points: 0.00 ... 0.50),
    #   r > 0.5 -> 2/3 (50 points: 0.51 ... 1.00)
    # AP = (51 * 1 + 50 * 2/3) / 101 = (253/3) / 101 = 253/303 = 0.834983...
    a, b = box(0, 0), box(50, 50)
    predictions = [pred([a, box(100, 100), b], [0.9, 0.8, 0.7], [MASS] * 3)]
    targets = [target([a, b], [MASS, MASS])]
    result = average_precision(predictions, targets, ["mass"], iou_thresholds=(0.5,))
    assert result["mass_ap@0.5"] == pytest.approx(253 / 303)
    assert result["map@0.5"] == pytest.approx(253 / 303)
    assert coco_ap([True, False, True], 2) == pytest.approx(253 / 303)
    # max_detections=2 keeps TP, FP: recall reaches 1/2 only -> AP = (51 * 1 + 50 * 0) / 101 = 51/101
    capped = average_precision(predictions, targets, ["mass"], iou_thresholds=(0.5,), max_detections=2)
    assert capped["mass_ap@0.5"] == pytest.approx(51 / 101)


def test_ap_across_images_matches_an_independent_computation():
    rng = np.random.default_rng(3)
    for n_gt in (1, 2, 4, 5, 8):  # recalls k/n_gt that float32 and the 101 recall points compare exactly on
        n_images = 3
        lesions = [[] for _ in range(n_images)]
        for i in range(n_gt):
            lesions[i % n_images].append(box(40.0 * i, 0))
        n_fp = int(rng.integers(1, 6))
        scores = rng.permutation(n_gt + n_fp) / (n_gt + n_fp) + 0.01
        found = rng.random(n_gt) < 0.8
        predictions, hits = [{"boxes": [], "scores": [], "labels": []} for _ in range(n_images)], []
        k = 0
        for image, boxes in enumerate(lesions):
            for lesion in boxes:
                if found[k]:
                    predictions[image]["boxes"].append(lesion)
                    predictions[image]["scores"].append(scores[k])
                    hits.append((scores[k], True))
                k += 1
        for j in range(n_fp):
            image = j % n_images
            predictions[image]["boxes"].append(box(40.0 * j, 500))
            predictions[image]["scores"].append(scores[n_gt + j])
            hits.append((scores[n_gt + j], False))
        preds = [pred(np.asarray(p["boxes"]).reshape(-1, 4), p["scores"], [MASS] * len(p["scores"]))
                 for p in predictions]
        targets = [target(np.asarray(b).reshape(-1, 4), [MASS] * len(b)) for b in lesions]
        expected = coco_ap([hit for _, hit in sorted(hits, key=lambda h: -h[0])], n_gt)
        got = average_precision(preds, targets, ["mass"], iou_thresholds=(0.5,))["mass_ap@0.5"]
        assert got == pytest.approx(expected), (n_gt, hits)


@pytest.mark.parametrize(("height", "expected"), [
    (3.0, {"0.1": 1.0, "0.25": 1.0, "0.5": 0.0}),    # IoU 30/100 = 0.3
    (2.4, {"0.1": 1.0, "0.25": 0.0, "0.5": 0.0}),    # IoU 0.24: a miss at 0.25 (a threshold of 0.2 would hit)
    (2.6, {"0.1": 1.0, "0.25": 1.0, "0.5": 0.0}),    # IoU 0.26: a hit at 0.25 (a threshold of 0.3 would miss)
])
def test_ap_iou_thresholds_are_the_ones_named(height, expected):
    result = average_precision([pred([[0, 0, 10, height]], [0.9], [MASS])], [target([box(0, 0)], [MASS])],
                               ["mass"])
    for t, value in expected.items():
        assert result[f"mass_ap@{t}"] == pytest.approx(value), t


def test_ap_box_convention_is_x_then_y():
    # a wide flat prediction on a wide flat lesion: IoU 1 in [x0, y0, x1, y1]; mixing the order would give 0
    lesion = [10, 100, 90, 110]
    result = average_precision([pred([lesion], [0.9], [MASS])], [target([lesion], [MASS])], ["mass"])
    assert result["mass_ap@0.5"] == pytest.approx(1.0)
    shifted = [10, 105, 90, 115]  # half the height overlapping: IoU 400 / 1200 = 1/3
    result = average_precision([pred([shifted], [0.9], [MASS])], [target([lesion], [MASS])], ["mass"])
    assert result["mass_ap@0.25"] == pytest.approx(1.0) and result["mass_ap@0.5"] == 0.0


def test_ap_empty_predictions_and_class_without_lesions():
    targets = [target([box(0, 0)], [MASS]), empty_target()]
    with pytest.warns(UserWarning, match="calcification"):
        result = average_precision([empty_pred(), empty_pred()], targets, CLASSES)
    assert result["mass_ap@0.25"] == 0.0 and result["map@0.25"] == 0.0
    assert math.isnan(result["calcification_ap@0.25"])
    # a calcification prediction without calcification lesions: still NaN, and left out of the mean
    with pytest.warns(UserWarning, match="calcification"):
        result = average_precision([pred([box(0, 0), box(0, 0)], [0.9, 0.8], [MASS, CALC]), empty_pred()], targets,
                                   CLASSES)
    assert result["mass_ap@0.5"] == pytest.approx(1.0) and result["map@0.5"] == pytest.approx(1.0)
    assert math.isnan(result["calcification_ap@0.5"])
    with pytest.warns(UserWarning):
        nothing = average_precision([empty_pred()], [empty_target()], CLASSES)
    assert all(math.isnan(v) for v in nothing.values())


# ----------------------------------------------------------------------------- Ignite metric
def two_class_set() -> tuple[list[dict], list[dict]]:
    predictions, targets = froc_set()
    predictions[1] = pred([box(20, 20), box(100, 100), box(60, 60)], [0.5, 0.5, 0.7], [MASS, MASS, CALC])
    targets[3] = target([box(60, 60), box(0, 0)], [CALC, CALC])
    predictions[3] = pred([box(60, 60)], [0.4], [CALC])
    return predictions, targets


def expected_metrics(predictions, targets, prefix="") -> dict[str, float]:
    ap = average_precision(predictions, targets, CLASSES)
    out, means = {}, []
    for index, name in enumerate(CLASSES):
        curve = froc_curve(predictions, targets, index)
        for r, v in froc_sensitivities(curve, RATES).items():
            out[f"{prefix}{name}_froc@{r:g}"] = v
        out[f"{prefix}{name}_froc_mean"] = froc_score(curve, RATES)
        means.append(out[f"{prefix}{name}_froc_mean"])
        for t in ("0.1", "0.25", "0.5"):
            out[f"{prefix}{name}_ap@{t}"] = ap[f"{name}_ap@{t}"]
    means = [m for m in means if not math.isnan(m)]
    out[f"{prefix}froc_mean"] = float(np.mean(means)) if means else math.nan
    for t in ("0.1", "0.25", "0.5"):
        out[f"{prefix}map@{t}"] = ap[f"map@{t}"]
    return out


def run_metric(metric: DetectionMetrics, predictions, targets, sizes, engine: Engine | None = None) -> dict:
    batches, start = [], 0
    for size in sizes:
        batches.append({"pred": predictions[start:start + size], "label": targets[start:start + size]})
        start += size
    assert start == len(predictions)
    if engine is None:
        engine = Engine(lambda _engine, batch: batch)
        metric.attach(engine, "detection")
    engine.run(batches, max_epochs=1)
    return engine.state.metrics


def test_detection_metrics_equal_the_functions_and_do_not_depend_on_batching():
    predictions, targets = two_class_set()
    expected = expected_metrics(predictions, targets)
    assert 0.0 < expected["calcification_froc_mean"] < 1.0 and 0.0 < expected["mass_ap@0.25"] < 1.0
    for sizes in ((4,), (1, 1, 1, 1), (3, 1), (1, 3)):
        metric = DetectionMetrics(CLASSES)
        metrics = run_metric(metric, predictions, targets, sizes)
        got = {k: metrics[k] for k in expected}
        assert got == pytest.approx(expected), sizes
        assert metrics["detection"] == got  # Ignite also keeps the whole dict under the metric's name
        assert set(metric.curves) == set(CLASSES) and metric.curves["mass"].n_images == 4
        np.testing.assert_allclose(metric.curves["mass"].sensitivity,
                                   froc_curve(predictions, targets, MASS).sensitivity)


def test_detection_metrics_accept_torch_inputs():
    predictions, targets = two_class_set()
    as_torch = [{k: torch.as_tensor(v) for k, v in p.items()} for p in predictions]
    metrics = run_metric(DetectionMetrics(CLASSES), as_torch, targets, (2, 2))
    assert {k: metrics[k] for k in expected_metrics(predictions, targets)} == pytest.approx(
        expected_metrics(predictions, targets))


def test_detection_metrics_select_prefix_and_reset():
    predictions, targets = two_class_set()
    expected = expected_metrics(predictions, targets)
    selected = run_metric(DetectionMetrics(CLASSES, select="froc_mean"), predictions, targets, (2, 2))
    assert selected["detection"] == pytest.approx(expected["froc_mean"])
    selected = run_metric(DetectionMetrics(CLASSES, select="mass_ap@0.25", prefix="val_"), predictions, targets, (4,))
    assert selected["detection"] == pytest.approx(expected["mass_ap@0.25"])
    prefixed = run_metric(DetectionMetrics(CLASSES, prefix="val_"), predictions, targets, (4,))
    assert {k: prefixed[k] for k in expected_metrics(predictions, targets, "val_")} == pytest.approx(
        expected_metrics(predictions, targets, "val_"))
    assert "froc_mean" not in prefixed
    with pytest.raises(KeyError, match="froc_mea"):
        DetectionMetrics(CLASSES, select="froc_mea")

    # a second run on the same engine sees only its own images
    engine, metric = Engine(lambda _engine, batch: batch), DetectionMetrics(CLASSES)
    metric.attach(engine, "detection")
    run_metric(metric, predictions, targets, (4,), engine)
    with pytest.warns(UserWarning) as caught:  # images 2 and 3 hold calcifications only
        second = run_metric(metric, predictions[2:], targets[2:], (1, 1), engine)
        again = expected_metrics(predictions[2:], targets[2:])
    assert any("['mass']" in str(w.message) for w in caught)
    assert {k: second[k] for k in expected} == pytest.approx(again, nan_ok=True)
    assert math.isnan(second["mass_froc_mean"]) and second["froc_mean"] == again["calcification_froc_mean"] > 0
    assert metric.curves["mass"].n_images == 2


def test_detection_metrics_empty_predictions_and_class_without_lesions():
    targets = [target([box(0, 0)], [MASS]), empty_target(), empty_target()]
    with pytest.warns(UserWarning, match="calcification"):
        metrics = run_metric(DetectionMetrics(CLASSES), [empty_pred()] * 3, targets, (2, 1))
    assert all(metrics[f"mass_froc@{r:g}"] == 0.0 for r in RATES)
    assert metrics["mass_froc_mean"] == 0.0 and metrics["froc_mean"] == 0.0
    assert metrics["mass_ap@0.25"] == 0.0 and metrics["map@0.25"] == 0.0
    assert math.isnan(metrics["calcification_froc_mean"]) and math.isnan(metrics["calcification_ap@0.5"])
    assert math.isnan(metrics["calcification_froc@1"])


def test_detection_metrics_default_output_transform_and_no_batch():
    assert detections_of({"pred": "p", "label": "l", "image": None}) == ("p", "l")
    from ignite.exceptions import NotComputableError

    with pytest.raises(NotComputableError):
        DetectionMetrics(CLASSES).compute()


# ----------------------------------------------------------------------------- plot
def test_plot_froc_writes_a_png(tmp_path):
    predictions, targets = two_class_set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither a log-axis nor a NaN warning
        curves = {name: froc_curve(predictions, targets, i) for i, name in enumerate(CLASSES)}
        curves["none"] = FROCCurve(np.zeros(1), np.full(1, np.nan), np.full(1, np.inf), 4, 0)
        path = plot_froc(curves, tmp_path / "plots" / "froc.png", title="validation FROC")
    assert path == tmp_path / "plots" / "froc.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
