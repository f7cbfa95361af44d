"""MammoCLIP networks: encoders, projection heads, the model, presets and checkpoint import.

Typical use (the same names are at the top level, ``mammoclip_monai.create_model_and_transforms``)::

    from mammoclip_monai.networks import create_model_and_transforms, get_tokenizer
    model, train_tf, eval_tf = create_model_and_transforms("tiny")      # offline, towers initialised
    tokens = get_tokenizer("tiny")(["No suspicious mass in the left breast."])
    out = model(images, tokens["input_ids"], tokens["attention_mask"])   # images: (B, 1, H, W)

    model = create_model("b5-model-best-epoch-7.tar", text_model="/models/Bio_ClinicalBERT")  # original weights

Names are imported on first use so that ``import mammoclip_monai.networks`` stays cheap (timm
and transformers take seconds to import).
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "ImageEncoder": "encoders",
    "EfficientNetBNImageEncoder": "encoders",
    "TextEncoder": "encoders",
    "fold_stem_weight": "encoders",
    "pool_hidden_states": "encoders",
    "ProjectionHead": "heads",
    "MammoCLIP": "mammoclip",
    "MammoCLIPConfig": "mammoclip",
    "PRESETS": "presets",
    "BIO_CLINICALBERT": "presets",
    "list_models": "presets",
    "list_presets": "presets",
    "get_preset": "presets",
    "create_model": "factory",
    "create_model_and_tokenizer": "factory",
    "create_model_and_transforms": "factory",
    "create_transforms": "factory",
    "get_tokenizer": "factory",
    "load_pretrained": "pretrained",
    "checkpoint_layout": "pretrained",
    "load_original_mammoclip": "checkpoints",
    "load_weights": "checkpoints",
    "default_text_model_path": "weights",
    "load_efficientnet_lite0_imagenet": "weights",
    "param_groups": "optim",
    "ZeroShotClassifier": "zero_shot",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
