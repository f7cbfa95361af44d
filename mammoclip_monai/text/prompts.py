"""Zero-shot prompt sets: class prompts from a data file, embedded once per run as an ensemble.

A prompt set maps each class value of a datalist label (``mass`` 0/1, ``density`` 0-3, ...) to
prompts. A class embedding is the mean of its prompts' normalised text embeddings, normalised
again (the usual prompt ensemble). Prompts live in JSON data files, never in bundle config strings
(MONAI rewrites ``#`` there).

A prompt file is either ``{"mass": ["no mass", "mass"], ...}`` (each class one prompt or a list of
prompts; class values are positions) or the packaged format ``{"tasks": {name: {"label_key",
"classes": {value: [prompts]}, "class_names": {value: name}}}}`` (``resources/zero_shot_prompts.json``).
:func:`load_prompt_file` reads both and checks everything up front: a bad file is one
:class:`~mammoclip_monai.utils.InvalidInputError` line naming the key and what was expected,
never a failure halfway through embedding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F

from ..utils.errors import InvalidInputError
from ..utils.input_files import describe_value, read_json_file

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


PROMPT_FILE = "a prompt file: {\"mass\": [\"no mass\", \"mass\"], ...} or {\"tasks\": {...}}"
_TOP_LEVEL_KEYS = ("tasks", "format_version", "about")
_TASK_KEYS = ("label_key", "classes", "class_names", "about")


class _Problem(Exception):
    """One thing wrong at one place of a prompt document (turned into an InvalidInputError by the caller)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(where, reason)
        self.where, self.reason = where, reason


def _prompt_group(value: Any, where: str) -> tuple[str, ...]:
    """A class's prompts: one non-empty string or a non-empty list of them."""
    if isinstance(value, str):
        if not value.strip():
            raise _Problem(where, "expected a prompt, found an empty string")
        return (value,)
    if not isinstance(value, list):
        raise _Problem(where, f"expected a prompt (a string) or a list of prompts, found {describe_value(value)}")
    if not value:
        raise _Problem(where, "expected at least one prompt, found an empty list")
    for i, prompt in enumerate(value):
        if not isinstance(prompt, str):
            raise _Problem(f"{where}[{i}]", f"expected a prompt (a string), found {describe_value(prompt)}")
        if not prompt.strip():
            raise _Problem(f"{where}[{i}]", "expected a prompt, found an empty string")
    return tuple(value)


def _unique_names(names: Sequence[str], where: str, what: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        key = name.strip().casefold()
        if key in seen:
            raise _Problem(where, f"{what} {seen[key]} and {i} are both named {name!r}; each class needs its own name")
        seen[key] = i


def _simple_prompt_sets(data: dict[str, Any]) -> dict[str, PromptSet]:
    """``{"mass": ["no mass", "mass"]}``: each entry a list of classes, each class a prompt or a list of prompts.

    Class values are the positions (0, 1, ...); a class's display name is its first prompt; the last
    class of a two-class set is its "present" class.
    """
    sets = {}
    for name, classes in data.items():
        where = f"key {name!r}"
        if not name.strip():
            raise _Problem(where, "expected a task name, found an empty string")
        if not isinstance(classes, list):
            hint = " (the packaged format puts tasks under \"tasks\")" if isinstance(classes, dict) else ""
            raise _Problem(where, "expected a list of at least two classes (each a prompt or a list of prompts), "
                                  f"found {describe_value(classes)}{hint}")
        if len(classes) < 2:
            raise _Problem(where, f"expected at least two classes (e.g. [\"no {name}\", \"{name}\"]), found "
                                  f"{len(classes)}")
        grouped = tuple(_prompt_group(c, f"key {name!r}[{i}]") for i, c in enumerate(classes))
        _unique_names([g[0] for g in grouped], where, "classes")
        sets[name] = PromptSet(name, name, tuple(range(len(grouped))), grouped, tuple(g[0] for g in grouped))
    return sets


def _packaged_prompt_sets(data: dict[str, Any]) -> dict[str, PromptSet]:
    """``{"tasks": {name: {"label_key", "classes": {value: [prompts]}, "class_names": {value: name}}}}``."""
    unknown = [k for k in data if k not in _TOP_LEVEL_KEYS]
    if unknown:
        raise _Problem(f"key {unknown[0]!r}", f"unknown key next to 'tasks'; expected only {list(_TOP_LEVEL_KEYS)}")
    if "format_version" in data and (type(data["format_version"]) is not int or data["format_version"] != 1):
        raise _Problem("key 'format_version'", f"expected 1, found {describe_value(data['format_version'])}")
    tasks = data["tasks"]
    if not isinstance(tasks, dict) or not tasks:
        raise _Problem("key 'tasks'", "expected an object of prompt sets {name: {...}}, found "
                                      f"{describe_value(tasks)}")
    sets = {}
    for name, task in tasks.items():
        here = f"key 'tasks.{name}"
        if not name.strip():
            raise _Problem(here + "'", "expected a task name, found an empty string")
        if not isinstance(task, dict):
            raise _Problem(here + "'", "expected an object with 'label_key' and 'classes', found "
                                       f"{describe_value(task)}")
        unknown = [k for k in task if k not in _TASK_KEYS]
        if unknown:
            raise _Problem(f"{here}.{unknown[0]}'", f"unknown key; a task has {list(_TASK_KEYS)}")
        for required in ("label_key", "classes"):
            if required not in task:
                raise _Problem(here + "'", f"missing {required!r}; a task needs 'label_key' (the datalist label it "
                                           "predicts) and 'classes' ({value: [prompts]})")
        label_key = task["label_key"]
        if not isinstance(label_key, str) or not label_key.strip():
            raise _Problem(f"{here}.label_key'", f"expected a datalist label name, found {describe_value(label_key)}")
        classes = task["classes"]
        if not isinstance(classes, dict):
            raise _Problem(f"{here}.classes'", "expected an object {class value: prompts}, found "
                                               f"{describe_value(classes)}")
        if len(classes) < 2:
            raise _Problem(f"{here}.classes'", f"expected at least two classes, found {len(classes)}")
        groups: dict[int, tuple[str, ...]] = {}
        for value, prompts in classes.items():
            where = f"{here}.classes.{value}'"
            number = _class_value(value, where)
            if number in groups:
                raise _Problem(where, f"class value {number} is given twice")
            groups[number] = _prompt_group(prompts, where)
        names = task.get("class_names", {})
        if not isinstance(names, dict):
            raise _Problem(f"{here}.class_names'", f"expected an object {{class value: name}}, found "
                                                   f"{describe_value(names)}")
        display: dict[int, str] = {}
        for value, shown in names.items():
            where = f"{here}.class_names.{value}'"
            number = _class_value(value, where)
            if number not in groups:
                raise _Problem(where, f"no class {number} in 'classes' (classes: {sorted(groups)})")
            if not isinstance(shown, str) or not shown.strip():
                raise _Problem(where, f"expected a class name, found {describe_value(shown)}")
            display[number] = shown
        values = tuple(sorted(groups))
        shown_names = tuple(display.get(v, str(v)) for v in values)
        _unique_names(shown_names, f"{here}.class_names'", "classes")
        sets[name] = PromptSet(name, label_key, values, tuple(groups[v] for v in values), shown_names)
    return sets


def _class_value(text: str, where: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise _Problem(where, f"a class value must be a whole number >= 0 (the label value), found {text!r}") from None
    if number < 0:
        raise _Problem(where, f"a class value must be >= 0 (-1 means 'unknown' in datalists), found {number}")
    return number


def prompt_sets_from_data(data: Any, source: str | os.PathLike = "<prompts>",
                          tasks: Sequence[str] | None = None) -> dict[str, PromptSet]:
    """Validated prompt sets from a parsed prompt document in either format; errors name ``source``.

    ``{"tasks": {...}}`` is the packaged format (:data:`DEFAULT_PROMPTS`); anything else is read as
    ``{name: [class prompts, ...]}``. ``tasks`` keeps only those names, in that order.
    """
    try:
        if not isinstance(data, dict) or not data:
            raise _Problem("", f"expected a JSON object of prompt sets, found {describe_value(data)}")
        sets = _packaged_prompt_sets(data) if "tasks" in data else _simple_prompt_sets(data)
    except _Problem as problem:
        raise InvalidInputError(source, problem.reason, where=problem.where or None) from None
    if tasks is not None:
        missing = [t for t in tasks if t not in sets]
        if missing:
            raise InvalidInputError(source, f"no prompt set for task(s) {missing}; the file has {list(sets)}")
        sets = {t: sets[t] for t in tasks}
    return sets


def load_prompt_file(path: str | os.PathLike, tasks: Sequence[str] | None = None) -> dict[str, PromptSet]:
    """Read and validate a prompt file (either format, see :func:`prompt_sets_from_data`).

    Every problem (missing file, a folder, non-UTF-8 bytes, invalid JSON, a repeated key, a class
    that is not a prompt or a list of prompts, fewer than two classes, empty prompts, two classes
    with one name) is an :class:`~mammoclip_monai.utils.InvalidInputError` naming the file and key.
    """
    return prompt_sets_from_data(read_json_file(path, PROMPT_FILE), path, tasks)


def load_prompt_sets(path: str | os.PathLike | None = None, tasks: Sequence[str] | None = None
                     ) -> dict[str, PromptSet]:
    """Prompt sets of a prompt file (default: the packaged one); ``tasks`` keeps only those names, in that order."""
    if path is not None:
        return load_prompt_file(path, tasks)
    text = (resources.files("mammoclip_monai") / "resources" / DEFAULT_PROMPTS).read_text(encoding="utf-8")
    return prompt_sets_from_data(json.loads(text), f"mammoclip_monai/resources/{DEFAULT_PROMPTS}", tasks)


def label_keys(prompt_sets: Mapping[str, PromptSet]) -> list[str]:
    """The datalist column each prompt set is scored against, in the sets' order (what a dataset of
    labelled items must carry for these tasks)."""
    return [prompt_set.label_key for prompt_set in prompt_sets.values()]


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
