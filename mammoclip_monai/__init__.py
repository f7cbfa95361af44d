"""MammoCLIP-MONAI: Mammo-CLIP as a MONAI bundle and a Python library.

The front door, in the style of open_clip and timm::

    import mammoclip_monai as mc

    model, train_transforms, eval_transforms = mc.create_model_and_transforms("tiny")
    tokenizer = mc.get_tokenizer("tiny")
    mc.list_models()

Importing the package is cheap: sub-modules (which pull in torch and MONAI) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_EXPORTS = {
    "create_model_and_transforms": "networks.factory",
    "create_model": "networks.factory",
    "create_transforms": "networks.factory",
    "get_tokenizer": "networks.factory",
    "list_models": "networks.presets",
    "load_pretrained": "networks.pretrained",
    "MammoCLIP": "networks.mammoclip",
    "MammoCLIPConfig": "networks.mammoclip",
    "Predictor": "inference.predictor",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import the sub-module that defines ``name`` the first time it is asked for (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
