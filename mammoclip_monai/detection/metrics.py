"""Detection metrics: FROC (the screening measure) and COCO-style AP, as functions and one Ignite metric.

Mammography detectors are compared by FROC: lesion sensitivity against the number of false
positives per image, read at 1/8 ... 8 FP per image, over *all* images of the set (negatives
contribute false positives and count in the number of images). COCO average precision is the
measure of the detection literature; it is computed by MONAI's
:class:`~monai.apps.detection.metrics.coco.COCOMetric`, configured here so that exactly the
requested IoU thresholds are evaluated.

Per image, a prediction is ``{"boxes": (N, 4), "scores": (N,), "labels": (N,)}`` and a target
``{"boxes": (M, 4), "labels": (M,)}``; boxes are ``[x_min, y_min, x_max, y_max]`` in one pixel frame,
labels 0-based indices into ``class_names``; numpy arrays or torch tensors, empty images allowed.
:class:`DetectionMetrics` stores flat tensors plus per-image counts, so the per-image lists can be
rebuilt after gathering across DDP ranks.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch

from ..data.geometry import box_iou
from ..utils.auroc import AccumulatingMetric

__all__ = ["FROC_RATES", "FROCCurve", "froc_curve", "froc_sensitivities", "froc_score", "average_precision",
           "detections_of", "DetectionMetrics", "plot_froc"]

FROC_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per image at which FROC sensitivity is read (1/8 ... 8, the usual screening range)."""

_FIELDS = {"boxes", "labels"}


@dataclass(frozen=True)
class FROCCurve:
    """Operating points of one class, one per distinct score, after a first point (0, 0) at threshold +inf.

    ``sensitivity`` is NaN throughout when the set holds no lesion of the class (``n_lesions == 0``).
    """

    fp_per_image: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    n_images: int
    n_lesions: int


def _metric_name(text: str) -> str:
    # imported here: the evaluation package pulls in the probe and report modules, which this one does not need
    from ..evaluation.metrics import metric_name

    return metric_name(text)


def _array(value: Any, dtype: type, columns: int | None = None) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=dtype)
    return array.reshape(-1, columns) if columns else array.reshape(-1)


def _image(item: Mapping[str, Any], scored: bool, index: int) -> dict[str, np.ndarray]:
    """One image's boxes / labels (/ scores) as numpy, lengths checked."""
    missing = (_FIELDS | ({"scores"} if scored else set())) - set(item)
    if missing:
        kind = "prediction" if scored else "target"
        raise KeyError(f"{kind} of image {index} lacks {sorted(missing)} (has {sorted(item)})")
    out = {"boxes": _array(item["boxes"], np.float64, 4), "labels": _array(item["labels"], np.int64)}
    if scored:
        out["scores"] = _array(item["scores"], np.float64)
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"image {index}: boxes, labels and scores must have one entry per box, got {lengths}")
    return out


def _images(predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]
            ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets: one of each per image")
    return ([_image(p, True, i) for i, p in enumerate(predictions)],
            [_image(t, False, i) for i, t in enumerate(targets)])


def _match_image(boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """True-positive flags of one image's predictions (one class), greedily by descending score.

    Each prediction takes the still unmatched lesion it overlaps most (IoU >= threshold); a second
    detection of a found lesion is a false positive. Equal scores keep their input order.
    """
    hits = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return hits
    iou = box_iou(boxes, gt_boxes)
    free = np.ones(len(gt_boxes), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        candidates = np.where(free & (iou[i] >= iou_threshold), iou[i], -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= 0.0:
            hits[i], free[best] = True, False
    return hits


def froc_curve(predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]], class_index: int,
               iou_threshold: float = 0.25) -> FROCCurve:
    """FROC curve of class ``class_index`` over a set of images (one prediction and one target dict each).

    A prediction is a true positive when it is matched (see :func:`_match_image`) to a lesion of
    its class at IoU >= ``iou_threshold``; all others are false positives. The threshold sweeps
    every distinct score, all predictions of one score entering together. FP per image divides by
    the number of images, those without lesions or predictions included.
    """
    preds, gts = _images(predictions, targets)
    if not preds:
        raise ValueError("a FROC curve needs at least one image")
    scores, hits, n_lesions = [], [], 0
    for pred, gt in zip(preds, gts):
        mine, lesions = pred["labels"] == class_index, gt["boxes"][gt["labels"] == class_index]
        n_lesions += len(lesions)
        scores.append(pred["scores"][mine])
        hits.append(_match_image(pred["boxes"][mine], pred["scores"][mine], lesions, iou_threshold))
    score, hit = np.concatenate(scores), np.concatenate(hits)
    order = np.argsort(-score, kind="stable")
    score, hit = score[order], hit[order]
    last_of_tie = np.r_[np.nonzero(np.diff(score))[0], len(score) - 1] if len(score) else np.zeros(0, np.int64)
    tps = np.cumsum(hit)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    sensitivity = np.r_[0.0, tps] / n_lesions if n_lesions else np.full(len(tps) + 1, math.nan)
    return FROCCurve(fp_per_image=np.r_[0.0, fps] / len(preds), sensitivity=sensitivity.astype(np.float64),
                     thresholds=np.r_[np.inf, score[last_of_tie]], n_images=len(preds), n_lesions=n_lesions)


def froc_sensitivities(curve: FROCCurve, fp_rates: Sequence[float] = FROC_RATES) -> dict[float, float]:
    """Sensitivity at each FP-per-image rate, by the step rule (no interpolation).

    At rate ``r`` the value is the highest sensitivity among operating points with
    ``fp_per_image <= r``: the best threshold that does not exceed ``r`` false positives per image.
    The first point (0, 0) always qualifies, so a rate below every other point gives 0.0. NaN,
    with a warning, when the set holds no lesion of the class.
    """
    if curve.n_lesions == 0:
        warnings.warn("FROC undefined: no lesion of the class in the set; reporting NaN", stacklevel=2)
        return {float(r): math.nan for r in fp_rates}
    return {float(r): float(curve.sensitivity[curve.fp_per_image <= r + 1e-12].max()) for r in fp_rates}


def froc_score(curve: FROCCurve, fp_rates: Sequence[float] = FROC_RATES) -> float:
    """Mean of :func:`froc_sensitivities` over ``fp_rates`` (the usual single FROC number); NaN without lesions."""
    return float(np.mean(list(froc_sensitivities(curve, fp_rates).values())))


def _coco_metric(iou_thresholds: Sequence[float], classes: Sequence[str], max_detections: int) -> COCOMetric:
    """A COCOMetric that evaluates exactly ``iou_thresholds``.

    COCOMetric evaluates the union of ``iou_list`` and ``linspace(*iou_range)``; its default range
    (0.1 ... 0.5 by 0.05) adds thresholds not asked for. A range from the smallest to the largest
    requested threshold in one step adds only those two, so the union is the requested list.
    """
    low, high = min(iou_thresholds), max(iou_thresholds)
    metric = COCOMetric(classes=list(classes), iou_list=list(iou_thresholds),
                        iou_range=(low, high, (high - low) or 1.0), max_detection=(max_detections,), per_class=True,
                        verbose=False)
    if not np.array_equal(metric.iou_thresholds, np.unique(iou_thresholds)):  # pragma: no cover - a MONAI change
        raise RuntimeError(f"COCOMetric evaluates {metric.iou_thresholds}, not {sorted(iou_thresholds)}")
    return metric


def average_precision(predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]],
                      class_names: Sequence[str], iou_thresholds: Sequence[float] = (0.1, 0.25, 0.5),
                      max_detections: int = 100) -> dict[str, float]:
    """COCO AP (101-point interpolated precision) per class and IoU threshold, by MONAI's COCOMetric.

    Keys ``{name}_ap@{t:g}`` (class names as metric-key fragments, ``"Mass"`` -> ``mass``) and
    ``map@{t:g}``, the mean over classes with at least one lesion in the set. A class without
    lesions has NaN (COCOMetric would report -1 and let it into its own mean); with a warning.
    At most ``max_detections`` top-scoring predictions per image and class are evaluated. Ties in
    score across images are ranked in input order. COCOMetric counts true positives in float32, so a
    recall of exactly k/100 that float32 rounds down (7 of 10 lesions: 0.69999999 < 0.70) is read
    at the next detection's precision for that recall point, a small pessimistic bias.
    """
    thresholds = [float(t) for t in iou_thresholds]
    if not thresholds or len(set(thresholds)) != len(thresholds) or not all(0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"iou_thresholds must be distinct values in (0, 1], got {list(iou_thresholds)}")
    if len({f"{t:.2f}" for t in thresholds}) != len(thresholds):  # COCOMetric's keys carry two decimals
        raise ValueError(f"iou_thresholds must differ at two decimals, got {thresholds}")
    names = [_metric_name(n) for n in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must stay distinct as metric keys, got {names}")
    preds, gts = _images(predictions, targets)
    all_gt = np.concatenate([g["labels"] for g in gts]) if gts else np.zeros(0, np.int64)
    present = [c for c in range(len(names)) if (all_gt == c).any()]
    absent = [names[c] for c in range(len(names)) if c not in present]
    if absent:
        warnings.warn(f"AP undefined for class(es) {absent}: no lesion in the set; reporting NaN", stacklevel=2)
    out = {f"{names[c]}_ap@{t:g}": math.nan for c in range(len(names)) for t in thresholds}
    if present:
        # COCOMetric reads results by label value = position in its class list: renumber the classes with lesions
        # 0..K-1 and drop the others (matching is per class, so they do not change the AP of the rest). This also
        # keeps COCOMetric's "no gt" warnings, logged on the root logger, from firing.
        new_label = np.full(len(names) + 1, -1, np.int64)
        new_label[present] = np.arange(len(present))

        def relabel(labels: np.ndarray) -> np.ndarray:
            inside = (labels >= 0) & (labels < len(names))
            return np.where(inside, new_label[np.clip(labels, 0, len(names))], -1)

        pred_labels = [relabel(p["labels"]) for p in preds]
        keep = [lab >= 0 for lab in pred_labels]
        coco = _coco_metric(thresholds, [f"c{k}" for k in range(len(present))], max_detections)
        matched = matching_batch(iou_fn=box_iou, iou_thresholds=coco.iou_thresholds,
                                 pred_boxes=[p["boxes"][k] for p, k in zip(preds, keep)],
                                 pred_classes=[lab[k] for lab, k in zip(pred_labels, keep)],
                                 pred_scores=[p["scores"][k] for p, k in zip(preds, keep)],
                                 gt_boxes=[g["boxes"] for g in gts], gt_classes=[relabel(g["labels"]) for g in gts],
                                 max_detections=max_detections)
        scores, _ = coco(matched)
        for k, c in enumerate(present):
            for t in thresholds:
                out[f"{names[c]}_ap@{t:g}"] = float(scores[f"c{k}_AP_IoU_{t:.2f}_MaxDet_{max_detections}"])
    for t in thresholds:
        values = [out[f"{names[c]}_ap@{t:g}"] for c in present]
        out[f"map@{t:g}"] = float(np.mean(values)) if values else math.nan
    return out


def detections_of(output: Mapping[str, Any]) -> tuple[Any, Any]:
    """Default output transform of :class:`DetectionMetrics`: the engine output's ``pred`` and ``label``."""
    return output["pred"], output["label"]


class DetectionMetrics(AccumulatingMetric):
    """Ignite metric: FROC sensitivities and COCO AP of a detector over the whole run, per class and overall.

    ``update`` takes ``(predictions, targets)``, two lists with one dict per image. ``compute``
    returns ``{prefix}{class}_froc@{r:g}`` per rate, ``{prefix}{class}_froc_mean``,
    ``{prefix}{class}_ap@{t:g}`` per IoU threshold, ``{prefix}froc_mean`` (mean over classes with
    lesions) and ``{prefix}map@{t:g}``; Ignite spreads the dict into ``engine.state.metrics``. With
    ``select`` (a key without the prefix, e.g. ``"froc_mean"``) it returns that float alone, for
    model selection. The last FROC curves stay in :attr:`curves` (by class) for plotting. Gathered
    across ranks under DDP.
    """

    def __init__(self, class_names: Sequence[str], fp_rates: Sequence[float] = FROC_RATES,
                 ap_iou_thresholds: Sequence[float] = (0.1, 0.25, 0.5), froc_iou: float = 0.25, prefix: str = "",
                 select: str | None = None, output_transform=detections_of,
                 device: str | torch.device = "cpu") -> None:
        self.class_names = [_metric_name(n) for n in class_names]
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class names must be given and stay distinct as metric keys, got {self.class_names}")
        self.fp_rates = tuple(float(r) for r in fp_rates)
        self.ap_iou_thresholds = tuple(float(t) for t in ap_iou_thresholds)
        self.froc_iou = float(froc_iou)
        self.prefix = prefix
        self.select = select
        if select is not None and select not in self.metric_keys():
            raise KeyError(f"select={select!r} is not one of the metric's keys {self.metric_keys()}")
        self.curves: dict[str, FROCCurve] = {}
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    def metric_keys(self) -> list[str]:
        """The keys ``compute`` returns, without the prefix."""
        keys = []
        for name in self.class_names:
            keys += [f"{name}_froc@{r:g}" for r in self.fp_rates] + [f"{name}_froc_mean"]
            keys += [f"{name}_ap@{t:g}" for t in self.ap_iou_thresholds]
        return keys + ["froc_mean"] + [f"map@{t:g}" for t in self.ap_iou_thresholds]

    def update(self, output: tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]) -> None:
        predictions, targets = output
        preds, gts = _images(predictions, targets)
        self.accumulate(
            pred_boxes=torch.as_tensor(np.concatenate([p["boxes"] for p in preds] or [np.zeros((0, 4))])),
            pred_scores=torch.as_tensor(np.concatenate([p["scores"] for p in preds] or [np.zeros(0)])),
            pred_labels=torch.as_tensor(np.concatenate([p["labels"] for p in preds] or [np.zeros(0, np.int64)])),
            pred_counts=torch.as_tensor([len(p["labels"]) for p in preds], dtype=torch.int64),
            gt_boxes=torch.as_tensor(np.concatenate([g["boxes"] for g in gts] or [np.zeros((0, 4))])),
            gt_labels=torch.as_tensor(np.concatenate([g["labels"] for g in gts] or [np.zeros(0, np.int64)])),
            gt_counts=torch.as_tensor([len(g["labels"]) for g in gts], dtype=torch.int64))

    def _rebuilt(self) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        """The per-image lists of the whole run (all ranks, in rank order) from the flat gathered tensors."""
        def split(name: str, counts: np.ndarray) -> list[np.ndarray]:
            if len(counts) == 0:
                return []
            return np.split(self.gathered(name).numpy(), np.cumsum(counts)[:-1])

        pred_counts, gt_counts = self.gathered("pred_counts").numpy(), self.gathered("gt_counts").numpy()
        preds = [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in
                 zip(split("pred_boxes", pred_counts), split("pred_scores", pred_counts),
                     split("pred_labels", pred_counts))]
        gts = [{"boxes": b, "labels": lab}
               for b, lab in zip(split("gt_boxes", gt_counts), split("gt_labels", gt_counts))]
        return preds, gts

    def compute(self) -> dict[str, float] | float:
        preds, gts = self._rebuilt()
        result: dict[str, float] = {}
        self.curves = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning below names the classes without lesions
            ap = average_precision(preds, gts, self.class_names, self.ap_iou_thresholds)
            for index, name in enumerate(self.class_names):
                curve = self.curves[name] = froc_curve(preds, gts, index, self.froc_iou)
                for rate, value in froc_sensitivities(curve, self.fp_rates).items():
                    result[f"{name}_froc@{rate:g}"] = value
                result[f"{name}_froc_mean"] = froc_score(curve, self.fp_rates)
                for t in self.ap_iou_thresholds:
                    result[f"{name}_ap@{t:g}"] = ap[f"{name}_ap@{t:g}"]
        absent = [name for name, curve in self.curves.items() if curve.n_lesions == 0]
        if absent:
            warnings.warn(f"class(es) {absent} have no lesion in the set: their FROC and AP are NaN", stacklevel=2)
        means = [result[f"{name}_froc_mean"] for name in self.class_names if name not in absent]
        result["froc_mean"] = float(np.mean(means)) if means else math.nan
        for t in self.ap_iou_thresholds:
            result[f"map@{t:g}"] = ap[f"map@{t:g}"]
        if self.select is not None:
            return float(result[self.select])
        return {f"{self.prefix}{k}": v for k, v in result.items()}


def plot_froc(curves: Mapping[str, FROCCurve], path: str | os.PathLike, fp_rates: Sequence[float] = FROC_RATES,
              title: str = "FROC") -> Path:
    """One step line per class (log2 FP-per-image axis, 1/8 ... 8), mean sensitivity in the legend.

    The line follows the step rule of :func:`froc_sensitivities`: flat to the right of each
    operating point; markers at ``fp_rates``. Classes without lesions are left out.
    """
    from ..evaluation.plots import pyplot, save_figure

    plt = pyplot()
    low, high = min(fp_rates), max(fp_rates)
    fig, ax = plt.subplots(figsize=(5.0, 4.4))
    for name, curve in curves.items():
        if curve.n_lesions == 0:
            continue
        # the origin (0 FP) cannot sit on a log axis: start the line left of the plotted range instead
        x = np.r_[np.maximum(curve.fp_per_image, low / 4), max(high * 4, curve.fp_per_image[-1])]
        y = np.r_[curve.sensitivity, curve.sensitivity[-1]]
        (line,) = ax.step(x, y, where="post", lw=1.8, label=f"{name} (mean {froc_score(curve, fp_rates):.3f})")
        at = froc_sensitivities(curve, fp_rates)
        ax.plot(list(at), list(at.values()), "o", ms=4, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set_xticks(list(fp_rates), [str(Fraction(r).limit_denominator(64)) for r in fp_rates])
    ax.set(xlabel="false positives per image", ylabel="sensitivity", title=title,
           xlim=(low / 2 ** 0.25, high * 2 ** 0.25), ylim=(0, 1.02))
    ax.grid(True, which="major", color="0.9", lw=0.8)
    ax.legend(frameon=False, loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
