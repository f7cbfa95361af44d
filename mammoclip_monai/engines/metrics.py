"""Ignite metrics for contrastive evaluation: retrieval recall@K and zero-shot AUROC.

Both accumulate per-sample outputs of :class:`~mammoclip_monai.engines.evaluator.ContrastiveEvaluator`
over the whole evaluation set (gathered across ranks under DDP) and compute once at the end, since
retrieval ranks every image against every text of the set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import ignite.distributed as idist
import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.utils import evenly_divisible_all_gather
from scipy.stats import rankdata

DIRECTIONS = ("image_to_text", "text_to_image")


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


def _gather(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate this rank's tensors, then across ranks (a DistributedSampler without padding
    gives ranks shards that differ in length, which a plain all_gather cannot take)."""
    if not tensors:
        raise NotComputableError("the metric needs at least one batch before compute()")
    local = torch.cat(tensors)
    return evenly_divisible_all_gather(local, concat=True) if idist.get_world_size() > 1 else local


class RetrievalRecall(Metric):
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

    @reinit__is_reduced
    def reset(self) -> None:
        self._images: list[torch.Tensor] = []
        self._texts: list[torch.Tensor] = []
        self._ids: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        images, texts, ids = output
        self._images.append(images.detach().float().cpu())
        self._texts.append(texts.detach().float().cpu())
        self._ids.append(ids.detach().cpu())

    def compute(self) -> float:
        images, texts, ids = _gather(self._images), _gather(self._texts), _gather(self._ids)
        _, text_group = torch.unique(ids, dim=0, return_inverse=True)
        similarity = images @ texts.T  # (N images, N texts)
        if self.direction == "text_to_image":
            similarity = similarity.T
        k = min(self.k, similarity.shape[1])
        top = similarity.topk(k, dim=1).indices
        hits = (text_group[top] == text_group[:, None]).any(dim=1)
        return float(hits.float().mean())


class ZeroShotAUROC(Metric):
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

    @reinit__is_reduced
    def reset(self) -> None:
        self._probs: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        self._labels: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}

    @reinit__is_reduced
    def update(self, output: tuple[dict, dict]) -> None:
        zero_shot, labels = output
        for task in self.tasks:
            if task not in zero_shot or task not in labels:
                raise KeyError(f"zero-shot task {task!r}: no probabilities or no labels in the evaluator output "
                               "(is its label column in the datalist?)")
            self._probs[task].append(zero_shot[task].detach().float().cpu())
            self._labels[task].append(labels[task].detach().cpu())

    def compute(self) -> float:
        values = []
        for task in self.tasks:
            probs, labels = _gather(self._probs[task]).numpy(), _gather(self._labels[task]).numpy()
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
