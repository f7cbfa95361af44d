"""Mammo-FActOR: map each feature-map channel ("neuron") of the frozen image encoder into the text space.

One small MLP per attribute (mass, suspicious calcification, ...) takes a channel's flattened
spatial map and returns an embedding; its cosine to the attribute's prompt embedding scores the
neuron for that attribute. An image's score for an attribute is the best neuron's, so training
pushes at least one neuron per attribute to respond where the finding is, and the top neurons'
maps become the heatmap (:mod:`.heatmaps`).

Each attribute keeps its own head, its own embeddings and its own outputs (index ``a`` of every
``(B, A, ...)`` tensor); the original notebook mixed the heads. Attribute embeddings are buffers
(``[absent, present]`` prompt ensembles, normalised), so a saved state dict is self-contained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FActOR", "FActORLoss", "attribute_embeddings"]


def _mapper(in_features: int, hidden: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_features))


class FActOR(nn.Module):
    """Attribute heads over a feature map ``(B, C, h, w)``.

    Args:
        attributes: attribute names, in output order (prompt-set names, e.g. ``["mass", "calcification"]``).
        feature_size: ``(h, w)`` of the feature map the mappers read (fixed by the image size).
        embed_dim: the text-embedding dimension.
        hidden_dim: mapper width (default ``h * w``, as in the paper).
        temperature: divides cosine similarities into logits (0.07 in the paper).
        dropout: inside the mappers.
    """

    def __init__(self, attributes: Sequence[str], feature_size: Sequence[int], embed_dim: int,
                 hidden_dim: int | None = None, temperature: float = 0.07, dropout: float = 0.0) -> None:
        super().__init__()
        if not attributes:
            raise ValueError("FActOR needs at least one attribute")
        if len(set(attributes)) != len(attributes):
            raise ValueError(f"attribute names must be unique, got {list(attributes)}")
        self.attributes = tuple(str(a) for a in attributes)
        self.feature_size = tuple(int(s) for s in feature_size)
        positions = math.prod(self.feature_size)
        self.mappers = nn.ModuleDict({a: _mapper(positions, int(hidden_dim or positions), int(embed_dim), dropout)
                                      for a in self.attributes})
        self.register_buffer("attribute_embeddings", torch.zeros(len(self.attributes), 2, int(embed_dim)))
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], feature_size: Sequence[int] | None = None) -> FActOR:
        """Rebuild a FActOR from its state dict alone (attributes, sizes and embeddings are in it)."""
        attributes = list(dict.fromkeys(k.split(".")[1] for k in state if k.startswith("mappers.")))
        if not attributes or "attribute_embeddings" not in state:
            raise ValueError("not a FActOR state dict (no mappers.* or attribute_embeddings)")
        first = state[f"mappers.{attributes[0]}.0.weight"]
        hidden, positions = first.shape
        if feature_size is None:
            raise ValueError("feature_size (h, w) is needed: the state dict only says h * w = "
                             f"{positions}")
        model = cls(attributes, feature_size, int(state["attribute_embeddings"].shape[-1]), int(hidden),
                    float(state["temperature"]))
        model.load_state_dict(dict(state), strict=True)
        return model

    def set_attribute_embeddings(self, embeddings: Mapping[str, torch.Tensor]) -> None:
        """Store ``{attribute: (2, D)}`` ``[absent, present]`` class embeddings (prompt ensembles)."""
        missing = [a for a in self.attributes if a not in embeddings]
        if missing:
            raise KeyError(f"no prompt embeddings for attribute(s) {missing}")
        stacked = torch.stack([torch.as_tensor(embeddings[a]).float() for a in self.attributes])
        if tuple(stacked.shape) != tuple(self.attribute_embeddings.shape):
            raise ValueError(f"attribute embeddings of shape {tuple(stacked.shape)}, expected "
                             f"{tuple(self.attribute_embeddings.shape)} ([absent, present] per attribute)")
        self.attribute_embeddings.copy_(F.normalize(stacked, dim=-1))

    def _check(self, feature_map: torch.Tensor) -> None:
        if feature_map.ndim != 4 or tuple(feature_map.shape[-2:]) != self.feature_size:
            raise ValueError(f"FActOR expects feature maps (B, C, {self.feature_size[0]}, {self.feature_size[1]}), got "
                             f"{tuple(feature_map.shape)}: the image size differs from the one it was built for")

    def neuron_embeddings(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings of every channel under every attribute's mapper, ``(B, A, C, D)``."""
        self._check(feature_map)
        flat = feature_map.float().flatten(2)  # (B, C, h*w)
        return torch.stack([F.normalize(self.mappers[a](flat), dim=-1) for a in self.attributes], dim=1)

    def similarities(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Cosine of each channel's embedding to ``[absent, present]`` of its attribute, ``(B, A, C, 2)``."""
        return torch.einsum("bacd,akd->back", self.neuron_embeddings(feature_map), self.attribute_embeddings)

    def neuron_scores(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Per attribute, how well each channel aligns with the attribute's *present* prompts, ``(B, A, C)``."""
        return self.similarities(feature_map)[..., 1]

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, A, 2)`` (``[absent, present]``): the best channel's cosine per class, over the temperature."""
        return self.similarities(feature_map).amax(dim=2) / self.temperature

    @staticmethod
    def present_logit(logits: torch.Tensor) -> torch.Tensor:
        """``(B, A)`` evidence for each attribute: present minus absent logit."""
        return logits[..., 1] - logits[..., 0]


class FActORLoss(nn.Module):
    """The FActOR contrastive objective over a batch of images with and without each attribute.

    Image -> text: each image's ``[absent, present]`` logits against its label (cross-entropy).
    Text -> image: each attribute's *present* prompt against the batch's images, the images that
    have it being the positives (multi-positive InfoNCE); only where the batch holds both kinds.
    Unknown labels (-1) take no part. A non-finite loss is an error, not a silent update.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 3 or logits.shape[-1] != 2:
            raise ValueError(f"FActOR logits must be (B, A, 2), got {tuple(logits.shape)}")
        labels = torch.as_tensor(labels, device=logits.device).long().reshape(logits.shape[:2])
        known = labels >= 0
        if not bool(known.any()):
            raise ValueError("no known attribute label in the batch")
        image_to_text = F.cross_entropy(logits[known], labels[known])
        terms = []
        for a in range(logits.shape[1]):
            present, absent = (labels[:, a] == 1), (labels[:, a] == 0)
            if present.any() and absent.any():
                scores = logits[:, a, 1][present | absent]
                positive = present[present | absent]
                terms.append(torch.logsumexp(scores, 0) - torch.logsumexp(scores[positive], 0))
        loss = image_to_text if not terms else (image_to_text + torch.stack(terms).mean()) / 2
        if not torch.isfinite(loss):
            raise FloatingPointError(f"FActOR loss is {loss.item()}: check the feature maps and the learning rate")
        return loss


@torch.no_grad()
def attribute_embeddings(model: nn.Module, prompt_sets: Mapping[str, object], device: torch.device | str | None = None
                         ) -> dict[str, torch.Tensor]:
    """``{attribute: (2, D)}`` ``[absent, present]`` embeddings from binary prompt sets (embedded once)."""
    from ..text.prompts import embed_prompt_sets

    for name, prompt_set in prompt_sets.items():
        if tuple(prompt_set.values) != (0, 1):
            raise ValueError(f"FActOR attributes need binary prompt sets (0 absent, 1 present); {name!r} has "
                             f"classes {list(prompt_set.values)}")
    return {k: v.cpu() for k, v in embed_prompt_sets(model, dict(prompt_sets), device=device).items()}
