"""Import the released Mammo-CLIP checkpoints (``b5-model-best-epoch-7.tar``, ``b2-model-best-epoch-10.tar``).

The files are ``torch.save`` pickles of ``{"model", "optimizer", "scheduler", "config", "epoch",
"train_loss"}``. Only ``model`` is used; its keys are::

    image_encoder.<lukemelas EfficientNet names>      (_conv_stem, _bn0, _blocks.N.*, _conv_head, _bn1, _fc.*)
    text_encoder.text_encoder.<Hugging Face BERT names>
    image_projection.projection.{weight,bias}
    text_projection.projection.{weight,bias}
    logit_scale

They become a :class:`~mammoclip_monai.networks.mammoclip.MammoCLIP` with the ``efficientnet_bn``
backend (the same network as the lukemelas port, so outputs match). Two groups of tensors exist in
the file but are never used by the original forward, and are dropped *by name* with a log line:
the image classifier ``_fc.*`` (the lukemelas model was built with ``num_classes=1``) and the BERT
``pooler.*``. An ``embeddings.position_ids`` buffer (written by older ``transformers``) is dropped
too, after checking it is the ``arange`` it must be. Anything else that does not fit (unknown or
missing keys, wrong shapes) is an error that lists the keys.

The embedded ``config`` holds the authors' cluster paths and Python objects; it is ignored. The
file is read with ``torch.load(weights_only=True)`` and an allow-list of harmless classes
(``argparse.Namespace``, paths, numpy scalars); only ``trusted=True`` falls back to a full unpickle.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import pathlib
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..utils.errors import InvalidInputError
from ..utils.input_files import require_file, unreadable
from .encoders import EfficientNetBNImageEncoder, TextEncoder, fold_stem_weight
from .mammoclip import MammoCLIP, MammoCLIPConfig
from .presets import BIO_CLINICALBERT
from .weights import describe_mismatch, state_mismatch

logger = logging.getLogger(__name__)

__all__ = [
    "load_original_mammoclip",
    "read_checkpoint",
    "model_state",
    "detect_efficientnet_variant",
    "infer_bert_config",
    "convert_original_state_dict",
    "load_weights",
    "load_state",
    "is_original_state",
    "original_from_checkpoint",
    "read_torch_file",
    "describe_mismatch",
    "state_mismatch",
]

IMAGE_PREFIX = "image_encoder."
TEXT_PREFIX = "text_encoder.text_encoder."
PROJECTION_KEYS = ("image_projection.projection.weight", "image_projection.projection.bias",
                   "text_projection.projection.weight", "text_projection.projection.bias")
ORIGINAL_IMAGE_SIZE = (1520, 912)

# (width, depth) multipliers of EfficientNet-B0..B7 (Tan & Le 2019), and the B0 stage repeats.
_EFFICIENTNET_SCALING = {
    "efficientnet-b0": (1.0, 1.0), "efficientnet-b1": (1.0, 1.1), "efficientnet-b2": (1.1, 1.2),
    "efficientnet-b3": (1.2, 1.4), "efficientnet-b4": (1.4, 1.8), "efficientnet-b5": (1.6, 2.2),
    "efficientnet-b6": (1.8, 2.6), "efficientnet-b7": (2.0, 3.1),
}
_B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# the original's dropout after pooling (drop-connect is 0.2 for both)
_ORIGINAL_DROPOUT = {"efficientnet-b5": 0.4, "efficientnet-b2": 0.3}


# ----------------------------------------------------------------------------- reading


def _harmless_globals() -> list[Any]:
    """Classes that may appear in the embedded config/loss and cannot run code when rebuilt."""
    allowed: list[Any] = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath,
                          pathlib.PureWindowsPath]
    try:
        import numpy as np

        try:
            from numpy._core.multiarray import _reconstruct, scalar
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
        allowed += [scalar, _reconstruct, np.ndarray, np.dtype]
        allowed += [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)]
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return allowed


class RefusedPickleError(InvalidInputError, pickle.UnpicklingError):
    """A pickle that needs a class ``weights_only`` loading refuses (``refused``: that class's name)."""

    def __init__(self, path: str | os.PathLike, reason: str, refused: str = "") -> None:
        super().__init__(path, reason)
        self.refused = refused

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason, self.refused))


# torch.load's failures on a file that is not a torch checkpoint (truncated, text, another archive, a
# plain pickle): the zip reader raises RuntimeError, the unpickler KeyError / EOFError / UnpicklingError ...
_NOT_A_TORCH_FILE = (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, IndexError, ValueError, TypeError,
                     AttributeError, ImportError, UnicodeDecodeError, MemoryError, OverflowError)


def _refused_global(err: BaseException) -> str | None:
    """The class a ``weights_only`` load refused (``"GLOBAL pkg.Class"`` in torch's message), if that was it."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1) if isinstance(err, pickle.UnpicklingError) and found else None


def read_torch_file(path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu",
                    allowed: list[Any] | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` (plus the ``allowed`` classes); any failure is one line.

    ``what`` names the expected file ("a FActOR weights file (factor.pt)"). A missing file, a folder,
    a file torch cannot read (:class:`InvalidInputError`), and a pickle that needs a class
    ``weights_only`` refuses (:class:`RefusedPickleError`: weights files hold only tensors and plain
    values, so such a file is something else) are all reported as "not ``what``"; torch's advice to
    unpickle with ``weights_only=False`` is never passed on.
    """
    path = require_file(path, what)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed or [])):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # means nothing to a user
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except OSError as err:
        raise unreadable(path, err, what) from None
    except _NOT_A_TORCH_FILE as err:
        refused = _refused_global(err)
        if refused:
            raise RefusedPickleError(path, f"not {what}: it is a pickle that needs the Python class {refused}, which "
                                           "a weights file never contains", refused) from None
        raise InvalidInputError(path, f"not {what}: torch cannot read it as a checkpoint "
                                      f"({type(err).__name__})") from None


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    trusted: bool = False, what: str = "a Mammo-CLIP checkpoint (.tar)") -> Any:
    """``torch.load`` with ``weights_only=True`` plus an allow-list of harmless classes.

    A file that needs other classes (e.g. an OmegaConf config) raises, naming the class, unless
    ``trusted=True``: then it is fully unpickled after a warning, because unpickling can run
    arbitrary code and is only acceptable for files from a source you trust.
    """
    try:
        return read_torch_file(path, what, map_location, allowed=_harmless_globals())
    except RefusedPickleError as err:
        refused = err.refused
        if not trusted:
            raise RefusedPickleError(
                path, f"needs {refused} to be unpickled, which weights_only loading refuses (it could run code); "
                "if the file comes from a source you trust, pass trusted=True", refused) from None
        warnings.warn(
            f"{path} needs {refused}, so it is loaded with weights_only=False (full unpickling, which can run "
            "arbitrary code) because trusted=True was given",
            stacklevel=2,
        )
        return torch.load(str(path), map_location=map_location, weights_only=False)


def model_state(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The ``model`` entry of a training checkpoint (or the checkpoint itself if it is a state dict)."""
    if isinstance(checkpoint, Mapping) and "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        state = dict(checkpoint["model"])
    elif isinstance(checkpoint, Mapping) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state = dict(checkpoint)
    else:
        keys = list(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"not a Mammo-CLIP checkpoint: expected a dict with a 'model' state dict, got {keys}")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"checkpoint 'model' entries that are not tensors: {not_tensors}")
    return state


# ----------------------------------------------------------------------------- shapes


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet channel scaling: multiply, round to a multiple of ``divisor``, never shrink by >10 %."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _signature(name: str) -> tuple[int, int, int]:
    """(stem channels, head channels, number of MBConv blocks) of an EfficientNet variant."""
    width, depth = _EFFICIENTNET_SCALING[name]
    blocks = sum(int(math.ceil(depth * r)) for r in _B0_REPEATS)
    return _round_filters(32, width), _round_filters(1280, width), blocks


def detect_efficientnet_variant(image_state: Mapping[str, Any]) -> str:
    """Which EfficientNet-B* a lukemelas state dict is, from tensor shapes alone.

    Uses the stem and head widths and the number of blocks, which together differ for every
    variant (B5: 48 / 2048 / 39, B2: 32 / 1408 / 23). Values need only a ``.shape``.
    """
    for key in ("_conv_stem.weight", "_conv_head.weight"):
        if key not in image_state:
            raise KeyError(f"image encoder state lacks {key!r}; cannot tell the EfficientNet variant")
    blocks = {int(m.group(1)) for k in image_state if (m := re.match(r"_blocks\.(\d+)\.", k))}
    found = (int(image_state["_conv_stem.weight"].shape[0]), int(image_state["_conv_head.weight"].shape[0]),
             len(blocks))
    for name in _EFFICIENTNET_SCALING:
        if _signature(name) == found:
            return name
    raise ValueError(f"no EfficientNet-B0..B7 has stem/head channels and block count {found}")


def infer_bert_config(text_state: Mapping[str, torch.Tensor]) -> Any:
    """A ``BertConfig`` matching a BERT state dict's tensors (Bio_ClinicalBERT: 28996 / 768 / 12 / 3072).

    Heads are ``hidden / 64`` (the BERT convention, which Bio_ClinicalBERT follows) since head
    count leaves no trace in the shapes.
    """
    from transformers import BertConfig

    required = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                "embeddings.token_type_embeddings.weight", "encoder.layer.0.intermediate.dense.weight")
    missing = [k for k in required if k not in text_state]
    if missing:
        raise KeyError(f"text encoder state is not BERT-shaped (missing {missing}); pass text_model=<directory "
                       "with the text model's config and tokenizer>")
    vocab_size, hidden = text_state["embeddings.word_embeddings.weight"].shape
    if hidden % 64:
        raise ValueError(f"hidden size {hidden} is not a multiple of 64; pass text_model=... to give the config")
    layers = 1 + max(int(m.group(1)) for k in text_state if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    return BertConfig(
        vocab_size=int(vocab_size), hidden_size=int(hidden), num_hidden_layers=layers,
        num_attention_heads=int(hidden) // 64,
        intermediate_size=int(text_state["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(text_state["embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(text_state["embeddings.token_type_embeddings.weight"].shape[0]),
    )


# ----------------------------------------------------------------------------- conversion


def convert_original_state_dict(state: Mapping[str, torch.Tensor], model: MammoCLIP) -> dict[str, torch.Tensor]:
    """Rename an original ``model`` state dict to ``model``'s keys; strict about everything.

    Drops ``image_encoder._fc.*``, ``text_encoder.text_encoder.pooler.*`` and an ``arange``
    ``embeddings.position_ids`` (logged). Raises ``KeyError`` listing unknown and missing keys (in
    the original's names) and ``ValueError`` listing shape mismatches.
    """
    encoder = model.image_encoder
    if not isinstance(encoder, EfficientNetBNImageEncoder):
        raise TypeError("original checkpoints need the efficientnet_bn image backend")
    from_lukemelas = {luke: f"image_encoder.model.{ours}" for ours, luke in encoder.lukemelas_key_map().items()}

    converted: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}  # our key -> original key, for messages
    dropped, unexpected = [], []
    for key, value in state.items():
        target = None
        if key.startswith(IMAGE_PREFIX):
            sub = key[len(IMAGE_PREFIX):]
            if sub.startswith("_fc."):
                dropped.append(key)
                continue
            target = from_lukemelas.get(sub)
            if sub == "_conv_stem.weight":
                value = fold_stem_weight(value, encoder.in_chans)
        elif key.startswith(TEXT_PREFIX):
            sub = key[len(TEXT_PREFIX):]
            if sub.startswith("pooler."):
                dropped.append(key)
                continue
            if sub == "embeddings.position_ids":
                expected = torch.arange(value.shape[-1], dtype=value.dtype).expand_as(value)
                if not torch.equal(value.cpu(), expected):
                    raise ValueError(f"{key} is not the arange buffer it should be; refusing to drop it")
                dropped.append(key)
                continue
            target = f"text_encoder.model.{sub}"
        elif key in PROJECTION_KEYS or key == "logit_scale":
            target = key
        if target is None:
            unexpected.append(key)
            continue
        converted[target], names[target] = value, key

    reference = model.state_dict()
    unexpected += sorted(names[k] for k in converted if k not in reference)
    to_original = {ours: IMAGE_PREFIX + luke for luke, ours in from_lukemelas.items()}
    missing = sorted(to_original.get(k, k.replace("text_encoder.model.", TEXT_PREFIX, 1))
                     for k in reference if k not in converted)
    if unexpected or missing:
        raise KeyError(f"original checkpoint does not match the model: unexpected keys {sorted(unexpected)}; "
                       f"missing keys {missing}")
    if "logit_scale" in converted:
        converted["logit_scale"] = converted["logit_scale"].reshape(reference["logit_scale"].shape)
    mismatched = [f"{names[k]}: {tuple(v.shape)} vs {tuple(reference[k].shape)}"
                  for k, v in converted.items() if tuple(v.shape) != tuple(reference[k].shape)]
    if mismatched:
        raise ValueError(f"shape mismatch importing the original checkpoint: {mismatched}")
    if dropped:
        logger.info("dropped %d tensors the original forward never uses: %s", len(dropped), dropped)
    return converted


def load_original_mammoclip(path: str | os.PathLike, text_model: str | os.PathLike | None = None,
                            map_location: str | torch.device = "cpu", trusted: bool = False,
                            in_chans: int = 1) -> MammoCLIP:
    """Build a :class:`MammoCLIP` from a released Mammo-CLIP checkpoint (B2 or B5, detected from shapes).

    Args:
        path: the ``.tar`` checkpoint.
        text_model: directory (or hub id) of Bio_ClinicalBERT for its config and tokenizer; its
            weights are not needed (the checkpoint has them all). Without it the BERT config is
            inferred from the tensors and the model has no tokenizer (a warning says so): token ids
            must then come from a Bio_ClinicalBERT tokenizer loaded elsewhere.
        map_location: device for the returned model.
        trusted: allow a full (code-executing) unpickle if the file needs classes outside the
            allow-list. Only for files from a trusted source.
        in_chans: 1 (default) folds the stem for grey input; 3 keeps the checkpoint's stem.

    Returns the model in eval mode. Its inputs: ``(B, 1, 1520, 912)`` images standardised with the
    original constants (``NormalizeMammogramd(mode="fixed")``), reports tokenised to <= 256 tokens.
    """
    checkpoint = read_checkpoint(path, map_location="cpu", trusted=trusted)
    return original_from_checkpoint(checkpoint, path, text_model=text_model, map_location=map_location,
                                    in_chans=in_chans)


def is_original_state(state: Mapping[str, Any]) -> bool:
    """Whether a state dict has the original Mammo-CLIP layout (lukemelas EfficientNet names)."""
    return f"{IMAGE_PREFIX}_conv_stem.weight" in state


def original_from_checkpoint(checkpoint: Any, path: str | os.PathLike, text_model: str | os.PathLike | None = None,
                             map_location: str | torch.device = "cpu", in_chans: int = 1) -> MammoCLIP:
    """:func:`load_original_mammoclip` of an already read checkpoint (``path`` names it in messages)."""
    state = model_state(checkpoint)
    image_state = {k[len(IMAGE_PREFIX):]: v for k, v in state.items() if k.startswith(IMAGE_PREFIX)}
    variant = detect_efficientnet_variant(image_state)
    if PROJECTION_KEYS[0] not in state:
        raise KeyError(f"original checkpoint lacks {PROJECTION_KEYS[0]!r}")
    embed_dim = int(state["image_projection.projection.weight"].shape[0])

    if text_model is not None:
        text_encoder = TextEncoder(os.fspath(text_model), pooling="eos", max_length=256, pretrained=False)
        if text_encoder.tokenizer is None:
            warnings.warn(f"no tokenizer found in {text_model}; text must be tokenised elsewhere", stacklevel=2)
    else:
        from transformers import AutoModel

        text_state = {k[len(TEXT_PREFIX):]: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
        bert_config = infer_bert_config(text_state)
        warnings.warn(
            "load_original_mammoclip: no text_model given, so the BERT config was inferred from the tensors "
            f"({bert_config.num_hidden_layers} layers, hidden {bert_config.hidden_size}, vocab "
            f"{bert_config.vocab_size}) and the model has NO tokenizer. Tokenise reports with the "
            f"{BIO_CLINICALBERT} tokenizer (or pass text_model=<its local directory>).",
            stacklevel=2,
        )
        text_encoder = TextEncoder(model=AutoModel.from_config(bert_config, add_pooling_layer=False),
                                   tokenizer=None, pooling="eos", max_length=256)

    config = MammoCLIPConfig(
        image_backend="efficientnet_bn", image_model=variant, in_chans=in_chans, image_size=ORIGINAL_IMAGE_SIZE,
        image_drop_rate=_ORIGINAL_DROPOUT.get(variant), image_drop_path_rate=0.2, image_weights=None,
        text_model=os.fspath(text_model) if text_model is not None else BIO_CLINICALBERT,
        text_pooling="eos", text_max_length=256, embed_dim=embed_dim, projection="linear",
    )
    model = MammoCLIP(config, init_towers=False, text_encoder=text_encoder)
    model.load_state_dict(convert_original_state_dict(state, model), strict=True)
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, Mapping) else None
    logger.info("imported original Mammo-CLIP %s checkpoint %s (epoch %s)", variant, path, epoch)
    return model.to(map_location).eval()


def load_weights(model: torch.nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> None:
    """Load a state-dict checkpoint (``model.pt``) into ``model``, strictly, with ``weights_only=True``.

    A file that is not a checkpoint, or one written by another preset (or model), is an
    :class:`~mammoclip_monai.utils.InvalidInputError` that names the first missing, unexpected and
    mis-shaped keys, instead of PyTorch's wall of text. Accepts a plain state dict or a training
    checkpoint that holds one under ``"model"``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state = read_torch_file(path, "a model checkpoint (a state dict, e.g. models/model.pt)", map_location)
    load_state(model, state, path)


def load_state(model: torch.nn.Module, checkpoint: Any, path: str | os.PathLike) -> None:
    """Strictly load an already read state-dict checkpoint (or ``{"model": state dict}``) into ``model``;
    ``path`` names the file in the error that lists the first mismatched keys."""
    state = checkpoint
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise InvalidInputError(path, f"not a state-dict checkpoint: it holds {type(state).__name__}, expected a "
                                      "dict of tensors (or {'model': state dict})")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    target = getattr(model, "module", model)
    mismatch = state_mismatch(target.state_dict(), state)
    if mismatch:
        preset = getattr(getattr(target, "config", None), "image_model", None)
        raise InvalidInputError(path, f"does not fit this model{f' (image model {preset})' if preset else ''}: it "
                                      f"was written by another preset or architecture; {mismatch}")
    target.load_state_dict(state, strict=True)
