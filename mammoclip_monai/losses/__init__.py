"""Contrastive losses for Mammo-CLIP pre-training (CLIP, multi-view, SigLIP), correct under DDP."""

from __future__ import annotations

from .contrastive import (
    ClipLoss,
    MultiViewClipLoss,
    SigLipLoss,
    Targets,
    build_loss,
    label_aware_targets,
    soft_cross_entropy,
)
from .distributed import gather_no_grad, gather_sizes, gather_with_grad, is_distributed, local_offset, rank, world_size

__all__ = [
    "ClipLoss",
    "MultiViewClipLoss",
    "SigLipLoss",
    "Targets",
    "build_loss",
    "label_aware_targets",
    "soft_cross_entropy",
    "gather_with_grad",
    "gather_no_grad",
    "gather_sizes",
    "local_offset",
    "is_distributed",
    "rank",
    "world_size",
]
