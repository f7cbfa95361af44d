"""Projection heads that map each tower's features into the shared embedding space."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProjectionHead", "PROJECTION_KINDS"]

PROJECTION_KINDS = ("linear", "mlp")


class ProjectionHead(nn.Module):
    """Project encoder features to the joint embedding (``out_dim``, 512 in Mammo-CLIP).

    ``kind="linear"`` is the original: a single ``nn.Linear`` with bias, stored as ``projection`` so
    that the released checkpoints' ``*_projection.projection.{weight,bias}`` load by name.
    ``kind="mlp"`` (Linear -> GELU -> Dropout -> Linear, hidden width ``hidden_dim``, default
    ``in_dim``) is offered for experiments; ``dropout`` applies to the head's input for "linear".
    L2 normalisation is not part of the head: :class:`MammoCLIP` does it so that un-normalised
    embeddings stay available.
    """

    def __init__(self, in_dim: int, out_dim: int = 512, kind: str = "linear", hidden_dim: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if kind not in PROJECTION_KINDS:
            raise ValueError(f"kind must be one of {PROJECTION_KINDS}, got {kind!r}")
        self.in_dim, self.out_dim, self.kind = int(in_dim), int(out_dim), kind
        if kind == "linear":
            self.dropout = nn.Dropout(dropout)
            self.projection: nn.Module = nn.Linear(self.in_dim, self.out_dim)
        else:
            hidden = int(hidden_dim or in_dim)
            self.dropout = nn.Identity()
            self.projection = nn.Sequential(
                nn.Linear(self.in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, self.out_dim)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim) -> (B, out_dim)``."""
        return self.projection(self.dropout(x))
