"""MammoCLIP: an image tower and a text tower projected into one normalised embedding space.

Interface after open_clip (``encode_image`` / ``encode_text`` / ``forward`` returning features and
the logit scale) and Hugging Face (``save_pretrained`` / ``from_pretrained``). The whole model is
described by :class:`MammoCLIPConfig`, a dataclass that round-trips through plain JSON, so bundle
configs and saved directories describe models the same way.

A saved directory is self-contained and loads offline::

    <dir>/config.json          MammoCLIPConfig
    <dir>/model.safetensors    all weights (no pickle)
    <dir>/text_encoder/        the text model's Hugging Face config.json + tokenizer files
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import ORIGINAL_MEAN, ORIGINAL_STD, NormalizeMammogramd
from ..utils.errors import InvalidInputError
from ..utils.files import atomic_path, atomic_write_text
from ..utils.input_files import describe_value, read_json_file
from .encoders import POOLING_MODES, EfficientNetBNImageEncoder, ImageEncoder, TextEncoder
from .heads import PROJECTION_KINDS, ProjectionHead
from .weights import (
    IMAGE_WEIGHT_SOURCES,
    default_text_model_path,
    describe_mismatch,
    fallback_text_config,
    fallback_tokenizer,
    load_image_weights,
)

__all__ = ["MammoCLIPConfig", "MammoCLIP", "CONFIG_NAME", "WEIGHTS_NAME", "TEXT_DIR_NAME", "build_image_encoder",
           "load_safetensors"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TEXT_DIR_NAME = "text_encoder"
IMAGE_BACKENDS = ("timm", "efficientnet_bn")


def _original_normalization() -> dict[str, Any]:
    """The intensity standardisation the original checkpoints expect (data/transforms.py constants)."""
    return {"mode": "fixed", "mean": ORIGINAL_MEAN, "std": ORIGINAL_STD}


class ConfigValueError(ValueError):
    """A :class:`MammoCLIPConfig` value outside what the model supports; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class MammoCLIPConfig:
    """Everything needed to rebuild a :class:`MammoCLIP` (weights aside); JSON-serialisable.

    Image tower:
        image_backend: ``"timm"`` (:class:`ImageEncoder`) or ``"efficientnet_bn"``
            (:class:`EfficientNetBNImageEncoder`, the original's network).
        image_model: timm model name, or ``"efficientnet-b0"`` .. ``"efficientnet-b7"``.
        in_chans: input channels (1: grey mammograms; 3-channel stems are folded).
        image_size: ``(H, W)`` the model is meant to see (preprocessing reads it; the networks
            accept other sizes).
        image_drop_rate / image_drop_path_rate: dropout after pooling / stochastic depth;
            ``None`` keeps the backend's default (efficientnet_bn: the network's own values).
        image_weights: initial image weights used when built with ``init_towers=True``: ``None``,
            ``"efficientnet_lite0_imagenet"`` (packaged), ``"lukemelas_imagenet"`` (the paper's,
            GitHub download) or ``"timm"`` (timm hub weights).
        image_grad_checkpointing: recompute activations to save memory.
        image_normalization: the intensity normalisation the network expects, as
            ``NormalizeMammogramd`` arguments (``{"mode": "fixed", "mean": m, "std": s}`` or
            ``{"mode": "breast"}``, optionally ``"foreground"``). The single source: training,
            evaluation and inference configs, ``Predictor``, ``Explainer`` and the exported
            network read it. Validated here (unknown keys or mode, ``std <= 0`` are errors).
    Text tower:
        text_model: hub id or directory; ``None`` means the packaged MiniLM-L6 or, without it, a
            random BERT with the bundled vocabulary.
        text_config: Hugging Face config attributes to override (e.g. a tiny random model).
        text_pooling: ``"eos"`` (original), ``"cls"`` or ``"mean"``.
        text_max_length: longest tokenised report.
        text_grad_checkpointing: Hugging Face gradient checkpointing.
    Joint space:
        embed_dim, projection, projection_hidden_dim, projection_dropout: the heads.
        logit_scale_init: initial ``log(1/temperature)``; ``logit_scale_max`` caps ``exp(scale)``.
        logit_bias_init: ``None`` (CLIP losses), or the initial learnable logit bias of the SigLIP
            loss (the paper: -10, with ``logit_scale_init = log(10)``). The model then owns a
            ``logit_bias`` parameter, returned by ``forward``, so that the optimiser sees it, DDP
            all-reduces its gradient and checkpoints keep it.
    """

    image_backend: str = "timm"
    image_model: str = "tf_efficientnet_lite0"
    in_chans: int = 1
    image_size: tuple[int, int] = (512, 320)
    image_drop_rate: float | None = 0.2
    image_drop_path_rate: float | None = 0.2
    image_weights: str | None = "efficientnet_lite0_imagenet"
    image_grad_checkpointing: bool = False
    image_normalization: dict[str, Any] = field(default_factory=_original_normalization)
    text_model: str | None = None
    text_config: dict[str, Any] | None = None
    text_pooling: str = "mean"
    text_max_length: int = 64
    text_grad_checkpointing: bool = False
    embed_dim: int = 512
    projection: str = "linear"
    projection_hidden_dim: int | None = None
    projection_dropout: float = 0.0
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0
    logit_bias_init: float | None = None

    def __post_init__(self) -> None:
        """Check every value once, here, so a bad config fails before minutes of model building."""
        self._choice("image_backend", IMAGE_BACKENDS)
        self._choice("text_pooling", POOLING_MODES)
        self._choice("projection", PROJECTION_KINDS)
        self._choice("image_weights", IMAGE_WEIGHT_SOURCES)
        try:
            self.image_size = tuple(int(s) for s in self.image_size)  # JSON gives lists
        except (TypeError, ValueError):
            raise ConfigValueError("image_size", f"image_size must be (H, W), got {self.image_size!r}") from None
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigValueError("image_size", f"image_size must be (H, W) of positive sizes, got {self.image_size}")
        for name in ("in_chans", "embed_dim", "text_max_length"):
            if getattr(self, name) < 1:
                raise ConfigValueError(name, f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.projection_hidden_dim is not None and self.projection_hidden_dim < 1:
            raise ConfigValueError("projection_hidden_dim", "projection_hidden_dim must be at least 1 or null, got "
                                                            f"{self.projection_hidden_dim!r}")
        for name in ("image_drop_rate", "image_drop_path_rate", "projection_dropout"):
            rate = getattr(self, name)
            if rate is not None and not 0 <= rate < 1:
                raise ConfigValueError(name, f"{name} must be in [0, 1), got {rate!r}")
        if not math.isfinite(self.logit_scale_init):
            raise ConfigValueError("logit_scale_init", "logit_scale_init must be finite, got "
                                                       f"{self.logit_scale_init!r}")
        if not self.logit_scale_max > 0:
            raise ConfigValueError("logit_scale_max", f"logit_scale_max must be > 0, got {self.logit_scale_max!r}")
        if self.text_model is not None:
            self.text_model = os.fspath(self.text_model)
        self._check_normalization_and_bias()

    def _check_normalization_and_bias(self) -> None:
        """The normalisation dict is read by every preprocessing chain: a bad one must fail here."""
        try:
            self.image_normalization = NormalizeMammogramd.validate_config(self.image_normalization, where=None)
        except ValueError as err:
            raise ConfigValueError("image_normalization", str(err)) from None
        if self.logit_bias_init is not None:
            if isinstance(self.logit_bias_init, bool) or not math.isfinite(self.logit_bias_init):
                raise ConfigValueError("logit_bias_init", "logit_bias_init must be a finite number or null, "
                                                          f"got {self.logit_bias_init!r}")
            self.logit_bias_init = float(self.logit_bias_init)

    def _choice(self, name: str, choices: tuple[Any, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ConfigValueError(name, f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | os.PathLike | None = None) -> MammoCLIPConfig:
        """Inverse of :meth:`to_dict`; unknown keys and values of the wrong JSON type are errors.

        With ``source`` (the ``config.json`` read), every problem is an
        :class:`~mammoclip_monai.utils.InvalidInputError` naming the file and the key; without it, an
        unknown key is a ``TypeError`` and a bad value a ``ValueError`` (a typo must not pass silently).
        """
        def problem(key: str | None, reason: str, kind: type[Exception] = ValueError) -> Exception:
            if source is not None:
                return InvalidInputError(source, reason, where=f"key {key!r}" if key else None)
            return kind(f"{key}: {reason}" if key else reason)

        if not isinstance(data, Mapping):
            raise problem(None, f"expected a JSON object of MammoCLIPConfig fields, found {describe_value(data)}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in hints:
                raise problem(key, f"unknown MammoCLIPConfig key; valid keys: {names}", TypeError)
        for key, value in data.items():
            if not _json_type_ok(value, hints[key]):
                raise problem(key, f"expected {_describe_type(hints[key])}, found {describe_value(value)}")
        try:
            return cls(**data)
        except ConfigValueError as err:
            raise problem(err.field, str(err)) from None


def _json_type_ok(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a config field's annotation (``int`` is not ``bool``; a list fits a tuple)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_json_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(
            _json_type_ok(v, a) for v, a in zip(value, args))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _describe_type(hint: Any) -> str:
    """``float | None`` -> ``"a number or null"``: what a config key takes, in JSON words."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(arg) for arg in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        return f"a list of {len(args)} " + ("whole numbers" if all(a is int for a in args) else "values")
    words = {type(None): "null", bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             dict: "an object"}
    return words.get(origin if origin is dict else hint, str(hint))


def build_image_encoder(config: MammoCLIPConfig, init_towers: bool) -> nn.Module:
    """The configured image tower; timm hub weights are the only ones loaded here (by timm)."""
    if config.image_backend == "timm":
        kwargs = {}
        if config.image_drop_rate is not None:
            kwargs["drop_rate"] = config.image_drop_rate
        if config.image_drop_path_rate is not None:
            kwargs["drop_path_rate"] = config.image_drop_path_rate
        return ImageEncoder(config.image_model, in_chans=config.in_chans,
                            pretrained=init_towers and config.image_weights == "timm",
                            grad_checkpointing=config.image_grad_checkpointing, **kwargs)
    if init_towers and config.image_weights == "timm":
        raise ValueError("image_weights='timm' needs image_backend='timm'")
    return EfficientNetBNImageEncoder(config.image_model, in_chans=config.in_chans,
                                      drop_rate=config.image_drop_rate, drop_path_rate=config.image_drop_path_rate,
                                      grad_checkpointing=config.image_grad_checkpointing)


def _build_text_encoder(config: MammoCLIPConfig, init_towers: bool, text_source: str | None) -> TextEncoder:
    """The configured text tower.

    ``text_source`` (a saved model's ``text_encoder/`` directory) wins over ``config.text_model`` and
    is always built without weights: they come from ``model.safetensors``.
    """
    common = dict(pooling=config.text_pooling, max_length=config.text_max_length,
                  gradient_checkpointing=config.text_grad_checkpointing)
    overrides = dict(config.text_config or {})
    if text_source is not None:
        return TextEncoder(text_source, pretrained=False, config_overrides=overrides, **common)
    source = config.text_model if config.text_model is not None else default_text_model_path()
    if source is not None:
        return TextEncoder(source, pretrained=init_towers, config_overrides=overrides, **common)
    from transformers import AutoModel

    hf_config = fallback_text_config(**overrides)
    model = AutoModel.from_config(hf_config, add_pooling_layer=False)
    return TextEncoder(model=model, tokenizer=fallback_tokenizer(), **common)


class MammoCLIP(nn.Module):
    """Contrastive image-report model (Mammo-CLIP).

    Args:
        config: a :class:`MammoCLIPConfig` or its dict form.
        init_towers: initialise the towers from their own pretrained weights, as the config names
            them (``image_weights``: ImageNet; text: the weights of ``text_model``). ``False`` builds
            everything randomly (the architecture still comes from the text model's config). Trained
            MammoCLIP weights are loaded afterwards (:func:`~mammoclip_monai.networks.create_model`'s
            ``pretrained``), never here.
        text_source: directory with the text model's Hugging Face config and tokenizer, used
            instead of ``config.text_model`` (what :meth:`from_pretrained` passes).
        text_encoder: a ready :class:`TextEncoder` used as-is instead of building one (what the
            original-checkpoint importer passes when the BERT config is inferred from tensors).
    """

    def __init__(self, config: MammoCLIPConfig | dict[str, Any] | None = None, init_towers: bool = False,
                 text_source: str | os.PathLike | None = None, text_encoder: TextEncoder | None = None) -> None:
        super().__init__()
        if config is None:
            config = MammoCLIPConfig()
        elif isinstance(config, dict):
            config = MammoCLIPConfig.from_dict(config)
        self.config = config
        if text_encoder is None:  # first: a missing hub model should fail before minutes of image init
            text_encoder = _build_text_encoder(config, init_towers,
                                               None if text_source is None else os.fspath(text_source))
        self.image_encoder = build_image_encoder(config, init_towers)
        if init_towers:
            load_image_weights(self.image_encoder, config.image_weights)
        self.text_encoder = text_encoder
        self.image_projection = ProjectionHead(self.image_encoder.feature_dim, config.embed_dim, config.projection,
                                               config.projection_hidden_dim, config.projection_dropout)
        self.text_projection = ProjectionHead(self.text_encoder.hidden_size, config.embed_dim, config.projection,
                                              config.projection_hidden_dim, config.projection_dropout)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        if config.logit_bias_init is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init)))
            self._register_load_state_dict_pre_hook(self._keep_logit_bias_if_absent)

    # -- tokenizer --------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The text tower's Hugging Face tokenizer (``None`` if it was not available)."""
        return self.text_encoder.tokenizer

    def tokenize(self, texts: str | list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}`` for a batch of reports (truncated to ``text_max_length``)."""
        return self.text_encoder.tokenize(texts, max_length=max_length)

    # -- encoders ---------------------------------------------------------------------------------

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings ``(B, embed_dim)``, L2-normalised unless ``normalize=False``."""
        features = self.image_projection(self.image_encoder(image))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = True) -> torch.Tensor:
        """Report embeddings ``(B, embed_dim)``, L2-normalised unless ``normalize=False``."""
        features = self.text_projection(self.text_encoder(input_ids, attention_mask))
        return F.normalize(features, dim=-1) if normalize else features

    def image_feature_map(self, image: torch.Tensor) -> torch.Tensor:
        """The image tower's last feature map ``(B, C, h, w)`` (for FActOR / saliency)."""
        return self.image_encoder.forward_features(image)

    def get_logit_scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` capped at ``logit_scale_max``: what contrastive losses multiply by."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def _keep_logit_bias_if_absent(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """A checkpoint written before the SigLIP bias moved from the loss into the model has no
        ``logit_bias``: keep this model's (that bias was never given to an optimiser, so it still
        equals its initial value); every other key stays strict."""
        key = prefix + "logit_bias"
        if key not in state_dict:
            warnings.warn(f"the checkpoint has no {key!r} (written before the SigLIP bias moved into the model): "
                          f"keeping this model's, {float(self.logit_bias.detach()):g}", stacklevel=4)
            state_dict[key] = self.logit_bias.detach().clone()

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                image2: torch.Tensor | None = None, input_ids2: torch.Tensor | None = None,
                attention_mask2: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Normalised ``image_features``, ``text_features`` (``(B, embed_dim)``) and the scalar ``logit_scale``
        (and ``logit_bias`` when the model has one, for the SigLIP loss).

        A second view (``image2``) and a second text (``input_ids2``) are encoded in the same call
        (as ``image_features2`` / ``text_features2``): under DistributedDataParallel every tensor that
        needs gradients must come out of one forward of the wrapped module.
        """
        out = {
            "image_features": self.encode_image(image, normalize=True),
            "text_features": self.encode_text(input_ids, attention_mask, normalize=True),
            "logit_scale": self.get_logit_scale(),
        }
        if self.config.logit_bias_init is not None:
            out["logit_bias"] = self.logit_bias
        if image2 is not None:
            out["image_features2"] = self.encode_image(image2, normalize=True)
        if input_ids2 is not None:
            out["text_features2"] = self.encode_text(input_ids2, attention_mask2, normalize=True)
        return out

    # -- persistence ------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``text_encoder/`` (HF config + tokenizer).

        The text model's config and tokenizer are stored so that :meth:`from_pretrained` needs
        neither the original ``text_model`` path nor the hub. The weights and the config are written
        atomically (a killed save leaves the previous ones, never a truncated file).
        """
        from safetensors.torch import save_model

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_model(self, str(tmp), metadata={"format": "pt", "library": "mammoclip_monai"})
        atomic_write_text(json.dumps(self.config.to_dict(), indent=2) + "\n", directory / CONFIG_NAME)
        text_dir = directory / TEXT_DIR_NAME
        self.text_encoder.model.config.save_pretrained(str(text_dir))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(text_dir))
        else:
            warnings.warn("the model has no tokenizer; the saved directory will not tokenise text", stacklevel=2)
        return directory

    @staticmethod
    def read_config(directory: str | os.PathLike) -> MammoCLIPConfig:
        """The :class:`MammoCLIPConfig` of a saved directory (``config.json``), checked, without building."""
        config_path = Path(directory) / CONFIG_NAME
        return MammoCLIPConfig.from_dict(read_json_file(config_path, "a MammoCLIP config.json"), source=config_path)

    @classmethod
    def from_pretrained(cls, load_directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                        **config_overrides: Any) -> MammoCLIP:
        """Rebuild a model written by :meth:`save_pretrained`, offline, from safetensors only.

        Returns the model in eval mode (as Hugging Face does); call ``.train()`` to fine-tune.

        ``config_overrides`` change run-time settings such as ``image_grad_checkpointing``; changing
        shapes makes the strict weight load fail, which is the point.

        A directory that is not a saved model (no ``config.json`` or ``model.safetensors``, invalid
        JSON, unknown keys or mistyped values, weights that are not safetensors or do not fit the
        configured model) is an :class:`~mammoclip_monai.utils.InvalidInputError` naming the file and
        the first few missing / unexpected / mis-shaped keys.
        """
        directory = Path(load_directory)
        expected = f"a saved MammoCLIP directory ({CONFIG_NAME} + {WEIGHTS_NAME}, written by save_pretrained)"
        if not directory.is_dir():
            reason = "is a file" if directory.exists() else "no such directory"
            raise InvalidInputError(directory, f"{reason}; expected {expected}")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise InvalidInputError(directory, f"no {name} here; expected {expected}")
        config = cls.read_config(directory)
        if config_overrides:
            config = MammoCLIPConfig.from_dict({**config.to_dict(), **config_overrides})
        text_dir = directory / TEXT_DIR_NAME
        try:
            model = cls(config, init_towers=False, text_source=text_dir if text_dir.is_dir() else None)
        except (OSError, ValueError) as err:
            if isinstance(err, InvalidInputError) or not text_dir.is_dir():
                raise
            raise InvalidInputError(text_dir, "the text model's config or tokenizer cannot be loaded "
                                              f"({_first_line(err)})") from None
        load_safetensors(model, directory / WEIGHTS_NAME)
        return model.to(map_location).eval()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load_safetensors(model: nn.Module, path: Path) -> None:
    """Strictly load ``path`` into ``model``; a file that is not safetensors or does not fit is one clear error."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise InvalidInputError(path, f"not a safetensors weights file ({_first_line(err)}); expected the "
                                      f"{WEIGHTS_NAME} that save_pretrained writes") from None
    reference = model.state_dict()
    mis_shaped = [f"{key} {shapes[key]} vs {tuple(value.shape)}" for key, value in reference.items()
                  if key in shapes and shapes[key] != tuple(value.shape)]
    if mis_shaped:
        raise InvalidInputError(path, "the weights do not fit the model its config.json describes; "
                                + describe_mismatch([], [], mis_shaped))
    missing, unexpected = load_model(model, str(path), strict=False, device="cpu")
    if missing or unexpected:
        raise InvalidInputError(path, "the weights do not fit the model its config.json describes; "
                                + describe_mismatch(list(missing), list(unexpected), []))
