"""Ignite metric for FActOR model selection: how well each attribute head separates images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..utils.auroc import AccumulatingMetric, binary_auroc

__all__ = ["AttributeAUROC", "attribute_metrics"]


class AttributeAUROC(AccumulatingMetric):
    """AUROC of the FActOR evidence (present minus absent logit) per attribute; the mean by default.

    Reads ``(pred (B, A, 2), label (B, A))`` (a ``SupervisedEvaluator``'s output with
    ``decollate=False``); unknown labels (-1) are left out; ``attribute`` selects one head.
    """

    def __init__(self, attribute: int | None = None, output_transform=lambda out: (out["pred"], out["label"]),
                 device: str | torch.device = "cpu") -> None:
        self.attribute = attribute
        super().__init__(output_transform=output_transform, device=device)

    def update(self, output: Sequence[torch.Tensor]) -> None:
        logits, labels = output
        self.accumulate(scores=(logits[..., 1] - logits[..., 0]).float(),
                        labels=torch.as_tensor(labels).reshape(logits.shape[:2]))

    def compute(self) -> float:
        scores, labels = self.gathered("scores").numpy(), self.gathered("labels").numpy()
        heads = range(scores.shape[1]) if self.attribute is None else [self.attribute]
        values = []
        for a in heads:
            known = labels[:, a] >= 0
            values.append(binary_auroc(scores[known, a], labels[known, a]))
        return float(np.nanmean(values)) if not all(np.isnan(values)) else float("nan")


def attribute_metrics(attributes: Sequence[str], prefix: str = "val_auroc_") -> dict[str, AttributeAUROC]:
    """One :class:`AttributeAUROC` per attribute head, keyed ``{prefix}{attribute}`` (a FActOR evaluator's
    ``additional_metrics`` beside the mean AUROC it selects on)."""
    return {f"{prefix}{attribute}": AttributeAUROC(index) for index, attribute in enumerate(attributes)}
