"""The single-input inference network: image -> zero-shot probabilities of configured prompt sets.

Deployment tools (``verify_net_in_out``, ``ckpt_export``, MONAI Label, MONAI Deploy) feed a network
one ``image`` tensor. :class:`ZeroShotClassifier` keeps the image tower of a
:class:`~mammoclip_monai.networks.MammoCLIP` and the prompt sets' class embeddings as a buffer, so
the text tower runs once (when weights are loaded), never per image, and is not part of the
exported graph (Hugging Face BERT cannot be scripted).

Its state-dict keys are MammoCLIP's image keys, so the training checkpoint ``models/model.pt`` (a
full MammoCLIP state dict) loads into it *strictly*: a load pre-hook takes the text-tower keys,
loads them into the text tower it holds aside and recomputes the class embeddings from them, and
drops the training-only SigLIP ``logit_bias``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..text.prompts import PromptSet, embed_prompt_sets, load_prompt_sets, prompt_sets_from_data

__all__ = ["ZeroShotClassifier", "prompt_sets_from_dict", "output_names"]

TEXT_PREFIXES = ("text_encoder.", "text_projection.")
TRAINING_ONLY_KEYS = ("logit_bias",)
"""MammoCLIP parameters a zero-shot softmax does not use (a SigLIP bias shifts every class alike)."""


def prompt_sets_from_dict(prompts: Mapping[str, Sequence[str | Sequence[str]]]) -> dict[str, PromptSet]:
    """``{"mass": ["no mass", "mass"]}`` -> prompt sets (one class per entry; an entry may be a list of prompts).

    The last class of a two-class set is its "present" class; class names are the first prompt of each class.
    Checked like a prompt file (:func:`~mammoclip_monai.text.prompts.prompt_sets_from_data`).
    """
    def listed(value: Any) -> Any:  # Python callers may use tuples where JSON has lists
        return [listed(v) for v in value] if isinstance(value, (list, tuple)) else value

    as_lists = {name: listed(classes) for name, classes in prompts.items()}
    return prompt_sets_from_data(as_lists, source="prompts")


def output_names(prompt_sets: Mapping[str, PromptSet]) -> list[str]:
    """Column names: a binary set gives one column (its name: the probability of "present"),
    a multi-class set one column per class (``density_A``, ...)."""
    names = []
    for name, prompt_set in prompt_sets.items():
        names += [name] if len(prompt_set.values) == 2 else [f"{name}_{c}" for c in prompt_set.names]
    return names


class ZeroShotClassifier(nn.Module):
    """``image (B, 1, H, W) -> probabilities (B, N)`` for the configured prompt sets.

    Each prompt set's classes are soft-maxed together over the scaled cosine similarities (the
    zero-shot rule used in evaluation); a two-class set keeps the probability of its last class.

    The input must be normalised as the model was trained: ``image_normalization`` (the model
    config's dict, for the bundle's preprocessing) and ``image_normalization_json`` (the same as
    JSON text, a TorchScript attribute, so an exported ``model.ts`` still says it) carry it.

    Args:
        model: the trained :class:`~mammoclip_monai.networks.MammoCLIP` (its image tower is shared,
            its text tower only embeds the prompts).
        prompt_sets: prompt sets (:func:`~mammoclip_monai.text.prompts.load_prompt_sets`), or
            ``{name: [class prompts...]}``, or ``None`` for the packaged file's ``tasks``.
        tasks: which packaged/file prompt sets to use, in order (when ``prompt_sets`` is a path or ``None``).
    """

    # a plain attribute, not a submodule: it must stay out of the state dict and the exported graph
    __jit_ignored_attributes__ = ["text_model", "prompt_sets", "output_names", "image_normalization"]

    def __init__(self, model: nn.Module, prompt_sets: Mapping[str, Any] | str | None = None,
                 tasks: Sequence[str] | None = ("mass", "calcification", "density")) -> None:
        super().__init__()
        model = getattr(model, "module", model)
        if prompt_sets is None or isinstance(prompt_sets, (str, os.PathLike)):
            prompt_sets = load_prompt_sets(prompt_sets, tasks=list(tasks) if tasks is not None else None)
        elif prompt_sets and not all(isinstance(v, PromptSet) for v in prompt_sets.values()):
            prompt_sets = prompt_sets_from_dict(prompt_sets)
        if not prompt_sets:
            raise ValueError("ZeroShotClassifier needs at least one prompt set")
        self.prompt_sets = dict(prompt_sets)
        self.output_names = output_names(self.prompt_sets)
        self.image_encoder = model.image_encoder
        self.image_projection = model.image_projection
        self.logit_scale = model.logit_scale
        self.logit_scale_max = float(model.config.logit_scale_max)
        self.image_normalization = dict(model.config.image_normalization)
        self.image_normalization_json: str = json.dumps(self.image_normalization, sort_keys=True)
        self.group_sizes = [len(s.values) for s in self.prompt_sets.values()]
        keep, start = [], 0
        for size in self.group_sizes:
            keep += [start + size - 1] if size == 2 else list(range(start, start + size))
            start += size
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long), persistent=False)
        # on the model's device: embedding the prompts must not move the model (refresh_prompt_embeddings)
        device = next(model.parameters()).device
        self.register_buffer("class_embeddings", torch.zeros(start, int(model.config.embed_dim), device=device))
        self.__dict__["text_model"] = model
        self.refresh_prompt_embeddings()
        self._register_load_state_dict_pre_hook(self._absorb_text_tower)

    @torch.jit.unused
    @torch.no_grad()
    def refresh_prompt_embeddings(self) -> None:
        """Embed every prompt set with the held text tower (once; the forward never touches text)."""
        device = self.class_embeddings.device
        text_model = self.text_model.to(device)
        # the held model shares the image tower: embedding restores *its* mode flag recursively, which
        # would switch this classifier's image tower back to train mode; keep every module's flag as it was
        modes = [(module, module.training) for module in text_model.modules()]
        try:
            embeddings = embed_prompt_sets(text_model, self.prompt_sets, device=device)
        finally:
            for module, training in modes:
                module.training = training
        self.class_embeddings.copy_(torch.cat([embeddings[name] for name in self.prompt_sets]).to(device))

    @torch.jit.unused
    def _absorb_text_tower(self, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
        for key in TRAINING_ONLY_KEYS:
            state_dict.pop(prefix + key, None)
        text_keys = [k for k in state_dict if k.startswith(tuple(prefix + p for p in TEXT_PREFIXES))]
        if not text_keys:
            return
        text_state = {k[len(prefix):]: state_dict.pop(k) for k in text_keys}
        expected = {k for k in self.text_model.state_dict() if k.startswith(TEXT_PREFIXES)}
        # position_ids and the like are non-persistent in some transformers versions: compare persistent keys only
        missing = sorted(expected - set(text_state))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} text-tower key(s) ({', '.join(missing[:3])}...): "
                             "it was written by another text model")
        self.text_model.load_state_dict(text_state, strict=False)
        self.refresh_prompt_embeddings()
        state_dict[prefix + "class_embeddings"] = self.class_embeddings.detach().clone()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.image_projection(self.image_encoder(image)), dim=-1)
        logits = self.logit_scale.exp().clamp(max=self.logit_scale_max) * features @ self.class_embeddings.T
        probabilities = [group.softmax(dim=1) for group in torch.split(logits, self.group_sizes, dim=1)]
        return torch.cat(probabilities, dim=1).index_select(1, self.keep)

    @torch.jit.unused
    def as_dicts(self, probabilities: torch.Tensor) -> list[dict[str, float]]:
        """Rows of ``forward``'s output as ``{output name: probability}`` dicts."""
        return [dict(zip(self.output_names, row.tolist())) for row in probabilities.detach().float().cpu()]
