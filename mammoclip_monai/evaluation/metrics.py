"""Classification metrics for zero-shot, linear-probe and fine-tuned predictions (NumPy, exact).

One function, :func:`classification_metrics`, gives everything an evaluation reports for one task
from class probabilities and integer labels: per-class and macro one-vs-rest AUROC, accuracy,
balanced accuracy, the confusion matrix and, for binary tasks, sensitivity at a fixed
specificity. A class absent from the labels gives NaN for the metrics that need it, with a
warning, never an exception; unknown labels (negative values) are left out.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..utils.auroc import AccumulatingMetric, binary_auroc

__all__ = ["roc_curve", "sensitivity_at_specificity", "confusion_matrix", "classification_metrics",
           "logits_to_probabilities", "ClassificationReport"]


def metric_name(text: str) -> str:
    """``"BI-RADS 4"`` -> ``"bi_rads_4"``: class names as metric-key fragments."""
    return re.sub(r"\W+", "_", str(text)).strip("_").lower()


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates, thresholds), one point per distinct score.

    A sample is called positive when its score is >= the threshold; the curve starts at (0, 0)
    (threshold +inf) and ends at (1, 1).
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"a ROC curve needs both classes: {n_pos} positive, {n_neg} negative")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return fpr, tpr, np.r_[np.inf, scores[last_of_tie]]


def sensitivity_at_specificity(scores: np.ndarray, labels: np.ndarray, specificity: float = 0.9) -> float:
    """The highest sensitivity of any threshold whose specificity is at least ``specificity``."""
    if not 0.0 <= specificity <= 1.0:
        raise ValueError(f"specificity must be in [0, 1], got {specificity}")
    fpr, tpr, _ = roc_curve(scores, labels)
    allowed = (1.0 - fpr) >= specificity - 1e-12
    return float(tpr[allowed].max())


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, class_values: Sequence[int]) -> np.ndarray:
    """(C, C) counts: rows are true classes, columns predicted classes, in ``class_values`` order."""
    index = {int(v): i for i, v in enumerate(class_values)}
    matrix = np.zeros((len(class_values), len(class_values)), dtype=np.int64)
    for truth, guess in zip(np.asarray(labels), np.asarray(predicted)):
        matrix[index[int(truth)], index[int(guess)]] += 1
    return matrix


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_values: Sequence[int] | None = None,
                           class_names: Sequence[str] | None = None, specificity: float = 0.9,
                           task: str = "") -> dict[str, Any]:
    """Metrics of one task from ``(N, C)`` class probabilities and ``(N,)`` labels.

    Returns ``auroc`` (binary: of the positive class; more classes: macro over the classes
    present), ``auroc_<name>`` per class, ``accuracy``, ``balanced_accuracy`` (mean recall over the
    classes present), ``sensitivity_at_<spec>`` (binary only), ``confusion_matrix`` (list of lists)
    and ``n``. The prediction is the most probable class.
    """
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if probabilities.ndim != 2 or probabilities.shape[0] != labels.shape[0]:
        raise ValueError(f"probabilities must be (N, C) with N = {labels.shape[0]} labels, got {probabilities.shape}")
    n_classes = probabilities.shape[1]
    values = list(range(n_classes)) if class_values is None else [int(v) for v in class_values]
    names = [str(v) for v in values] if class_names is None else [str(n) for n in class_names]
    if len(values) != n_classes or len(names) != n_classes:
        raise ValueError(f"{n_classes} probability columns but {len(values)} class values / {len(names)} names")
    known = labels >= 0
    probabilities, labels = probabilities[known], labels[known]
    unexpected = sorted(set(labels.tolist()) - set(values))
    if unexpected:
        raise ValueError(f"task {task!r}: label values {unexpected} are not among the classes {values}")
    label = f"task {task!r}: " if task else ""
    missing = [name for name, v in zip(names, values) if not (labels == v).any()]
    if missing:
        warnings.warn(f"{label}class(es) {missing} absent from the labels: their metrics are NaN", stacklevel=2)

    out: dict[str, Any] = {"n": int(labels.shape[0])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning above names the absent classes
        per_class = {name: binary_auroc(probabilities[:, i], labels == v)
                     for i, (name, v) in enumerate(zip(names, values))}
    for name, value in per_class.items():
        out[f"auroc_{name}"] = value
    if n_classes == 2:
        out["auroc"] = per_class[names[1]]
    else:
        finite = [v for v in per_class.values() if math.isfinite(v)]
        out["auroc"] = float(np.mean(finite)) if finite else math.nan
    predicted = np.asarray(values)[probabilities.argmax(axis=1)] if len(labels) else np.zeros(0, np.int64)
    out["accuracy"] = float((predicted == labels).mean()) if len(labels) else math.nan
    recalls = [float((predicted[labels == v] == v).mean()) for v in values if (labels == v).any()]
    out["balanced_accuracy"] = float(np.mean(recalls)) if recalls else math.nan
    if n_classes == 2:
        key = f"sensitivity_at_{round(specificity * 100)}spec"
        both = (labels == values[1]).any() and (labels == values[0]).any()
        out[key] = (sensitivity_at_specificity(probabilities[:, 1], labels == values[1], specificity)
                    if both else math.nan)
    out["confusion_matrix"] = confusion_matrix(predicted, labels, values).tolist()
    return out


def logits_to_probabilities(logits: np.ndarray) -> np.ndarray:
    """``(N, 1)`` binary logits -> ``(N, 2)`` probabilities; ``(N, C)`` logits -> softmax."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim == 1 or logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits.reshape(-1)))
        return np.stack([1.0 - p, p], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class ClassificationReport(AccumulatingMetric):
    """Ignite metric: :func:`classification_metrics` of a classifier's logits over the whole run.

    Reads ``(y_pred, y)`` (MONAI engines' ``pred`` and ``label``): logits ``(B, 1)`` (binary) or
    ``(B, C)``, targets as :func:`~mammoclip_monai.evaluation.probe.feature_datalist` writes them.
    ``compute`` returns a dict, which Ignite spreads into ``engine.state.metrics`` as
    ``{prefix}{key}`` entries (``auroc``, ``balanced_accuracy``, ...). With ``select`` it returns
    that one value instead (a scalar, as a key metric for model selection must be). Gathered
    across ranks under DDP.
    """

    def __init__(self, class_names: Sequence[str] | None = None, specificity: float = 0.9, prefix: str = "",
                 select: str | None = None, output_transform=lambda x: (x["pred"], x["label"]),
                 device: str | torch.device = "cpu") -> None:
        self.select = select
        self.class_names = None if class_names is None else [metric_name(n) for n in class_names]
        self.specificity = specificity
        self.prefix = prefix
        super().__init__(output_transform=output_transform, device=device)

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, labels = output
        logits = torch.as_tensor(logits).detach().float()
        self.accumulate(logits=logits.reshape(len(logits), -1),
                        labels=torch.as_tensor(labels).detach().reshape(len(logits), -1)[:, 0].long())

    def compute(self) -> dict[str, Any] | float:
        logits, labels = self.gathered("logits").numpy(), self.gathered("labels").numpy()
        result = classification_metrics(logits_to_probabilities(logits), labels, class_names=self.class_names,
                                        specificity=self.specificity)
        if self.select is not None:
            return float(result[self.select])
        return {f"{self.prefix}{k}": v for k, v in result.items()}
