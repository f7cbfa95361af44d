"""Mammo-FActOR: map each feature-map channel ("neuron") of the frozen image encoder into the text space.

One small MLP per attribute (mass, suspicious calcification, ...) takes what a channel shows and
returns an embedding; its cosine to the attribute's prompt embedding scores the neuron for that
attribute. An image's score for an attribute is the best neuron's, so training pushes at least one
neuron per attribute to respond where the finding is, and the top neurons' maps become the
heatmap (:mod:`.heatmaps`). "Best" is a smooth maximum (``pool_temperature``; 0 gives the paper's
hard maximum): with the hard one only the winning channel learns, and on some initialisations one
channel wins every image and the head never learns the attribute (measured: 3 of 11 seeds for masses).

What the mapper reads (``readout``):

* ``"map"`` -- the channel's whole flattened spatial map, as published. A finding can be anywhere,
  so the mapper must learn every position separately; on the synthetic data it learns "hub"
  neurons that separate images without pointing at the finding (docs/factor.md).
* ``"peak"`` (default) -- the channel's strongest responses *relative to what it usually shows at
  each place* (its map standardised per position against the training images, then its top
  ``peak_values`` values), plus a learned identity vector of the channel. Position-free, so a
  neuron scores high when it fires unusually strongly somewhere, which is what a localised finding does.

Each attribute keeps its own head, its own embeddings and its own outputs (index ``a`` of every
``(B, A, ...)`` tensor); the original notebook mixed the heads. Attribute embeddings, the position
statistics and the readout settings (and the encoder layer, when given) are in the state dict, so a
saved ``factor.pt`` is self-contained.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..networks.checkpoints import read_torch_file, state_mismatch
from ..text.prompts import embed_prompt_sets
from ..utils.errors import InvalidInputError

__all__ = ["FActOR", "FActORLoss", "attribute_embeddings", "read_factor_state", "load_factor", "FACTOR_FILE"]

READOUTS = ("peak", "map")


def _mapper(in_features: int, hidden: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_features))


class FActOR(nn.Module):
    """Attribute heads over a feature map ``(B, C, h, w)``.

    Args:
        attributes: attribute names, in output order (prompt-set names, e.g. ``["mass", "calcification"]``).
        feature_size: ``(h, w)`` of the feature map (fixed by the image size).
        embed_dim: the text-embedding dimension.
        hidden_dim: mapper width (default ``h * w``, as in the paper).
        temperature: divides cosine similarities into logits (0.07 in the paper).
        dropout: inside the mappers.
        channels: ``C``, needed by the ``"peak"`` readout (channel identities, position statistics).
        readout: ``"peak"`` or ``"map"`` (the paper's), see the module docstring.
        peak_values: how many of a channel's strongest standardised responses the ``"peak"`` mapper reads.
        channel_dim: size of the learned channel identity vector (``"peak"``).
        layer: the encoder layer the maps come from (stored, so that ``mammoclip explain`` finds it).
        pool_temperature: the image's score is ``t * logsumexp(cosines / t)`` over channels (a smooth
            maximum); 0 takes the hard maximum, as published.
    """

    def __init__(self, attributes: Sequence[str], feature_size: Sequence[int], embed_dim: int,
                 hidden_dim: int | None = None, temperature: float = 0.07, dropout: float = 0.0,
                 channels: int | None = None, readout: str = "peak", peak_values: int = 3, channel_dim: int = 16,
                 layer: str | None = None, pool_temperature: float = 0.05) -> None:
        super().__init__()
        if pool_temperature < 0:
            raise ValueError(f"pool_temperature must be >= 0 (0: hard maximum), got {pool_temperature}")
        if not attributes:
            raise ValueError("FActOR needs at least one attribute")
        if len(set(attributes)) != len(attributes):
            raise ValueError(f"attribute names must be unique, got {list(attributes)}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if readout == "peak" and not channels:
            raise ValueError("the 'peak' readout needs the number of channels of the feature map")
        self.attributes = tuple(str(a) for a in attributes)
        self.feature_size = tuple(int(s) for s in feature_size)
        self.readout, self.layer = readout, layer
        positions = math.prod(self.feature_size)
        self.peak_values = min(int(peak_values), positions)
        hidden = int(hidden_dim or positions)
        if readout == "peak":
            c = int(channels)  # type: ignore[arg-type]
            self.channel_embeddings = nn.ParameterDict(
                {a: nn.Parameter(0.1 * torch.randn(c, int(channel_dim))) for a in self.attributes})
            self.register_buffer("position_mean", torch.zeros(c, *self.feature_size))
            self.register_buffer("position_std", torch.ones(c, *self.feature_size))
            in_features = self.peak_values + int(channel_dim)
        else:
            in_features = positions
        self.mappers = nn.ModuleDict({a: _mapper(in_features, hidden, int(embed_dim), dropout)
                                      for a in self.attributes})
        self.register_buffer("attribute_embeddings", torch.zeros(len(self.attributes), 2, int(embed_dim)))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("pool_temperature", torch.tensor(float(pool_temperature)))

    # the readout settings travel in the state dict (plain values: loadable with weights_only=True)
    def get_extra_state(self) -> dict[str, Any]:
        return {"readout": self.readout, "peak_values": self.peak_values, "layer": self.layer}

    def set_extra_state(self, state: Any) -> None:
        saved = (state.get("readout", "map"), int(state.get("peak_values", self.peak_values)))
        if saved[0] != self.readout or (self.readout == "peak" and saved[1] != self.peak_values):
            raise ValueError(f"FActOR state saved with readout {saved[0]!r} ({saved[1]} peak values), this model "
                             f"uses {self.readout!r} ({self.peak_values})")
        self.layer = state.get("layer", self.layer)

    @classmethod
    def from_feature_maps(cls, feature_maps: Sequence[Mapping[str, Any] | torch.Tensor], attributes: Sequence[str],
                          embed_dim: int, embeddings: Mapping[str, torch.Tensor] | None = None,
                          image_key: str = "image", **kwargs: Any) -> FActOR:
        """A FActOR ready to train on cached training feature maps (``(C, h, w)`` tensors, or datalist items
        holding them under ``image_key``, as :func:`~mammoclip_monai.interpret.features.cache_feature_maps`
        returns): sized by the first map (``feature_size`` and ``channels``), with the attribute
        ``embeddings`` (:func:`attribute_embeddings`) stored and the position statistics fitted on the same
        maps. ``kwargs`` are the other constructor arguments (readout, layer, temperatures, ...).
        """
        def feature_map(entry: Mapping[str, Any] | torch.Tensor) -> torch.Tensor:
            return entry[image_key] if isinstance(entry, Mapping) else entry

        if not feature_maps:
            raise ValueError("FActOR needs training feature maps to take its sizes from")
        first = feature_map(feature_maps[0])
        model = cls(attributes, tuple(first.shape[-2:]), embed_dim, channels=int(first.shape[0]), **kwargs)
        if embeddings is not None:
            model.set_attribute_embeddings(embeddings)
        model.fit_position_statistics(feature_map(entry) for entry in feature_maps)
        return model

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], feature_size: Sequence[int] | None = None,
                        source: str | os.PathLike | None = None) -> FActOR:
        """Rebuild a FActOR from its state dict alone (attributes, sizes, readout and embeddings are in it).

        A state dict of something else, one without its ``_extra_state`` (readout settings), or one
        whose tensors do not fit together is an :class:`~mammoclip_monai.utils.InvalidInputError`
        naming ``source`` (the file it came from) and the first offending keys.
        """

        where = source if source is not None else "FActOR state dict"

        def invalid(reason: str, key: str | None = None) -> InvalidInputError:
            return InvalidInputError(where, reason, where=f"key {key!r}" if key else None)

        if not isinstance(state, Mapping):
            raise invalid(f"not a FActOR state dict: it holds {type(state).__name__}, expected a dict of tensors")
        attributes = list(dict.fromkeys(k.split(".")[1] for k in state
                                        if isinstance(k, str) and k.startswith("mappers.") and k.count(".") >= 2))
        if not attributes or "attribute_embeddings" not in state:
            shown = ", ".join(str(k) for k in list(state)[:4]) + (" ..." if len(state) > 4 else "")
            raise invalid(f"not a FActOR state dict (no mappers.* weights and attribute_embeddings; found keys "
                          f"{shown or 'none'}): a checkpoint of another model?")
        for key in (f"mappers.{attributes[0]}.0.weight", "attribute_embeddings", "temperature"):
            value = state.get(key)
            if not isinstance(value, torch.Tensor):
                raise invalid(f"expected a tensor, found {type(value).__name__ if value is not None else 'nothing'}",
                              key)
        state = dict(state)
        peak_keys = [k for k in state if k in ("position_mean", "position_std") or k.startswith("channel_embeddings.")]
        extra = state.get("_extra_state")
        if extra is None:
            if peak_keys:
                raise invalid("missing: the readout settings (readout, peak_values, layer) of this 'peak' FActOR are "
                              "not in the file; it is incomplete (save FActOR.state_dict() whole)", "_extra_state")
            extra = state["_extra_state"] = {"readout": "map", "layer": None}  # saved before readouts existed
        if not isinstance(extra, Mapping):
            raise invalid(f"expected a dict with 'readout', found {type(extra).__name__}", "_extra_state")
        readout, layer = extra.get("readout", "map"), extra.get("layer")
        if readout not in READOUTS:
            raise invalid(f"readout {readout!r} is not one of {list(READOUTS)}", "_extra_state")
        if layer is not None and not isinstance(layer, str):
            raise invalid(f"layer must be a module name or None, found {type(layer).__name__}", "_extra_state")
        hidden, in_features = state[f"mappers.{attributes[0]}.0.weight"].shape
        kwargs: dict[str, Any] = {"readout": readout, "layer": layer}
        if readout == "peak":
            for key in ("position_mean", f"channel_embeddings.{attributes[0]}"):
                value = state.get(key)
                if not isinstance(value, torch.Tensor) or value.ndim != (3 if key == "position_mean" else 2):
                    raise invalid("missing or mis-shaped: the 'peak' readout needs position_mean (C, h, w) and a "
                                  "(C, d) channel_embeddings.<attribute> per attribute", key)
            feature_size = tuple(state["position_mean"].shape[1:])
            identities = state[f"channel_embeddings.{attributes[0]}"]
            peak_values = extra.get("peak_values")
            if type(peak_values) is not int or peak_values < 1:
                raise invalid(f"peak_values must be a whole number >= 1, found {peak_values!r}", "_extra_state")
            kwargs.update(channels=int(identities.shape[0]), channel_dim=int(identities.shape[1]),
                          peak_values=peak_values)
        elif feature_size is None:
            raise ValueError(f"feature_size (h, w) is needed: the state dict only says h * w = {in_features}")
        elif math.prod(feature_size) != in_features:
            raise invalid(f"the mappers read {in_features} positions per channel, but the feature map is "
                          f"{tuple(feature_size)} = {math.prod(feature_size)}: trained on another image size or layer")
        if "pool_temperature" not in state:  # saved before the smooth maximum: the hard one
            state["pool_temperature"] = torch.tensor(0.0)
        try:
            model = cls(attributes, feature_size, int(state["attribute_embeddings"].shape[-1]), int(hidden),
                        float(state["temperature"]), pool_temperature=float(state["pool_temperature"]), **kwargs)
        except (ValueError, TypeError, RuntimeError) as err:
            raise invalid(f"its settings do not make a FActOR ({err})") from None
        mismatch = state_mismatch(model.state_dict(), state)
        if mismatch:
            raise invalid(f"the tensors do not fit together as a FActOR of {attributes}: {mismatch}")
        try:
            model.load_state_dict(state, strict=True)
        except (ValueError, RuntimeError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise invalid(f"cannot be loaded as a FActOR ({first})") from None
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

    @torch.no_grad()
    def fit_position_statistics(self, feature_maps: Iterable[torch.Tensor]) -> None:
        """Mean and spread of every channel at every position over training maps ``(C, h, w)`` (or batches).

        Label-free: computed once on the training images before the heads train. Only the
        ``"peak"`` readout uses them.
        """
        if self.readout != "peak":
            return
        total, total_sq, count = None, None, 0
        for fmap in feature_maps:
            x = torch.as_tensor(fmap).double()
            x = x[None] if x.ndim == 3 else x
            self._check(x)
            total = x.sum(0) if total is None else total + x.sum(0)
            total_sq = (x * x).sum(0) if total_sq is None else total_sq + (x * x).sum(0)
            count += x.shape[0]
        if count < 2 or total is None or total_sq is None:
            raise ValueError("position statistics need at least two training feature maps")
        mean = total / count
        std = ((total_sq / count - mean * mean).clamp(min=0) * count / (count - 1)).sqrt()
        self.position_mean.copy_(mean.float())
        self.position_std.copy_(std.float().clamp(min=1e-3))

    def _check(self, feature_map: torch.Tensor) -> None:
        channels = self.position_mean.shape[0] if self.readout == "peak" else None
        if (feature_map.ndim != 4 or tuple(feature_map.shape[-2:]) != self.feature_size
                or (channels is not None and feature_map.shape[1] != channels)):
            raise ValueError(f"FActOR expects feature maps (B, {channels or 'C'}, {self.feature_size[0]}, "
                             f"{self.feature_size[1]}), got {tuple(feature_map.shape)}: the image size or the "
                             "encoder layer differs from the one it was trained on")

    def _mapper_inputs(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, C, F)``: what each channel's mapper reads (see ``readout``)."""
        if self.readout == "map":
            return feature_map.float().flatten(2)
        standardised = (feature_map.float() - self.position_mean) / self.position_std
        return standardised.flatten(2).topk(self.peak_values, dim=-1).values

    def neuron_embeddings(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings of every channel under every attribute's mapper, ``(B, A, C, D)``."""
        self._check(feature_map)
        inputs = self._mapper_inputs(feature_map)
        out = []
        for a in self.attributes:
            x = inputs
            if self.readout == "peak":
                identity = self.channel_embeddings[a]
                x = torch.cat([inputs, identity[None].expand(inputs.shape[0], -1, -1)], dim=-1)
            out.append(F.normalize(self.mappers[a](x), dim=-1))
        return torch.stack(out, dim=1)

    def similarities(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Cosine of each channel's embedding to ``[absent, present]`` of its attribute, ``(B, A, C, 2)``."""
        return torch.einsum("bacd,akd->back", self.neuron_embeddings(feature_map), self.attribute_embeddings)

    def neuron_scores(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Per attribute, how well each channel aligns with the attribute's *present* prompts, ``(B, A, C)``."""
        return self.similarities(feature_map)[..., 1]

    def pool(self, similarities: torch.Tensor) -> torch.Tensor:
        """Similarities ``(B, A, C, 2)`` -> logits ``(B, A, 2)``: the best channels' cosine per class, over the
        temperature."""
        t = self.pool_temperature
        pooled = similarities.amax(dim=2) if float(t) == 0 else t * torch.logsumexp(similarities / t, dim=2)
        return pooled / self.temperature

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, A, 2)`` (``[absent, present]``), see :meth:`pool`."""
        return self.pool(self.similarities(feature_map))

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


FACTOR_FILE = "a FActOR weights file (the factor.pt that factor.json training writes)"


def read_factor_state(path: str | os.PathLike) -> dict[str, Any]:
    """The FActOR state dict in ``path`` (a plain state dict or ``{"model": state}``), read with ``weights_only=True``.

    Anything else (not a torch file, a pickle of other objects, a checkpoint without a state dict)
    is an :class:`~mammoclip_monai.utils.InvalidInputError` saying it is not a FActOR weights file.
    Rebuild the model with ``FActOR.from_state_dict(state, ..., source=path)``.
    """

    state = read_torch_file(path, FACTOR_FILE)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise InvalidInputError(path, f"not {FACTOR_FILE}: it holds {type(state).__name__}, expected a state dict")
    return dict(state)


def load_factor(path: str | os.PathLike, feature_size: Sequence[int] | None = None) -> FActOR:
    """:func:`read_factor_state` + :meth:`FActOR.from_state_dict`: a saved FActOR, every problem named by the file."""
    return FActOR.from_state_dict(read_factor_state(path), feature_size, source=path)


@torch.no_grad()
def attribute_embeddings(model: nn.Module, prompt_sets: Mapping[str, object], device: torch.device | str | None = None
                         ) -> dict[str, torch.Tensor]:
    """``{attribute: (2, D)}`` ``[absent, present]`` embeddings from binary prompt sets (embedded once)."""

    for name, prompt_set in prompt_sets.items():
        if tuple(prompt_set.values) != (0, 1):
            raise ValueError(f"FActOR attributes need binary prompt sets (0 absent, 1 present); {name!r} has "
                             f"classes {list(prompt_set.values)}")
    return {k: v.cpu() for k, v in embed_prompt_sets(model, dict(prompt_sets), device=device).items()}
