"""Zero-shot prompt sets: class prompts from a data file, embedded once per run as an ensemble.

A prompt set maps each class value of a datalist label (``mass`` 0/1, ``density`` 0-3, ...) to
prompts. A class embedding is the mean of its prompts' normalised text embeddings, normalised
again (the usual prompt ensemble). Prompts live in JSON data files, never in bundle config strings
(MONAI rewrites ``#`` there).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_PROMPTS = "zero_shot_prompts.json"


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one zero-shot task: ``classes[i]`` holds the prompts of class value ``values[i]``."""

    name: str
    label_key: str
    values: tuple[int, ...]
    classes: tuple[tuple[str, ...], ...]
    names: tuple[str, ...] = ()  # display names of the classes (default: the values)

    def __post_init__(self) -> None:
        if not self.names:
            object.__setattr__(self, "names", tuple(str(v) for v in self.values))
        if len(self.names) != len(self.values):
            raise ValueError(f"prompt set {self.name!r}: {len(self.names)} class names for {len(self.values)} classes")

    @property
    def is_binary(self) -> bool:
        return self.values == (0, 1)


def load_prompt_sets(path: str | os.PathLike | None = None, tasks: list[str] | tuple[str, ...] | None = None
                     ) -> dict[str, PromptSet]:
    """Read prompt sets (default: the packaged file); ``tasks`` keeps only those names, in that order."""
    if path is None:
        text = (resources.files("mammoclip_monai") / "resources" / DEFAULT_PROMPTS).read_text(encoding="utf-8")
        source = f"mammoclip_monai/resources/{DEFAULT_PROMPTS}"
    else:
        source = str(path)
        text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)["tasks"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{source}: not a prompt-set file (a JSON object with 'tasks')") from err
    sets = {}
    for name, task in data.items():
        try:
            items = sorted((int(value), tuple(str(p) for p in prompts)) for value, prompts in task["classes"].items())
            label_key = str(task["label_key"])
            display = {int(v): str(n) for v, n in task.get("class_names", {}).items()}
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: task {name!r} needs 'label_key' and 'classes' {{value: [prompts]}}") from err
        if len(items) < 2 or any(not prompts for _, prompts in items):
            raise ValueError(f"{source}: task {name!r} needs at least two classes, each with prompts")
        sets[name] = PromptSet(name, label_key, tuple(v for v, _ in items), tuple(p for _, p in items),
                               tuple(display.get(v, str(v)) for v, _ in items))
    if tasks is not None:
        missing = [t for t in tasks if t not in sets]
        if missing:
            raise ValueError(f"{source}: no prompt set for task(s) {missing}; available: {sorted(sets)}")
        sets = {t: sets[t] for t in tasks}
    return sets


@torch.no_grad()
def embed_prompt_sets(model: Any, prompt_sets: dict[str, PromptSet], device: torch.device | str | None = None
                      ) -> dict[str, torch.Tensor]:
    """``{task: (n_classes, embed_dim)}`` class embeddings (prompt-ensemble means, normalised).

    ``model`` needs ``tokenize(texts)`` and ``encode_text(input_ids, attention_mask)`` (a
    :class:`~mammoclip_monai.networks.MammoCLIP`, possibly wrapped in DDP).
    """
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    out = {}
    for name, prompt_set in prompt_sets.items():
        flat = [p for prompts in prompt_set.classes for p in prompts]
        tokens = model.tokenize(flat)
        emb = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        emb = F.normalize(emb.float(), dim=-1)
        counts = [len(prompts) for prompts in prompt_set.classes]
        means = torch.stack([chunk.mean(0) for chunk in torch.split(emb, counts)])
        out[name] = F.normalize(means, dim=-1)
    model.train(was_training)
    return out


def zero_shot_probabilities(image_features: torch.Tensor, class_embeddings: torch.Tensor,
                            logit_scale: float | torch.Tensor = 100.0) -> torch.Tensor:
    """Softmax over the scaled cosine similarities of normalised image features to class embeddings."""
    logits = float(logit_scale) * F.normalize(image_features.float(), dim=-1) @ class_embeddings.float().T
    return logits.softmax(dim=-1)
