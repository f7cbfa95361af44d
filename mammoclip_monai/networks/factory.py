"""Named model presets and the ``create_model`` entry points (open_clip style).

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
hub id: it is fetched only when actually needed (``pretrained=True``, or ``pretrained=False``
without ``text_model`` for its config and tokenizer); pass ``text_model=<local directory>`` to
stay offline.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from .mammoclip import MammoCLIP, MammoCLIPConfig

__all__ = ["PRESETS", "list_presets", "get_preset", "create_model", "create_model_and_tokenizer",
           "BIO_CLINICALBERT"]

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


def list_presets() -> list[str]:
    """Names accepted by :func:`create_model` (aliases included)."""
    return sorted(PRESETS) + sorted(_ALIASES)


def get_preset(preset: str = "tiny", **overrides: Any) -> MammoCLIPConfig:
    """The preset's :class:`MammoCLIPConfig` with ``overrides`` (config field names) applied."""
    name = _ALIASES.get(preset, preset)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list_presets()}")
    data = copy.deepcopy(PRESETS[name])
    data.update(overrides)
    return MammoCLIPConfig.from_dict(data)


def create_model(preset: str = "tiny", pretrained: bool = True, **overrides: Any) -> MammoCLIP:
    """Build a :class:`MammoCLIP` from a preset.

    ``pretrained=True`` loads the preset's initial weights (image: ``image_weights``; text: the
    weights of ``text_model``). ``pretrained=False`` is random everywhere. Overrides are config
    fields, e.g. ``create_model("paper_b5", pretrained=False, text_model="/models/tiny_bert",
    text_config={"num_hidden_layers": 2})``.
    """
    return MammoCLIP(get_preset(preset, **overrides), pretrained=pretrained)


def create_model_and_tokenizer(preset: str = "tiny", pretrained: bool = True,
                               **overrides: Any) -> tuple[MammoCLIP, Any]:
    """:func:`create_model` plus the text tower's Hugging Face tokenizer (``None`` if unavailable)."""
    model = create_model(preset, pretrained=pretrained, **overrides)
    return model, model.tokenizer
