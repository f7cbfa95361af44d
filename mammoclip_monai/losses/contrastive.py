"""Contrastive image-text losses of Mammo-CLIP: CLIP InfoNCE, the multi-view loss, SigLIP.

All losses take L2-normalised features and the *multiplier* ``logit_scale`` (``s = exp(t)``,
already clamped by the model) and return a scalar; SigLIP also takes the model's learnable
``logit_bias``. Under ``torch.distributed`` every rank
gathers the other ranks' features (with gradients) so that negatives span the global batch;
with ``local_loss=True`` a rank scores only its own rows against all columns, which makes the
DDP-averaged gradient equal to the single-process gradient of the mean loss over all rows.

Label-aware training (UniCL / MedCLIP style): sentences synthesised from labels repeat inside
a batch ("no mass ..."), and plain InfoNCE treats samples with the same findings as negatives
of each other. Pass a row-stochastic ``targets`` matrix from :func:`label_aware_targets` so
that samples sharing a label set (or a text) count as positives for each other. Soft targets
are scored as KL(t || softmax) (soft CE minus the targets' entropy, same gradient), so the
loss has no batch-dependent floor of ``log k`` for k duplicates.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import gather_no_grad, gather_sizes, gather_with_grad, is_distributed, local_offset

__all__ = [
    "ClipLoss",
    "MultiViewClipLoss",
    "SigLipLoss",
    "label_aware_targets",
    "soft_cross_entropy",
    "build_loss",
    "Targets",
]

Targets = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
"""``None`` (hard diagonal), one (rows x global) row-stochastic matrix used for both directions
(valid for the symmetric relations :func:`label_aware_targets` builds), or a pair
``(forward, backward)``: rows of the first modality over the second's columns, and vice versa."""


# ----------------------------------------------------------------------------- helpers
def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits lose the softmax tail; compute losses in float32 at least."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _as_scale(value: torch.Tensor | float, like: torch.Tensor, name: str = "logit_scale") -> torch.Tensor:
    """A scalar (the multiplier, the SigLIP bias) as a 0-d tensor of ``like``'s dtype and device
    (gradient preserved)."""
    if not isinstance(value, torch.Tensor):
        return torch.tensor(float(value), dtype=like.dtype, device=like.device)
    if value.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
    return value.reshape(()).to(dtype=like.dtype, device=like.device)


def _check_features(*named: tuple[str, torch.Tensor | None]) -> None:
    """Fail early on shape mistakes that would otherwise broadcast into a wrong loss."""
    present = [(k, v) for k, v in named if v is not None]
    for k, v in present:
        if v.ndim != 2:
            raise ValueError(f"{k} must be (batch, dim), got shape {tuple(v.shape)}")
    shapes = {tuple(v.shape) for _, v in present}
    if len(shapes) != 1:
        found = ", ".join(f"{k}={tuple(v.shape)}" for k, v in present)
        raise ValueError(f"all feature tensors must share (batch, dim), got {found}")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over rows, for class indices or row-stochastic ``targets``.

    For soft targets the value is ``-sum(t * log_softmax) - H(t)`` = KL(t || softmax): the
    gradient is exactly the soft-CE gradient, but the constant floor ``H(t)`` (``log k`` for a
    row with k equal positives) is removed, so a label-aware loss reads 0 at its optimum and
    compares with the plain loss; one-hot targets give plain CE. ``H`` is that of the targets
    before label smoothing, so ``targets=eye`` and hard targets agree with smoothing too.
    """
    if not targets.is_floating_point():
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    targets = targets.to(logits.dtype)
    neg_entropy = torch.special.xlogy(targets, targets).sum(dim=-1).mean()
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing) + neg_entropy


def _split_targets(targets: Targets, rows: int, cols: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(forward, backward) soft targets, each validated as (rows, cols)."""
    if targets is None:
        return None, None
    fwd, bwd = targets if isinstance(targets, (tuple, list)) else (targets, targets)
    for t in (fwd, bwd):
        if tuple(t.shape) != (rows, cols):
            raise ValueError(
                f"targets must be (rows, global batch) = ({rows}, {cols}), got {tuple(t.shape)}; "
                "with local_loss=True under DDP pass this rank's rows (label_aware_targets(local_rows=True))"
            )
    return fwd, bwd


def _ensure_finite(owner: str, terms: dict[str, torch.Tensor]) -> None:
    """Raise instead of letting a NaN/inf loss silently train (one host sync for all terms)."""
    values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
    if bool(torch.isfinite(values).all()):
        return
    bad = [f"{k}={v}" for k, v in zip(terms, values.tolist()) if not math.isfinite(v)]
    raise FloatingPointError(
        f"{owner}: non-finite loss term(s): {', '.join(bad)} "
        "(check the inputs, the learning rate, AMP scaling; pass check_finite=False to disable this guard)"
    )


# ----------------------------------------------------------------------------- InfoNCE family
class _GatheringLoss(nn.Module):
    """Shared machinery: cross-rank gathering and directional cross-entropies."""

    def __init__(self, label_smoothing: float, local_loss: bool, gather_with_grad: bool, check_finite: bool) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.local_loss = bool(local_loss)
        self.gather_with_grad = bool(gather_with_grad)
        self.check_finite = bool(check_finite)
        self.last_terms: dict[str, torch.Tensor] = {}

    def _gather(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], int, int]:
        """Gathered copies of ``xs`` (same batch size), this rank's row offset, global batch."""
        n = xs[0].shape[0]
        if not is_distributed():
            return [_upcast(x) for x in xs], 0, n
        sizes = gather_sizes(n, xs[0].device)
        if self.gather_with_grad:
            alls = [gather_with_grad(x, sizes) for x in xs]
        else:
            alls = [gather_no_grad(x, sizes, keep_local_grad=True) for x in xs]
        return [_upcast(x) for x in alls], local_offset(sizes), sum(sizes)

    def _rows(self, n_local: int, n_global: int) -> int:
        return n_local if (self.local_loss and is_distributed()) else n_global

    def _pair(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        a_all: torch.Tensor,
        b_all: torch.Tensor,
        scale: torch.Tensor,
        offset: int,
        fwd: torch.Tensor | None,
        bwd: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CE(a -> b) and CE(b -> a), matched pairs on the (offset) diagonal unless soft targets."""
        if self.local_loss and is_distributed():
            a, b = _upcast(a), _upcast(b)
            logits_ab = scale * (a @ b_all.T)
            logits_ba = scale * (b @ a_all.T)
            hard = torch.arange(a.shape[0], device=a.device) + offset
        else:
            logits_ab = scale * (a_all @ b_all.T)
            logits_ba = logits_ab.T
            hard = torch.arange(a_all.shape[0], device=a_all.device)
        ls = self.label_smoothing
        loss_ab = soft_cross_entropy(logits_ab, hard if fwd is None else fwd, ls)
        loss_ba = soft_cross_entropy(logits_ba, hard if bwd is None else bwd, ls)
        return loss_ab, loss_ba

    def _finish(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        if self.check_finite:
            _ensure_finite(type(self).__name__, {"logit_scale": scale, **terms, "total": loss})
        return loss


class ClipLoss(_GatheringLoss):
    """Symmetric InfoNCE (CLIP): ``1/2 [CE(s I T^T) + CE(s T I^T)]`` with diagonal (or soft) targets.

    ``gather_with_grad=False`` gathers other ranks' features as constants (cheaper, but the
    gradient then differs from the single-process one); keep the default for exactness.
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        check_finite: bool = True,
    ) -> None:
        super().__init__(label_smoothing, local_loss, gather_with_grad, check_finite)

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        targets: Targets = None,
    ) -> torch.Tensor:
        _check_features(("image_features", image_features), ("text_features", text_features))
        (img_all, txt_all), offset, n_global = self._gather([image_features, text_features])
        scale = _as_scale(logit_scale, img_all)
        fwd, bwd = _split_targets(targets, self._rows(image_features.shape[0], n_global), n_global)
        i2t, t2i = self._pair(image_features, text_features, img_all, txt_all, scale, offset, fwd, bwd)
        loss = 0.5 * (i2t + t2i)
        return self._finish(loss, {"image_to_text": i2t, "text_to_image": t2i}, scale)


class MultiViewClipLoss(_GatheringLoss):
    """Mammo-CLIP's loss: image-text InfoNCE over every (view, text) pairing plus image-image
    (ICL) and text-text (TCL) InfoNCE between the two views / the two texts of a sample.

    ``L = w_it/2 (L_i2t + L_t2i) + w_ii L_ICL + w_tt L_TCL``, ``L_i2t`` the mean of the
    pairings' CE(s I T^T). A missing second view or text drops its pairings and its ICL/TCL
    term, so one (image, text) per sample gives ``w_it * ClipLoss``.
    """

    def __init__(
        self,
        image_text_weight: float = 1.0,
        image_image_weight: float = 1.0,
        text_text_weight: float = 0.5,
        label_smoothing: float = 0.0,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        check_finite: bool = True,
    ) -> None:
        super().__init__(label_smoothing, local_loss, gather_with_grad, check_finite)
        self.image_text_weight = float(image_text_weight)
        self.image_image_weight = float(image_image_weight)
        self.text_text_weight = float(text_text_weight)

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        image_features2: torch.Tensor | None = None,
        text_features2: torch.Tensor | None = None,
        targets: Targets = None,
    ) -> torch.Tensor:
        _check_features(
            ("image_features", image_features),
            ("text_features", text_features),
            ("image_features2", image_features2),
            ("text_features2", text_features2),
        )
        images = [x for x in (image_features, image_features2) if x is not None]
        texts = [x for x in (text_features, text_features2) if x is not None]
        gathered, offset, n_global = self._gather(images + texts)
        img_all, txt_all = gathered[: len(images)], gathered[len(images) :]
        scale = _as_scale(logit_scale, gathered[0])
        fwd, bwd = _split_targets(targets, self._rows(image_features.shape[0], n_global), n_global)

        terms: dict[str, torch.Tensor] = {}
        loss = scale.new_zeros(())
        if self.image_text_weight != 0.0:
            i2t, t2i = zip(
                *(
                    self._pair(img, txt, ia, ta, scale, offset, fwd, bwd)
                    for img, ia in zip(images, img_all)
                    for txt, ta in zip(texts, txt_all)
                )
            )
            terms["image_to_text"] = torch.stack(i2t).mean()
            terms["text_to_image"] = torch.stack(t2i).mean()
            loss = loss + self.image_text_weight * 0.5 * (terms["image_to_text"] + terms["text_to_image"])
        if len(images) == 2 and self.image_image_weight != 0.0:
            a, b = self._pair(images[0], images[1], img_all[0], img_all[1], scale, offset, fwd, bwd)
            terms["image_image"] = 0.5 * (a + b)
            loss = loss + self.image_image_weight * terms["image_image"]
        if len(texts) == 2 and self.text_text_weight != 0.0:
            a, b = self._pair(texts[0], texts[1], txt_all[0], txt_all[1], scale, offset, fwd, bwd)
            terms["text_text"] = 0.5 * (a + b)
            loss = loss + self.text_text_weight * terms["text_text"]
        return self._finish(loss, terms, scale)


# ----------------------------------------------------------------------------- SigLIP
class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (Zhai et al. 2023): ``-1/N sum_ij log sigmoid(z_ij (s <i,t_j> + b))``.

    ``z`` is +1 for matched pairs (the diagonal, plus the positives ``targets > 0`` of a
    label-aware matrix) and -1 otherwise. As in the paper and open_clip, the sum runs over this
    rank's N images and every text of the global batch and is divided by N (not by the number of
    pairs): the loss does not shrink as the batch grows. Under DDP the rank-averaged loss is then
    the single-process loss of the concatenated batch (equal shards).

    ``logit_scale`` and ``logit_bias`` are the model's (``MammoCLIP`` built with
    ``logit_bias_init``): a bias owned by the model is seen by the optimiser, all-reduced by DDP
    and saved with the weights. The loss itself has no parameters.
    """

    def __init__(self, check_finite: bool = True) -> None:
        super().__init__()
        self.check_finite = bool(check_finite)
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float,
        targets: Targets = None,
    ) -> torch.Tensor:
        _check_features(("image_features", image_features), ("text_features", text_features))
        n = image_features.shape[0]
        sizes = gather_sizes(n, image_features.device)
        offset, n_global = local_offset(sizes), sum(sizes)
        img = _upcast(image_features)
        txt_all = _upcast(gather_with_grad(text_features, sizes))
        scale = _as_scale(logit_scale, img)
        bias = _as_scale(logit_bias, img, "logit_bias")
        logits = scale * (img @ txt_all.T) + bias

        rows = torch.arange(n, device=img.device)
        positive = torch.zeros(n, n_global, dtype=torch.bool, device=img.device)
        if targets is not None:
            fwd, _ = _split_targets(targets, n, n_global)
            positive = fwd.to(img.device) > 0
        positive[rows, rows + offset] = True
        signs = positive.to(logits.dtype) * 2.0 - 1.0
        loss = -F.logsigmoid(signs * logits).sum() / n

        self.last_terms = {"sigmoid": loss.detach()}
        if self.check_finite:
            _ensure_finite(type(self).__name__, {"logit_scale": scale, "logit_bias": bias, "sigmoid": loss})
        return loss


# ----------------------------------------------------------------------------- label-aware targets
def _group_ids(x: torch.Tensor) -> torch.Tensor:
    """Integer id per row, equal ids for equal rows (avoids a B x B x L comparison)."""
    flat = x.reshape(x.shape[0], -1)
    if flat.is_floating_point():
        flat = torch.nan_to_num(flat, nan=-1.0)
    return torch.unique(flat, dim=0, return_inverse=True)[1]


def _soft_similarity(a: torch.Tensor, b: torch.Tensor, similarity: str) -> torch.Tensor:
    """Pairwise similarity of non-negative label vectors; two all-zero vectors are identical (1)."""
    if similarity == "jaccard":
        inter = torch.minimum(a[:, None, :], b[None, :, :]).sum(-1)
        union = torch.maximum(a[:, None, :], b[None, :, :]).sum(-1)
        return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.ones_like(union))
    if similarity == "cosine":
        na, nb = a.norm(dim=1), b.norm(dim=1)
        cos = (a @ b.T) / (na[:, None] * nb[None, :]).clamp_min(1e-12)
        both_zero = (na[:, None] == 0) & (nb[None, :] == 0)
        return torch.where(both_zero, torch.ones_like(cos), cos)
    raise ValueError(f"similarity must be 'jaccard' or 'cosine', got {similarity!r}")


def label_aware_targets(
    labels: torch.Tensor | None = None,
    text_ids: torch.Tensor | None = None,
    mode: str = "exact",
    similarity: str = "jaccard",
    local_rows: bool = True,
    normalize: bool = True,
) -> torch.Tensor:
    """Soft targets that treat samples with the same labels (or the same text) as positives.

    Args:
        labels: ``(B,)`` class indices or ``(B, C)`` multi-hot / soft label vectors of this
            rank's samples. A row with any negative (e.g. -1) or NaN entry is *unknown*: it
            makes no label-based positives and only matches itself.
        text_ids: ``(B,)`` text ids or ``(B, L)`` token ids (padded alike); equal rows are
            the same sentence and are positives whatever the labels say.
        mode: ``"exact"`` (positive iff label vectors are equal) or ``"soft"`` (weight =
            ``similarity`` of the label vectors, Jaccard ``sum(min)/sum(max)`` or cosine;
            ``(B,)`` class indices stay exact).
        local_rows: under DDP return this rank's rows over the gathered columns,
            ``(B_local, B_global)``, as losses with ``local_loss=True`` expect; otherwise all
            rows ``(B_global, B_global)``. Without a process group both give ``(B, B)``.
        normalize: divide rows by their sum (row-stochastic, for cross-entropy).

    The relation is symmetric, so the same matrix serves the image->text and text->image
    directions. The diagonal (a sample with itself) is always 1 before normalisation.
    """
    if labels is None and text_ids is None:
        raise ValueError("label_aware_targets needs labels, text_ids or both")
    if mode not in ("exact", "soft"):
        raise ValueError(f"mode must be 'exact' or 'soft', got {mode!r}")
    labels = None if labels is None else torch.as_tensor(labels)
    ref = labels if labels is not None else torch.as_tensor(text_ids)
    n, device = ref.shape[0], ref.device
    text_ids = None if text_ids is None else torch.as_tensor(text_ids, device=device)
    if text_ids is not None and text_ids.shape[0] != n:
        raise ValueError(f"labels and text_ids disagree on the batch size: {n} vs {text_ids.shape[0]}")
    sizes = gather_sizes(n, device)
    offset, n_global = local_offset(sizes), sum(sizes)
    row_slice = slice(offset, offset + n) if local_rows else slice(0, n_global)
    n_rows = row_slice.stop - row_slice.start
    relation = torch.zeros(n_rows, n_global, dtype=torch.float32, device=device)

    if labels is not None:
        class_index = labels.ndim == 1
        lab = (labels[:, None] if class_index else labels.reshape(n, -1)).float()
        lab_all = gather_no_grad(lab, sizes)
        known = torch.isfinite(lab_all).all(1) & (lab_all >= 0).all(1)
        if mode == "exact" or class_index:
            ids = _group_ids(lab_all)
            sim = (ids[row_slice, None] == ids[None, :]).float()
        else:
            clean = torch.nan_to_num(lab_all, nan=0.0).clamp_min(0.0)
            sim = _soft_similarity(clean[row_slice], clean, similarity).float()
        sim = sim * (known[row_slice, None] & known[None, :]).float()
        relation = torch.maximum(relation, sim)

    if text_ids is not None:
        tid = text_ids[:, None] if text_ids.ndim == 1 else text_ids.reshape(n, -1)
        ids = _group_ids(gather_no_grad(tid, sizes))
        relation = torch.maximum(relation, (ids[row_slice, None] == ids[None, :]).float())

    rows = torch.arange(n_rows, device=device)
    relation[rows, rows + row_slice.start] = 1.0
    if normalize:
        relation = relation / relation.sum(dim=1, keepdim=True)
    return relation


# ----------------------------------------------------------------------------- factory
_LOSSES: dict[str, type[nn.Module]] = {"clip": ClipLoss, "multiview": MultiViewClipLoss, "siglip": SigLipLoss}


def build_loss(name: str, **kwargs) -> nn.Module:
    """Loss by config name (``"clip"``, ``"multiview"``, ``"siglip"``; case, ``-`` and ``_`` ignored)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(_LOSSES)}")
    return _LOSSES[key](**kwargs)
