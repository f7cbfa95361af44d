"""Linear probe and fine-tuning heads on the MammoCLIP image encoder.

:class:`ImageClassifier` puts a linear head on the image encoder's pooled features. With
``freeze="all"`` (the linear probe) the encoder's parameters take no gradient *and* the encoder
stays in eval mode whatever ``train()`` is called with, so batch-norm statistics stay fixed and
dropout is off: the original protocol left them running. ``freeze="none"`` fine-tunes everything,
``freeze="partial"`` all but the last ``trainable_blocks`` blocks.

Because a frozen encoder maps an image to the same features every epoch, :func:`embed_images`
computes them once; the head then trains on the cached vectors (:func:`feature_datalist`) in a
fraction of the time (``scripts/benchmark_probe.py`` measures it). :func:`probe_features` is that
pipeline for one split (``linear_probe.json`` declares it once and applies it to each split), and
:func:`probe_dir` names the folder of one run (the bundle and ``mammoclip data-efficiency`` agree on it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.datalists import batchable
from ..engines.evaluator import image_paths
from ..utils.progress import progress as show_progress

logger = logging.getLogger("mammoclip_monai.evaluation")

FREEZE_MODES = ("all", "partial", "none")
BREAST_KEYS = ("patient_id", "laterality")
AGGREGATIONS = ("image", "breast")


def _blocks(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's sequence of stages (timm ``blocks``; MONAI ``_blocks``), for partial unfreezing."""
    model = getattr(encoder, "model", encoder)
    for name in ("blocks", "_blocks", "layers", "stages"):
        blocks = getattr(model, name, None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)):
            return list(blocks)
    raise ValueError(f"{type(model).__name__}: no block sequence found for partial unfreezing")


class ImageClassifier(nn.Module):
    """Image encoder (pooled features) + a linear head with ``num_outputs`` logits.

    Args:
        encoder: an image encoder with ``forward(x) -> (B, feature_dim)`` and ``feature_dim``
            (``MammoCLIP.image_encoder``).
        num_outputs: 1 for a binary task (a logit for BCE), the number of classes otherwise.
        freeze: ``"all"`` (linear probe), ``"partial"`` (last ``trainable_blocks`` blocks train),
            ``"none"`` (full fine-tuning).
        dropout: dropout before the head (fine-tuning only; a linear probe has none).
    """

    def __init__(self, encoder: nn.Module, num_outputs: int = 1, freeze: str = "all", trainable_blocks: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if freeze not in FREEZE_MODES:
            raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {freeze!r}")
        self.encoder = encoder
        self.freeze = freeze
        self.head = nn.Linear(int(encoder.feature_dim), int(num_outputs))
        self.dropout = nn.Dropout(dropout if freeze != "all" else 0.0)
        self.frozen_modules: list[nn.Module] = []
        for p in encoder.parameters():
            p.requires_grad_(freeze == "none")
        if freeze in ("all", "partial"):
            self.frozen_modules = [encoder]
        if freeze == "partial":
            blocks = _blocks(encoder)
            trainable = blocks[-trainable_blocks:] if trainable_blocks > 0 else []
            for block in trainable:
                for p in block.parameters():
                    p.requires_grad_(True)
            trainable_ids = {id(m) for b in trainable for m in b.modules()}
            self.frozen_modules = [m for m in encoder.modules()
                                   if id(m) not in trainable_ids and not list(m.children())]
        self.train()

    def train(self, mode: bool = True) -> ImageClassifier:
        """Train the head (and unfrozen blocks); frozen parts stay in eval mode (BN fixed, no dropout)."""
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    def features(self, image: torch.Tensor) -> torch.Tensor:
        if self.freeze == "all":
            with torch.no_grad():
                return self.encoder(image)
        return self.encoder(image)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(image)))

    def param_groups(self, lr: float, encoder_lr: float | None = None, weight_decay: float = 0.0) -> list[dict]:
        """Head at ``lr``, trainable encoder parameters at ``encoder_lr`` (default ``lr / 10``)."""
        groups = [{"params": list(self.head.parameters()), "lr": lr, "weight_decay": weight_decay}]
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        if encoder:
            groups.append({"params": encoder, "lr": lr / 10 if encoder_lr is None else encoder_lr,
                           "weight_decay": weight_decay})
        return groups


@torch.no_grad()
def embed_images(encoder: nn.Module, loader: Iterable[Mapping[str, Any]], label_keys: Sequence[str],
                 device: torch.device | str = "cpu", image_key: str = "image", progress: bool = True,
                 desc: str = "embedding images") -> dict[str, np.ndarray]:
    """Pooled features of every image of ``loader`` with the encoder in eval mode, once (with a progress bar).

    Returns ``{"features": (N, D), <label_key>: (N,), "image_path": (N,)}`` and, where the batches
    carry them, ``patient_id`` and ``laterality`` (what :func:`breast_mean` groups by).
    """
    was_training = encoder.training
    encoder.eval()
    features, paths = [], []
    labels: dict[str, list[np.ndarray]] = {k: [] for k in label_keys}
    groups: dict[str, list[str]] = {k: [] for k in BREAST_KEYS}
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    for batch in show_progress(loader, desc, total=total, unit="batch", enabled=progress):
        paths.extend(image_paths(batch, image_key))
        for key in BREAST_KEYS:
            if key in batch:
                groups[key].extend(str(v) for v in batch[key])
        image = batch[image_key]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        features.append(encoder(image.to(device)).float().cpu().numpy())
        for key in label_keys:
            if key not in batch:
                raise KeyError(f"the datalist has no label column {key!r}")
            labels[key].append(torch.as_tensor(batch[key]).reshape(-1).cpu().numpy())
    encoder.train(was_training)
    out = {"features": np.concatenate(features), "image_path": np.asarray(paths)}
    out.update({k: np.concatenate(v) for k, v in labels.items()})
    out.update({k: np.asarray(v) for k, v in groups.items() if len(v) == len(paths)})
    return out


def breast_mean(cache: Mapping[str, np.ndarray], label_keys: Sequence[str]) -> dict[str, np.ndarray]:
    """One row per breast (patient and laterality): the mean feature over its views.

    The RSNA protocol scores a breast by the mean of its views' predictions; for a linear head the
    mean of the logits *is* the logit of the mean feature, so averaging cached features is exact.
    A breast's label is the maximum known label over its views (-1 when none is known);
    ``image_path`` joins the views' paths with ``";"``.
    """
    missing = [k for k in BREAST_KEYS if k not in cache]
    if missing:
        raise KeyError(f"per-breast aggregation needs {missing} in the cached features (datalist columns)")
    rows: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(cache["patient_id"], cache["laterality"])):
        rows.setdefault((str(key[0]), str(key[1])), []).append(i)
    index = list(rows.values())
    out = {"features": np.stack([cache["features"][ix].mean(0) for ix in index]),
           "image_path": np.asarray([";".join(str(cache["image_path"][i]) for i in ix) for ix in index]),
           "patient_id": np.asarray([k[0] for k in rows]), "laterality": np.asarray([k[1] for k in rows])}
    for key in label_keys:
        out[key] = np.asarray([int(np.max(cache[key][ix])) for ix in index])
    return out


def embed_datalist(encoder: nn.Module, items: Sequence[Mapping[str, Any]], transform: Any, label_keys: Sequence[str],
                   device: torch.device | str = "cpu", batch_size: int = 16, num_workers: int = 0,
                   progress: bool = True) -> dict[str, np.ndarray]:
    """:func:`embed_images` over a datalist run through ``transform`` (the deterministic preprocessing)."""
    from monai.data import DataLoader, Dataset

    if not items:
        raise ValueError("the datalist to embed is empty")
    loader = DataLoader(Dataset(batchable(items, label_keys), transform), batch_size=batch_size,
                        num_workers=num_workers)
    return embed_images(encoder, loader, label_keys, device=device, progress=progress,
                        desc=f"embedding {len(items)} images")


def probe_features(items: Sequence[Mapping[str, Any]], encoder: nn.Module, transform: Any, label_key: str,
                   values: Sequence[int], aggregate: str = "image", device: torch.device | str = "cpu",
                   batch_size: int = 16, num_workers: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """A split's datalist for the probe head: its images embedded once by the frozen ``encoder``
    (:func:`embed_datalist`, labels of ``label_key``), then as :func:`feature_datalist` items of the
    prompt set's class ``values`` (per image, or per breast with ``aggregate="breast"``)."""
    cache = embed_datalist(encoder, items, transform, [label_key], device, batch_size=batch_size,
                           num_workers=num_workers, progress=progress)
    return feature_datalist(cache, label_key, values, aggregate=aggregate)


def head_outputs(num_classes: int) -> int:
    """Logits of a head for ``num_classes`` classes: one for a binary task (BCE), one per class otherwise
    (cross-entropy), the rule :func:`probe_loss` and :func:`feature_datalist`'s targets follow."""
    return 1 if int(num_classes) == 2 else int(num_classes)


def probe_dir(root: str | os.PathLike, method: str, task: str, fraction: float) -> str:
    """The folder of one probe / fine-tuning run: ``<root>/<method>/<task>_<percent>pct`` (the bundle's
    ``probe_dir``, and where ``mammoclip data-efficiency`` looks for each run's ``metrics.json``)."""
    return os.path.join(os.fspath(root), method, f"{task}_{round(fraction * 100)}pct")


def _target(index: int, binary: bool) -> torch.Tensor:
    """BCE wants a float ``(1,)`` target, cross-entropy a long scalar."""
    return torch.tensor([float(index)]) if binary else torch.tensor(index, dtype=torch.long)


def feature_datalist(cache: Mapping[str, np.ndarray], label_key: str, values: Sequence[int],
                     image_key: str = "image", aggregate: str = "image") -> list[dict[str, Any]]:
    """Cached features as a MONAI datalist: ``{"image": (D,) tensor, "label": target, "image_path"}``.

    Labels are mapped to class indices of ``values`` (binary: a float ``(1,)`` target for BCE;
    more classes: a long index for cross-entropy); items whose label is not one of ``values``
    (unknown, -1) are left out. ``aggregate="breast"`` gives one item per breast
    (:func:`breast_mean`).
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    if aggregate == "breast":
        cache = breast_mean(cache, [label_key])
    index = {int(v): i for i, v in enumerate(values)}
    binary = len(values) == 2
    items = []
    for i, (vector, label) in enumerate(zip(cache["features"], cache[label_key])):
        if int(label) not in index:
            continue
        items.append({image_key: torch.from_numpy(np.asarray(vector, np.float32)),
                      "label": _target(index[int(label)], binary), "image_path": str(cache["image_path"][i])})
    if not items:
        raise ValueError(f"no item has a known {label_key!r} label among {list(values)}")
    return items


def image_datalist(items: Sequence[Mapping[str, Any]], label_key: str, values: Sequence[int],
                   aggregate: str = "image") -> list[dict[str, Any]]:
    """Image items for fine-tuning, with ``label`` as :func:`feature_datalist` writes it (unknown left out).

    Fine-tuning scores images: ``aggregate="breast"`` is an error rather than silently ignored.
    """
    if aggregate != "image":
        raise ValueError(f"aggregate={aggregate!r}: per-breast scoring works on cached features (the linear "
                         "probe); fine-tuning scores each image")
    index = {int(v): i for i, v in enumerate(values)}
    binary = len(values) == 2
    out = []
    for item in items:
        if label_key not in item:
            raise KeyError(f"the datalist has no label column {label_key!r}")
        if int(item[label_key]) in index:
            out.append({"image": item["image"], "laterality": item.get("laterality", ""), "view": item.get("view", ""),
                        "label": _target(index[int(item[label_key])], binary)})
    if not out:
        raise ValueError(f"no item has a known {label_key!r} label among {list(values)}")
    return out


def probe_loss(items: Sequence[Mapping[str, Any]], num_classes: int,
               device: torch.device | str | None = None) -> nn.Module:
    """Class-balanced loss from the training items: BCE with ``pos_weight`` (binary) or weighted CE,
    on ``device`` (its weights are buffers) when given."""
    targets = np.asarray([float(torch.as_tensor(item["label"]).reshape(-1)[0]) for item in items])
    if num_classes == 2:
        loss: nn.Module = nn.BCEWithLogitsLoss(pos_weight=positive_weight(targets.astype(int)))
    else:
        loss = nn.CrossEntropyLoss(weight=class_weights(targets.astype(int), num_classes))
    return loss if device is None else loss.to(device)


def positive_weight(labels: Sequence[int] | np.ndarray) -> torch.Tensor:
    """``n_negative / n_positive`` of the training labels (BCE ``pos_weight``; unknown -1 ignored)."""
    labels = np.asarray(labels)
    labels = labels[labels >= 0]
    positives = int((labels == 1).sum())
    if positives == 0:
        raise ValueError("the training split has no positive sample: the task cannot be learned")
    return torch.tensor([(len(labels) - positives) / positives], dtype=torch.float32)


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights for cross-entropy (mean 1 over the classes present)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels[labels >= 0], minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(int((counts > 0).sum()), 1), 0.0)
    return torch.tensor(weights, dtype=torch.float32)
