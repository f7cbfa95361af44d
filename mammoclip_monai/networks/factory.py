"""The front door (open_clip / timm style): a model, its transforms and its tokenizer from one name.

::

    import mammoclip_monai as mc

    mc.list_models()                                    # ['original_b2', ..., 'tiny', 'default']
    model, train_tf, eval_tf = mc.create_model_and_transforms("tiny")                 # towers initialised
    model, _, eval_tf = mc.create_model_and_transforms("bundle/models/pretrained")    # trained weights
    model, _, eval_tf = mc.create_model_and_transforms("tiny", pretrained="bundle/models/model.pt")
    tokenizer = mc.get_tokenizer("tiny")
    embedding = model.encode_image(eval_tf({"image": "x.dcm"})["image"][None])

``name_or_path`` is a preset (:func:`~mammoclip_monai.networks.presets.list_models`) or trained
weights (a ``save_pretrained`` directory, a bundle checkpoint, an original Mammo-CLIP ``.tar``).
``pretrained`` always means trained MammoCLIP weights (:func:`~mammoclip_monai.networks.pretrained.load_pretrained`);
``init_towers`` is the towers' own initialisation (ImageNet image weights, the text model's
weights), what a new training run starts from. The transforms are built from the model's config
(input size, intensity normalisation), so a model is always fed as it was trained.
"""

from __future__ import annotations

import os
from typing import Any

from monai.transforms import Compose

from ..data.pipelines import preprocessing
from ..text.tokenizer import MammoTokenizer, load_tokenizer
from .mammoclip import TEXT_DIR_NAME, MammoCLIP
from .presets import BIO_CLINICALBERT, get_preset, is_preset, list_models
from .pretrained import checkpoint_layout, load_pretrained
from .weights import default_text_model_path, fallback_tokenizer

__all__ = ["create_model", "create_model_and_tokenizer", "create_model_and_transforms", "create_transforms",
           "get_tokenizer"]


def _refuse_bool(pretrained: Any) -> None:
    if isinstance(pretrained, bool):
        raise TypeError("pretrained names trained MammoCLIP weights (a save_pretrained directory, a bundle "
                        "checkpoint or an original .tar), not a flag; the towers' ImageNet / text-model "
                        f"initialisation is init_towers={pretrained}")


def create_model(name_or_path: str | os.PathLike = "tiny", pretrained: str | os.PathLike | None = None, *,
                 init_towers: bool = True, map_location: str | Any = "cpu", trusted: bool = False,
                 **overrides: Any) -> MammoCLIP:
    """A :class:`MammoCLIP` from a preset name or from trained weights.

    - ``create_model("tiny")``: the preset, towers initialised (``init_towers=False``: random).
    - ``create_model("tiny", pretrained="bundle/models/model.pt")``: the preset's architecture with
      trained weights (any layout :func:`load_pretrained` reads).
    - ``create_model("bundle/models/pretrained")`` or an original ``.tar``: the file's own model.

    ``overrides`` are config fields (``image_size``, ``text_model``, ``text_config``, ...). Models with
    trained weights come in eval mode; a fresh preset in train mode, ready to train.
    """
    _refuse_bool(pretrained)
    if is_preset(name_or_path):
        if pretrained is not None:
            return load_pretrained(pretrained, name=str(name_or_path), map_location=map_location, trusted=trusted,
                                   **overrides)
        return MammoCLIP(get_preset(str(name_or_path), **overrides), init_towers=init_towers).to(map_location)
    if pretrained is not None:
        raise ValueError(f"{os.fspath(name_or_path)!r} is not a preset; give trained weights either as "
                         "name_or_path or as pretrained (with a preset name), not both")
    if not os.path.exists(name_or_path):
        raise ValueError(f"{os.fspath(name_or_path)!r} is neither a preset ({', '.join(list_models())}) nor an "
                         "existing file or directory of trained weights")
    return load_pretrained(name_or_path, map_location=map_location, trusted=trusted, **overrides)


def create_transforms(model: MammoCLIP, voi: str = "auto", allow_any_modality: bool = False
                      ) -> tuple[Compose, Compose]:
    """``(train, eval)`` MONAI chains from a file path (``{"image": path}``) to the ``(1, H, W)`` tensor the
    model expects: its ``image_size`` and ``image_normalization``; ``train`` adds the random augmentation."""
    common = dict(spatial_size=tuple(model.config.image_size), normalization=model.config.image_normalization,
                  voi=voi, allow_any_modality=allow_any_modality)
    return preprocessing(train=True, **common), preprocessing(train=False, **common)


def create_model_and_transforms(name_or_path: str | os.PathLike = "tiny", pretrained: str | os.PathLike | None = None,
                                *, init_towers: bool = True, map_location: str | Any = "cpu", trusted: bool = False,
                                **overrides: Any) -> tuple[MammoCLIP, Compose, Compose]:
    """``(model, train transforms, eval transforms)``: :func:`create_model` and :func:`create_transforms`."""
    model = create_model(name_or_path, pretrained, init_towers=init_towers, map_location=map_location,
                         trusted=trusted, **overrides)
    return (model, *create_transforms(model))


def create_model_and_tokenizer(name_or_path: str | os.PathLike = "tiny", pretrained: str | os.PathLike | None = None,
                               **kwargs: Any) -> tuple[MammoCLIP, Any]:
    """:func:`create_model` plus the text tower's Hugging Face tokenizer (``None`` if unavailable)."""
    model = create_model(name_or_path, pretrained, **kwargs)
    return model, model.tokenizer


def get_tokenizer(name_or_path: str | os.PathLike = "tiny", text_model: str | os.PathLike | None = None,
                  max_length: int | None = None) -> MammoTokenizer:
    """The tokenizer of a preset or a saved model, without building the model.

    ``tokenizer(["no mass", ...])`` gives ``{"input_ids", "attention_mask"}`` of the preset's
    ``text_max_length``. Presets whose text model is a hub id (Bio_ClinicalBERT) need it once from
    the hub, or ``text_model=<its local directory>``; an original ``.tar`` holds no tokenizer, so
    it needs ``text_model``.
    """
    if is_preset(name_or_path):
        config = get_preset(str(name_or_path), **({"text_model": os.fspath(text_model)} if text_model else {}))
        source = config.text_model if config.text_model is not None else default_text_model_path()
        tokenizer = load_tokenizer(source) if source is not None else fallback_tokenizer()
        return MammoTokenizer(tokenizer, max_length or config.text_max_length)
    path = os.fspath(name_or_path)
    layout = checkpoint_layout(path)
    if layout == "save_pretrained":
        config = MammoCLIP.read_config(path)
        source = text_model or os.path.join(path, TEXT_DIR_NAME)
        return MammoTokenizer(load_tokenizer(source), max_length or config.text_max_length)
    if layout == "bundle":
        raise ValueError(f"{path}: a bundle checkpoint uses its preset's tokenizer: get_tokenizer('<preset>')")
    if text_model is None:
        raise ValueError(f"{path}: an original Mammo-CLIP checkpoint holds no tokenizer; pass "
                         f"text_model=<a local copy of {BIO_CLINICALBERT}>")
    return MammoTokenizer(load_tokenizer(text_model), max_length or 256)
