"""Ignite metric for FActOR model selection: how well each attribute head separates images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from ..engines.metrics import _gather, binary_auroc

__all__ = ["AttributeAUROC"]


class AttributeAUROC(Metric):
    """AUROC of the FActOR evidence (present minus absent logit) per attribute; the mean by default.

    Reads ``(pred (B, A, 2), label (B, A))`` (a ``SupervisedEvaluator``'s output with
    ``decollate=False``); unknown labels (-1) are left out; ``attribute`` selects one head.
    """

    def __init__(self, attribute: int | None = None, output_transform=lambda out: (out["pred"], out["label"]),
                 device: str | torch.device = "cpu") -> None:
        self.attribute = attribute
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        logits, labels = output
        self._scores.append((logits[..., 1] - logits[..., 0]).detach().float().cpu())
        self._labels.append(torch.as_tensor(labels).detach().reshape(logits.shape[:2]).cpu())

    def compute(self) -> float:
        scores, labels = _gather(self._scores).numpy(), _gather(self._labels).numpy()
        heads = range(scores.shape[1]) if self.attribute is None else [self.attribute]
        values = []
        for a in heads:
            known = labels[:, a] >= 0
            values.append(binary_auroc(scores[known, a], labels[known, a]))
        return float(np.nanmean(values)) if not all(np.isnan(values)) else float("nan")
