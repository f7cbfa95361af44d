"""MammoCLIP-MONAI: Mammo-CLIP as a MONAI bundle and a Python library.

The front door, in the style of open_clip and timm::

    import mammoclip_monai as mc

    model, train_transforms, eval_transforms = mc.create_model_and_transforms("tiny")
    tokenizer = mc.get_tokenizer("tiny")
    mc.list_models()

Importing the package is cheap: sub-modules (which pull in torch and MONAI) load on first use.
"""

from __future__ import annotations

from .utils.lazy import lazy_exports
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
