"""The preset registry: named MammoCLIP architectures (open_clip's model configs, timm's model names).

Presets are plain dicts of :class:`~mammoclip_monai.networks.mammoclip.MammoCLIPConfig` fields,
so a bundle config can copy one verbatim and change a field.

=============== ============================================ ================ ========== =========
preset          image tower (initial weights)                text tower       input H x W pooling
=============== ============================================ ================ ========== =========
``tiny``        timm tf_efficientnet_lite0 (packaged         MiniLM-L6        512 x 320  mean
                ImageNet)                                    (packaged)
``paper_b5``    timm tf_efficientnet_b5.aa_in1k (timm hub)   Bio_ClinicalBERT 1520 x 912 eos
``paper_b2``    timm tf_efficientnet_b2.aa_in1k (timm hub)   Bio_ClinicalBERT 1520 x 912 eos
``original_b5`` MONAI EfficientNetBN b5 (lukemelas ImageNet) Bio_ClinicalBERT 1520 x 912 eos
``original_b2`` MONAI EfficientNetBN b2 (lukemelas ImageNet) Bio_ClinicalBERT 1520 x 912 eos
=============== ============================================ ================ ========== =========

``tiny`` (alias ``default``) runs fully offline. It pools MiniLM with "mean" because that is how
all-MiniLM-L6-v2 was trained, so its sentence vectors are meaningful from the start. The
``paper_*`` presets are the paper's recipe on timm (gradient checkpointing, channels_last, TF
"same" padding computed for the actual input size); the ``original_*`` presets are the exact
network of the released checkpoints (static padding for the native size) and are what
:func:`~mammoclip_monai.networks.checkpoints.load_original_mammoclip` builds. Bio_ClinicalBERT is a
hub id: it is fetched only when actually needed (``init_towers=True``, or ``init_towers=False``
without ``text_model`` for its config and tokenizer); pass ``text_model=<local directory>`` to
stay offline.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from .mammoclip import MammoCLIPConfig

__all__ = ["PRESETS", "BIO_CLINICALBERT", "list_models", "list_presets", "get_preset"]

BIO_CLINICALBERT = "emilyalsentzer/Bio_ClinicalBERT"
_LOGIT_SCALE_INIT = math.log(1 / 0.07)

_PAPER_TEXT = dict(text_model=BIO_CLINICALBERT, text_pooling="eos", text_max_length=256, embed_dim=512,
                   projection="linear", logit_scale_init=_LOGIT_SCALE_INIT, logit_scale_max=100.0)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        image_backend="timm", image_model="tf_efficientnet_lite0", in_chans=1, image_size=[512, 320],
        image_drop_rate=0.2, image_drop_path_rate=0.2, image_weights="efficientnet_lite0_imagenet",
        text_model=None, text_pooling="mean", text_max_length=64, embed_dim=512, projection="linear",
        logit_scale_init=_LOGIT_SCALE_INIT, logit_scale_max=100.0,
    ),
    "paper_b5": dict(
        image_backend="timm", image_model="tf_efficientnet_b5.aa_in1k", in_chans=1, image_size=[1520, 912],
        image_drop_rate=0.4, image_drop_path_rate=0.2, image_weights="timm", **_PAPER_TEXT,
    ),
    "paper_b2": dict(
        image_backend="timm", image_model="tf_efficientnet_b2.aa_in1k", in_chans=1, image_size=[1520, 912],
        image_drop_rate=0.3, image_drop_path_rate=0.2, image_weights="timm", **_PAPER_TEXT,
    ),
    "original_b5": dict(
        image_backend="efficientnet_bn", image_model="efficientnet-b5", in_chans=1, image_size=[1520, 912],
        image_drop_rate=0.4, image_drop_path_rate=0.2, image_weights="lukemelas_imagenet", **_PAPER_TEXT,
    ),
    "original_b2": dict(
        image_backend="efficientnet_bn", image_model="efficientnet-b2", in_chans=1, image_size=[1520, 912],
        image_drop_rate=0.3, image_drop_path_rate=0.2, image_weights="lukemelas_imagenet", **_PAPER_TEXT,
    ),
}
_ALIASES = {"default": "tiny"}


def list_models() -> list[str]:
    """Preset names accepted by :func:`~mammoclip_monai.create_model_and_transforms` (aliases included)."""
    return sorted(PRESETS) + sorted(_ALIASES)


list_presets = list_models
"""The name this registry had before the front door (kept: configs and scripts use it)."""


def get_preset(preset: str = "tiny", **overrides: Any) -> MammoCLIPConfig:
    """The preset's :class:`MammoCLIPConfig` with ``overrides`` (config field names) applied."""
    name = _ALIASES.get(preset, preset)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list_models()}")
    data = copy.deepcopy(PRESETS[name])
    data.update(overrides)
    return MammoCLIPConfig.from_dict(data)


def is_preset(name: object) -> bool:
    """Whether ``name`` is a preset name or alias (not a path)."""
    return isinstance(name, str) and (name in PRESETS or name in _ALIASES)
