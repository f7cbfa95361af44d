"""Ignite metrics for contrastive evaluation: retrieval recall@K and zero-shot AUROC.

Both accumulate per-sample outputs of :class:`~mammoclip_monai.engines.evaluator.ContrastiveEvaluator`
over the whole evaluation set (gathered across ranks under DDP) and compute once at the end, since
retrieval ranks every image against every text of the set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Average

from ..utils.auroc import AccumulatingMetric, binary_auroc, macro_auroc

__all__ = ["RetrievalRecall", "ZeroShotAUROC", "retrieval_metrics", "zero_shot_metrics", "contrastive_metrics",
           "loss_of", "binary_auroc", "macro_auroc"]

DIRECTIONS = ("image_to_text", "text_to_image")


class RetrievalRecall(AccumulatingMetric):
    """Recall@K of image-to-text or text-to-image retrieval over the whole evaluation set.

    A retrieval is correct when one of the top ``k`` candidates is the paired sample or has
    exactly the same text (templated sentences repeat, and an identical sentence is not wrong).
    """

    required_output_keys = ("image_features", "text_features", "input_ids")

    def __init__(self, k: int = 1, direction: str = "image_to_text", output_transform=lambda x: x,
                 device: str | torch.device = "cpu") -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.k, self.direction = int(k), direction
        super().__init__(output_transform=output_transform, device=device)

    def update(self, output: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        images, texts, ids = output
        self.accumulate(images=images, texts=texts, ids=ids)

    def compute(self) -> float:
        images, texts, ids = self.gathered("images"), self.gathered("texts"), self.gathered("ids")
        _, text_group = torch.unique(ids, dim=0, return_inverse=True)
        similarity = images @ texts.T  # (N images, N texts)
        if self.direction == "text_to_image":
            similarity = similarity.T
        k = min(self.k, similarity.shape[1])
        top = similarity.topk(k, dim=1).indices
        hits = (text_group[top] == text_group[:, None]).any(dim=1)
        return float(hits.float().mean())


class ZeroShotAUROC(AccumulatingMetric):
    """Zero-shot AUROC of one prompt set (macro one-vs-rest for more than two classes).

    Reads ``output["zero_shot"][task]`` (class probabilities) and ``output["labels"][task]``
    (class indices, as :class:`~mammoclip_monai.engines.evaluator.ContrastiveEvaluator` writes
    them); samples with an unknown label (-1) are left out. Several tasks give the mean of their
    AUROCs.
    """

    required_output_keys = ("zero_shot", "labels")

    def __init__(self, tasks: str | Sequence[str], output_transform=lambda x: x,
                 device: str | torch.device = "cpu") -> None:
        self.tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        super().__init__(output_transform=output_transform, device=device)

    def update(self, output: tuple[dict, dict]) -> None:
        zero_shot, labels = output
        for task in self.tasks:
            if task not in zero_shot or task not in labels:
                raise KeyError(f"zero-shot task {task!r}: no probabilities or no labels in the evaluator output "
                               "(is its label column in the datalist?)")
            self.accumulate(**{f"probs/{task}": zero_shot[task], f"labels/{task}": labels[task]})

    def compute(self) -> float:
        values = []
        for task in self.tasks:
            probs, labels = self.gathered(f"probs/{task}").numpy(), self.gathered(f"labels/{task}").numpy()
            known = labels >= 0
            values.append(macro_auroc(probs[known], labels[known], list(range(probs.shape[1]))))
        return float(np.mean(values))


def retrieval_metrics(ks: Sequence[int] = (1, 5, 10), prefix: str = "val_") -> dict[str, RetrievalRecall]:
    """``{prefix}i2t_recall{k}`` and ``{prefix}t2i_recall{k}`` metrics for a bundle config's ``additional_metrics``."""
    metrics = {}
    for k in ks:
        metrics[f"{prefix}i2t_recall{k}"] = RetrievalRecall(k, "image_to_text")
        metrics[f"{prefix}t2i_recall{k}"] = RetrievalRecall(k, "text_to_image")
    return metrics


def zero_shot_metrics(tasks: Sequence[str], prefix: str = "val_") -> dict[str, ZeroShotAUROC]:
    """One ``{prefix}zs_auroc_{task}`` metric per task."""
    return {f"{prefix}zs_auroc_{task}": ZeroShotAUROC(task) for task in tasks}


def loss_of(output: dict[str, Any]) -> torch.Tensor:
    """The loss of an engine's output dict: the ``output_transform`` of loss metrics and loss logging handlers."""
    return output["loss"]


def contrastive_metrics(zero_shot_tasks: Sequence[str], prefix: str = "val_", ks: Sequence[int] = (1, 5, 10),
                        loss: bool = True) -> dict[str, Any]:
    """Every metric a contrastive evaluation reports beside its key metric: zero-shot AUROC per task,
    retrieval recall@K both ways and (``loss``) the mean loss, keyed ``{prefix}...``."""
    metrics: dict[str, Any] = {**zero_shot_metrics(zero_shot_tasks, prefix), **retrieval_metrics(ks, prefix)}
    if loss:
        metrics[f"{prefix}loss"] = Average(output_transform=loss_of)
    return metrics
