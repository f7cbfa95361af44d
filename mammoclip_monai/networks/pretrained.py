"""One loader for trained MammoCLIP weights, whatever wrote them.

``pretrained`` in this package means *trained MammoCLIP weights* (as in open_clip and timm); the
towers' ImageNet / text-model initialisation is ``init_towers``. Three layouts are recognised:

=================== =============================================== =====================================
layout              what it is                                      architecture from
=================== =============================================== =====================================
``save_pretrained`` a directory: ``config.json`` + ``model.safetensors`` its ``config.json``
                    + ``text_encoder/`` (``bundle/models/pretrained``)
bundle checkpoint   a ``torch.save`` state dict (``bundle/models/       the preset named, else the
                    model.pt``, ``last.pt``: ``{"model": ...}``)         ``run.json`` beside it
original .tar       a released Mammo-CLIP checkpoint (B2 / B5,       the tensors (``original_b5`` /
                    lukemelas EfficientNet names)                   ``original_b2``)
=================== =============================================== =====================================

Every file is read with ``weights_only=True`` (the original's harmless classes allowed; anything
more needs ``trusted=True``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..utils.errors import InvalidInputError
from .checkpoints import is_original_state, load_state, model_state, original_from_checkpoint, read_checkpoint
from .mammoclip import CONFIG_NAME, WEIGHTS_NAME, MammoCLIP
from .presets import get_preset, is_preset, list_models

__all__ = ["checkpoint_layout", "load_pretrained", "RUN_RECORD"]

WHAT = "trained MammoCLIP weights (a bundle checkpoint such as model.pt, or an original Mammo-CLIP .tar)"

RUN_RECORD = "run.json"
"""The record of the run that owns a checkpoint folder (written by ``engines.runs.RunDirectory``; read
here for a bundle checkpoint's preset and image size): defined here, the lower layer of the two."""


def checkpoint_layout(path: str | os.PathLike, checkpoint: Any = None) -> str:
    """``"save_pretrained"``, ``"original"`` or ``"bundle"``: what :func:`load_pretrained` makes of ``path``.

    ``checkpoint`` is the file's content when already read (a file's layout is in its keys).
    """
    path = Path(path)
    if path.is_dir():
        if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
            return "save_pretrained"
        raise InvalidInputError(path, f"a directory without {CONFIG_NAME} + {WEIGHTS_NAME}: not a saved MammoCLIP "
                                      "(expected a save_pretrained directory, a bundle checkpoint or an original "
                                      "Mammo-CLIP .tar)")
    if checkpoint is None:
        checkpoint = read_checkpoint(path, what=WHAT)
    try:
        state = model_state(checkpoint)
    except ValueError as err:
        raise InvalidInputError(path, str(err)) from None
    return "original" if is_original_state(state) else "bundle"


def _recorded_architecture(path: Path) -> tuple[str, dict[str, Any]]:
    """The preset and image size the bundle recorded in ``run.json`` beside a checkpoint."""
    record_path = path.parent / RUN_RECORD
    try:
        settings = json.loads(record_path.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError, AttributeError):
        settings = {}
    preset = settings.get("preset")
    if not is_preset(preset):
        raise InvalidInputError(path, "a bundle checkpoint holds weights only and no readable run.json beside it "
                                      f"names its preset: pass the preset (one of {list_models()}), e.g. "
                                      f"create_model('tiny', pretrained='{path}', image_size=[448, 288])")
    fields = {"image_size": settings["image_size"]} if settings.get("image_size") else {}
    return preset, fields


def load_pretrained(path: str | os.PathLike, name: str | None = None, map_location: str | torch.device = "cpu",
                    trusted: bool = False, **overrides: Any) -> MammoCLIP:
    """The trained MammoCLIP at ``path`` (any layout in the module table), in eval mode.

    Args:
        path: a ``save_pretrained`` directory, a bundle checkpoint or an original Mammo-CLIP ``.tar``.
        name: the preset of a bundle checkpoint (default: the one its ``run.json`` records); for the
            other layouts the architecture is the file's own and ``name`` must be ``None`` or agree.
        trusted: allow a full (code-running) unpickle of an original ``.tar`` that needs classes
            outside the allow-list. Only for files from a trusted source.
        overrides: config fields (``image_size`` of a bundle checkpoint, run-time settings such as
            ``image_grad_checkpointing``); ``text_model`` for an original ``.tar`` (its
            Bio_ClinicalBERT directory, for the tokenizer).
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(path, "no such file or directory (expected trained MammoCLIP weights)")
    if path.is_dir():
        checkpoint_layout(path)  # a clear error for a directory that is not a saved model
        return MammoCLIP.from_pretrained(path, map_location=map_location, **overrides)
    checkpoint = read_checkpoint(path, trusted=trusted, what=WHAT)
    if checkpoint_layout(path, checkpoint) == "original":
        if name is not None and not str(name).startswith("original_"):
            raise InvalidInputError(path, f"an original Mammo-CLIP checkpoint (architecture original_b5 / "
                                          f"original_b2, detected from its tensors), not preset {name!r}")
        text_model = overrides.pop("text_model", None)
        if overrides:
            raise TypeError(f"an original Mammo-CLIP checkpoint takes only text_model, got {sorted(overrides)}")
        return original_from_checkpoint(checkpoint, path, text_model=text_model, map_location=map_location)
    if name is None:
        name, recorded = _recorded_architecture(path)
        overrides = {**recorded, **overrides}
    model = MammoCLIP(get_preset(name, **overrides), init_towers=False)
    load_state(model, checkpoint, path)
    return model.to(map_location).eval()
