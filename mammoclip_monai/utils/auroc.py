"""The AUROC core every evaluation shares: the rank-sum AUROC and an Ignite metric that accumulates.

Zero-shot (``engines``), classifier reports (``evaluation``) and FActOR attributes (``interpret``)
all collect per-sample scores over a whole evaluation set, gather them across ranks and compute
once; :class:`AccumulatingMetric` is that collecting, written once.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from scipy.stats import rankdata

from .distributed import gather_tensors

__all__ = ["binary_auroc", "macro_auroc", "AccumulatingMetric"]


def binary_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half.

    NaN (with a warning) when only one class is present: the AUROC is undefined there.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        warnings.warn(f"AUROC undefined: {n_pos} positive and {n_neg} negative sample(s); reporting NaN",
                      stacklevel=2)
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auroc(probabilities: np.ndarray, labels: np.ndarray, values: Sequence[int]) -> float:
    """Mean one-vs-rest AUROC over the classes present (binary: the positive class's AUROC)."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    if len(values) == 2:
        return binary_auroc(probabilities[:, 1], labels == values[1])
    per_class = [binary_auroc(probabilities[:, i], labels == v) for i, v in enumerate(values)
                 if (labels == v).any() and (labels != v).any()]
    if not per_class:
        warnings.warn("macro AUROC undefined: fewer than two classes present; reporting NaN", stacklevel=2)
        return math.nan
    return float(np.mean(per_class))


class AccumulatingMetric(Metric):
    """An Ignite metric that keeps named per-batch tensors (on the CPU) and sees them whole at the end.

    Subclasses call :meth:`accumulate` in ``update`` and :meth:`gathered` in ``compute``: the
    concatenation over every batch of the run and, under DDP, every rank.
    """

    @reinit__is_reduced
    def reset(self) -> None:
        self._accumulated: defaultdict[str, list[torch.Tensor]] = defaultdict(list)

    def accumulate(self, **tensors: torch.Tensor) -> None:
        """Keep a detached CPU copy of each named tensor (floating tensors as float32)."""
        for name, tensor in tensors.items():
            tensor = torch.as_tensor(tensor).detach()
            self._accumulated[name].append((tensor.float() if tensor.is_floating_point() else tensor).cpu())

    def gathered(self, name: str) -> torch.Tensor:
        """Everything accumulated under ``name`` in this run, across ranks."""
        if not self._accumulated.get(name):
            raise NotComputableError(f"{type(self).__name__} needs at least one batch before compute()")
        return gather_tensors(self._accumulated[name])
