"""MammoCLIP networks: encoders, projection heads, the model, presets and checkpoint import.

Typical use::

    from mammoclip_monai.networks import create_model_and_tokenizer
    model, tokenizer = create_model_and_tokenizer("tiny")        # offline, packaged weights
    tokens = model.tokenize(["No suspicious mass in the left breast."])
    out = model(images, tokens["input_ids"], tokens["attention_mask"])   # images: (B, 1, H, W)

    from mammoclip_monai.networks import load_original_mammoclip
    model = load_original_mammoclip("b5-model-best-epoch-7.tar", text_model="/models/Bio_ClinicalBERT")

Names are imported on first use so that ``import mammoclip_monai.networks`` stays cheap (timm
and transformers take seconds to import).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageEncoder": "encoders",
    "EfficientNetBNImageEncoder": "encoders",
    "TextEncoder": "encoders",
    "fold_stem_weight": "encoders",
    "pool_hidden_states": "encoders",
    "ProjectionHead": "heads",
    "MammoCLIP": "mammoclip",
    "MammoCLIPConfig": "mammoclip",
    "PRESETS": "factory",
    "list_presets": "factory",
    "get_preset": "factory",
    "create_model": "factory",
    "create_model_and_tokenizer": "factory",
    "load_original_mammoclip": "checkpoints",
    "load_weights": "checkpoints",
    "default_text_model_path": "weights",
    "load_efficientnet_lite0_imagenet": "weights",
    "param_groups": "optim",
    "ZeroShotClassifier": "zero_shot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the sub-module that defines ``name`` the first time it is asked for (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
