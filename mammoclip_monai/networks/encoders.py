"""Image and text towers of MammoCLIP.

Three encoders share one small interface so that :class:`~mammoclip_monai.networks.mammoclip.MammoCLIP`
does not care which backend it holds:

* :class:`ImageEncoder`: any `timm <https://github.com/huggingface/pytorch-image-models>`_ backbone.
  The default for new training (gradient checkpointing, ``channels_last``, many architectures).
* :class:`EfficientNetBNImageEncoder`: MONAI's ``EfficientNetBN``, a port of the "lukemelas"
  EfficientNet the original Mammo-CLIP was trained with. Its static TF "same" padding is computed
  for the network's native size (456 for B5, 260 for B2) and then applied unchanged at any input
  size; only this backend reproduces the released checkpoints exactly.
* :class:`TextEncoder`: any Hugging Face ``AutoModel`` plus its tokenizer, pooled to one vector.

Image encoders expose ``forward(x) -> (B, C)`` (pooled, after dropout), ``forward_features(x) ->
(B, C, h, w)`` (the last feature map, used by FActOR), ``forward_stages(x, strides)`` (one map per stride,
for a detector's feature pyramid) and ``feature_dim``. Mammograms are grey:
encoders take ``in_chans=1`` and 3-channel (ImageNet) stems are *folded* by summing over their
input channels, which computes exactly what a grey image copied to 3 channels would give (the
convolution is linear and the zero padding is the same in every channel).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "ImageEncoder",
    "EfficientNetBNImageEncoder",
    "TextEncoder",
    "fold_stem_weight",
    "pool_hidden_states",
    "POOLING_MODES",
]

POOLING_MODES = ("cls", "eos", "mean")


# ----------------------------------------------------------------------------- helpers


def fold_stem_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a first-convolution weight ``(O, I, kh, kw)`` to ``in_chans`` input channels.

    ``in_chans == I`` returns the weight unchanged. ``in_chans == 1`` sums over the input channels:
    ``conv(repeat(x, 3), W) == conv(x, W.sum(1))`` exactly (up to float rounding), so a grey
    mammogram through a folded stem gives what the original's grey-copied-to-3 input gave, at a
    third of the stem's cost. Any other change of channel count has no exact equivalent and is
    refused rather than guessed.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D convolution weight, got shape {tuple(weight.shape)}")
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ValueError(
        f"cannot adapt a stem with {weight.shape[1]} input channels to in_chans={in_chans}: "
        "only identical channel counts or folding to 1 channel are exact"
    )


def _check_channels(x: torch.Tensor, in_chans: int) -> None:
    """Fail early with a readable message instead of a convolution shape error deep inside.

    Written to compile under TorchScript (the exported image tower keeps this check).
    """
    if x.dim() != 4 or x.shape[1] != in_chans:
        hint = ""
        if in_chans == 1:
            hint = "; mammograms are single-channel: feed (B, 1, H, W) and let the folded stem do the rest"
        raise ValueError("expected an image batch of shape (B, " + str(in_chans) + ", H, W), got "
                         + str(list(x.shape)) + hint)


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Reduce token states ``(B, L, D)`` to one vector per sequence ``(B, D)``.

    * ``"cls"``: the first position.
    * ``"eos"``: the last position whose mask is 1 (``[SEP]`` for BERT), as the original Mammo-CLIP
      does. Found as the arg-max of ``position * mask`` so it is vectorised and also right for
      left-padded batches (where ``mask.sum() - 1`` would be wrong).
    * ``"mean"``: the average over positions whose mask is 1; padding never contributes.
    """
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.device)
    if pooling == "eos":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * (mask > 0)).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        weights = (mask > 0).to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")


# ----------------------------------------------------------------------------- timm


class ImageEncoder(nn.Module):
    """A timm backbone that returns pooled features (no classifier).

    Args:
        model_name: any ``timm.create_model`` name, optionally with a pretrained tag
            (``"tf_efficientnet_b5.aa_in1k"``).
        in_chans: input channels (1 for mammograms).
        drop_rate: dropout after global pooling (timm's ``drop_rate``; the original used 0.4 for B5).
        drop_path_rate: stochastic depth (the "drop connect" of EfficientNet, 0.2 in the original).
        pretrained: load timm's pretrained weights (downloads from the Hugging Face hub unless
            cached); timm folds the stem to ``in_chans`` itself. Offline, load weights from a file
            instead (see :mod:`mammoclip_monai.networks.weights`).
        grad_checkpointing: trade compute for memory at full mammogram resolution.
        **timm_kwargs: passed to ``timm.create_model``.
    """

    __jit_unused_properties__ = ["stem"]  # TorchScript export compiles the forward, not this helper

    def __init__(self, model_name: str = "tf_efficientnet_lite0", in_chans: int = 1, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, pretrained: bool = False, grad_checkpointing: bool = False,
                 **timm_kwargs: Any) -> None:
        super().__init__()
        import timm

        self.model_name = model_name
        self.in_chans = int(in_chans)
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, in_chans=in_chans,
                                           drop_rate=drop_rate, drop_path_rate=drop_path_rate, **timm_kwargs)
        except OSError as err:  # hub, HTTP and socket errors all derive from OSError; name the fix
            if not pretrained:
                raise
            raise OSError(
                f"could not download timm's pretrained weights for {model_name!r} ({type(err).__name__}: {err}). "
                "They come from the Hugging Face hub: connect once to fill the cache, or create the model "
                "with pretrained=False and load weights from a local file."
            ) from err
        self.feature_dim = int(self.model.num_features)
        if grad_checkpointing:
            self.set_grad_checkpointing(True)

    @property
    def stem(self) -> nn.Conv2d:
        """The first convolution (the one whose weights are folded for 1-channel input)."""
        return self.model.get_submodule(self.model.pretrained_cfg.get("first_conv", "conv_stem"))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (timm's own implementation)."""
        self.model.set_grad_checkpointing(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map ``(B, C, h, w)`` before pooling (for FActOR and other maps)."""
        _check_channels(x, self.in_chans)
        return self.model.forward_features(x)

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Global average pooling and dropout of a feature map from :meth:`forward_features`."""
        return self.model.forward_head(feature_map)

    def stage_channels(self, strides: Sequence[int] = (8, 16, 32)) -> list[int]:
        """Channels of the last stage output at each of ``strides`` (the input to a feature pyramid)."""
        return [self.model.feature_info[i]["num_chs"] for i in self._stage_indices(strides)]

    def forward_stages(self, x: torch.Tensor, strides: Sequence[int] = (8, 16, 32)) -> list[torch.Tensor]:
        """The last feature map of the stages at each of ``strides`` (timm's ``forward_intermediates``)."""
        _check_channels(x, self.in_chans)
        return self.model.forward_intermediates(x, indices=self._stage_indices(strides), intermediates_only=True)

    def early_layers(self, max_stride: int) -> list[nn.Module]:
        """The stem and the stages whose output stride is at most ``max_stride`` (what a detector may freeze).

        Knows the EfficientNet / MobileNet family of timm (``conv_stem``, ``bn1``, ``blocks``).
        """
        if max_stride < 2:
            return []
        if not all(hasattr(self.model, name) for name in ("conv_stem", "bn1", "blocks")):
            raise ValueError(f"{self.model_name}: early_layers knows timm's EfficientNet-style models only")
        last = max((int(info["module"].split(".")[1]) for info in self.model.feature_info
                    if info["reduction"] <= max_stride and info["module"].startswith("blocks.")), default=-1)
        return [self.model.conv_stem, self.model.bn1, *list(self.model.blocks)[: last + 1]]

    def _stage_indices(self, strides: Sequence[int]) -> list[int]:
        reductions = [info["reduction"] for info in self.model.feature_info]
        missing = [s for s in strides if s not in reductions]
        if missing:
            raise ValueError(f"{self.model_name} has no stage at stride(s) {missing}; its strides are {reductions}")
        return [max(i for i, r in enumerate(reductions) if r == s) for s in strides]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)`` (after the dropout, as in the original)."""
        return self.pool(self.forward_features(x))


# ----------------------------------------------------------------------------- MONAI EfficientNetBN

_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(.+)$")
_MONAI_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\d+)\.(.+)$")


class EfficientNetBNImageEncoder(nn.Module):
    """MONAI ``EfficientNetBN`` ("efficientnet-b0" .. "b7") as a feature extractor.

    This is the backend that reproduces the original Mammo-CLIP image tower (the lukemelas port):
    static TF "same" padding computed for the model's native size, BN eps 1e-3 / momentum 0.01,
    swish, global average pooling and dropout, no classifier. ``drop_rate`` / ``drop_path_rate``
    default to the network's own values (B5: 0.4 / 0.2, B2: 0.3 / 0.2), as in the original.

    The MONAI classifier ``_fc`` is replaced by an identity so that the state dict holds only what
    the forward uses.
    """

    def __init__(self, model_name: str = "efficientnet-b5", in_chans: int = 1, drop_rate: float | None = None,
                 drop_path_rate: float | None = None, grad_checkpointing: bool = False) -> None:
        super().__init__()
        from monai.networks.nets import EfficientNetBN

        self.model_name = model_name
        self.in_chans = int(in_chans)
        self.model = EfficientNetBN(model_name, pretrained=False, spatial_dims=2, in_channels=in_chans, num_classes=1)
        self.model._fc = nn.Identity()
        if drop_rate is not None:
            self.model._dropout.p = float(drop_rate)
        if drop_path_rate is not None:
            self._set_drop_path_rate(float(drop_path_rate))
        self.feature_dim = int(self.model._conv_head.out_channels)
        self.grad_checkpointing = bool(grad_checkpointing)

    def _set_drop_path_rate(self, rate: float) -> None:
        """Rescale every block's drop-connect rate as the constructor does: ``rate * index / n_blocks``."""
        blocks = [block for stage in self.model._blocks for block in stage]
        for index, block in enumerate(blocks):
            block.drop_connect_rate = rate * index / len(blocks)

    @property
    def stem(self) -> nn.Conv2d:
        """The first convolution (the one whose weights are folded for 1-channel input)."""
        return self.model._conv_stem

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass (saves memory at 1520 x 912).

        As with timm's checkpointing, the recomputation runs BatchNorm in train mode a second time,
        so running statistics see each batch twice (with momentum 0.01 this barely matters).
        """
        self.grad_checkpointing = bool(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map ``(B, C, h, w)``: stem, MBConv stages, head convolution, BN, swish."""
        _check_channels(x, self.in_chans)
        net = self.model
        x = net._swish(net._bn0(net._conv_stem(net._conv_stem_padding(x))))
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for stage in net._blocks:
            x = checkpoint(stage, x, use_reentrant=False) if use_checkpoint else stage(x)
        return net._swish(net._bn1(net._conv_head(net._conv_head_padding(x))))

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Global average pooling, flatten and dropout (the original's order)."""
        return self.model._dropout(self.model._avg_pooling(feature_map).flatten(start_dim=1))

    def _stage_strides(self) -> list[int]:
        stride, out = 2, []  # the stem halves the image
        for stage in self.model._blocks:
            stride *= int(stage[0]._depthwise_conv.stride[0])
            out.append(stride)
        return out

    def _stage_indices(self, strides: Sequence[int]) -> list[int]:
        reductions = self._stage_strides()
        missing = [s for s in strides if s not in reductions]
        if missing:
            raise ValueError(f"{self.model_name} has no stage at stride(s) {missing}; its strides are {reductions}")
        return [max(i for i, r in enumerate(reductions) if r == s) for s in strides]

    def stage_channels(self, strides: Sequence[int] = (8, 16, 32)) -> list[int]:
        """Channels of the last stage output at each of ``strides`` (the input to a feature pyramid)."""
        return [int(self.model._blocks[i][-1]._project_conv.out_channels) for i in self._stage_indices(strides)]

    def early_layers(self, max_stride: int) -> list[nn.Module]:
        """The stem and the stages whose output stride is at most ``max_stride`` (what a detector may freeze)."""
        if max_stride < 2:
            return []
        stages = [stage for stage, stride in zip(self.model._blocks, self._stage_strides(), strict=True)
                  if stride <= max_stride]
        return [self.model._conv_stem, self.model._bn0, *stages]

    def forward_stages(self, x: torch.Tensor, strides: Sequence[int] = (8, 16, 32)) -> list[torch.Tensor]:
        """The last feature map of the MBConv stages at each of ``strides`` (before the head convolution)."""
        _check_channels(x, self.in_chans)
        net, wanted = self.model, set(self._stage_indices(strides))
        x = net._swish(net._bn0(net._conv_stem(net._conv_stem_padding(x))))
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        outputs = {}
        for index, stage in enumerate(net._blocks):
            x = checkpoint(stage, x, use_reentrant=False) if use_checkpoint else stage(x)
            if index in wanted:
                outputs[index] = x
            if len(outputs) == len(wanted):
                break
        return [outputs[i] for i in self._stage_indices(strides)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)``."""
        return self.pool(self.forward_features(x))

    # -- lukemelas names ------------------------------------------------------------------------

    def lukemelas_key_map(self) -> dict[str, str]:
        """Map every key of this encoder's ``model`` state dict to its lukemelas name.

        MONAI nests blocks by stage (``_blocks.<stage>.<global index>.*``) where lukemelas keeps a
        flat list (``_blocks.<global index>.*``); every other name is shared.
        """
        mapping = {}
        for key in self.model.state_dict():
            match = _MONAI_BLOCK_KEY.match(key)
            mapping[key] = f"_blocks.{match.group(2)}.{match.group(3)}" if match else key
        return mapping

    def load_lukemelas_state_dict(self, state_dict: Mapping[str, torch.Tensor],
                                  ignore: Sequence[str] = ("_fc.",)) -> list[str]:
        """Load a lukemelas ``EfficientNet`` state dict (3- or ``in_chans``-channel stem).

        Keys starting with a prefix in ``ignore`` (the unused classifier by default) are dropped and
        returned; anything else that does not fit is an error listing the keys, never skipped.
        """
        dropped = sorted(k for k in state_dict if any(k.startswith(p) for p in ignore))
        source = {k: v for k, v in state_dict.items() if k not in set(dropped)}
        to_lukemelas = self.lukemelas_key_map()
        expected = set(to_lukemelas.values())
        missing = sorted(expected - set(source))
        unexpected = sorted(set(source) - expected)
        if missing or unexpected:
            raise KeyError(f"lukemelas state dict does not match {self.model_name}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        target = self.model.state_dict()
        converted, mismatched = {}, []
        for key, name in to_lukemelas.items():
            value = source[name]
            if key == "_conv_stem.weight":
                value = fold_stem_weight(value, self.in_chans)
            if tuple(value.shape) != tuple(target[key].shape):
                mismatched.append(f"{name}: {tuple(value.shape)} vs {tuple(target[key].shape)}")
            converted[key] = value
        if mismatched:
            raise ValueError(f"shape mismatch loading {self.model_name}: {mismatched}")
        self.model.load_state_dict(converted, strict=True)
        return dropped


# ----------------------------------------------------------------------------- text


def _is_local(name_or_path: str | os.PathLike) -> bool:
    """A directory, or something that is clearly meant as a path (so we never ask the hub for it)."""
    text = str(name_or_path)
    return (Path(text).expanduser().is_dir() or text.startswith((".", "/", "~")) or "\\" in text
            or text.count("/") > 1)


@contextlib.contextmanager
def _quiet_transformers():
    """Transformers' logging at error level for the duration (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _pooling_layer_kwargs(config: Any) -> dict[str, Any]:
    """``add_pooling_layer=False`` when the architecture takes it.

    BERT-like models carry a pooler (dense + tanh on ``[CLS]``) that cls/eos/mean pooling never
    uses; leaving it in gives parameters without gradients (DDP then needs
    ``find_unused_parameters``) and state-dict keys that mean nothing here.
    """
    from transformers import AutoModel

    try:
        model_class = AutoModel._model_mapping[type(config)]
    except KeyError:
        return {}
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


class TextEncoder(nn.Module):
    """A Hugging Face encoder and its tokenizer, pooled to one vector per report.

    Args:
        name_or_path: hub id (``"emilyalsentzer/Bio_ClinicalBERT"``) or local directory (loaded with
            ``local_files_only=True``). ``None`` requires ``model``.
        pooling: ``"eos"`` (original Mammo-CLIP: the last non-padding token), ``"cls"`` or ``"mean"``.
        max_length: longest token sequence :meth:`tokenize` produces (256 in the original).
        pretrained: load the weights; ``False`` builds the architecture from its config with random
            weights (tests, or when weights arrive from a checkpoint anyway).
        gradient_checkpointing: enable Hugging Face gradient checkpointing.
        config_overrides: attributes changed on the Hugging Face config before building
            (``{"num_hidden_layers": 2}`` for a tiny test model).
        model: an already built ``PreTrainedModel`` (instead of ``name_or_path``).
        tokenizer: its tokenizer; ``None`` means token ids must be produced elsewhere.
    """

    def __init__(self, name_or_path: str | os.PathLike | None = None, pooling: str = "eos", max_length: int = 256,
                 pretrained: bool = True, gradient_checkpointing: bool = False,
                 config_overrides: Mapping[str, Any] | None = None, model: nn.Module | None = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if (model is None) == (name_or_path is None):
            raise ValueError("give exactly one of name_or_path or model")
        if model is None:
            model, loaded_tokenizer = self._load(str(name_or_path), pretrained, dict(config_overrides or {}))
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = int(max_length)
        self.name_or_path = None if name_or_path is None else str(name_or_path)
        if gradient_checkpointing:
            self.set_grad_checkpointing(True)

    @staticmethod
    def _load(name_or_path: str, pretrained: bool, overrides: dict[str, Any]) -> tuple[nn.Module, Any]:
        """Config, model and tokenizer from a directory (offline) or a hub id, with a clear error offline."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        local = _is_local(name_or_path)
        if local:
            name_or_path = str(Path(name_or_path).expanduser())
            if not Path(name_or_path).is_dir():
                raise FileNotFoundError(f"text model directory {name_or_path!r} does not exist")
        try:
            config = AutoConfig.from_pretrained(name_or_path, local_files_only=local, **overrides)
            extra = _pooling_layer_kwargs(config)
            if pretrained:
                with _quiet_transformers():  # its load report lists the pooler weights dropped on purpose
                    model = AutoModel.from_pretrained(name_or_path, config=config, local_files_only=local, **extra)
            else:
                model = AutoModel.from_config(config, **extra)
        except OSError as err:
            if local:
                raise
            raise OSError(
                f"could not load the text model {name_or_path!r} from the Hugging Face hub ({err}). Offline, "
                f"download it once elsewhere (e.g. `huggingface-cli download {name_or_path}`) and pass its local "
                "directory as text_model=..."
            ) from err
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
        except (OSError, ValueError, TypeError) as err:
            if not local:
                raise OSError(f"could not load the tokenizer of {name_or_path!r} from the hub ({err}); "
                              "pass a local directory as text_model=...") from err
            warnings.warn(f"no usable tokenizer in {name_or_path!r} ({err}); text must be tokenised elsewhere",
                          stacklevel=3)
            tokenizer = None
        return model, tokenizer

    @property
    def hidden_size(self) -> int:
        """Width of the pooled output (768 for Bio_ClinicalBERT, 384 for MiniLM-L6)."""
        return int(self.model.config.hidden_size)

    @property
    def config(self) -> Any:
        """The Hugging Face config of the wrapped model."""
        return self.model.config

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Toggle Hugging Face gradient checkpointing (non-reentrant, so frozen inputs are fine)."""
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            warnings.warn(f"{type(self.model).__name__} does not support gradient checkpointing", stacklevel=2)
            return
        # transformers >= 5.x renamed the API ("activation checkpointing"); older versions have the old one
        if enable and hasattr(self.model, "activation_checkpointing_enable"):
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(self.model, "activation_checkpointing_disable"):
            self.model.activation_checkpointing_disable()
        else:
            self.model.gradient_checkpointing_disable()

    @property
    def grad_checkpointing(self) -> bool:
        """Whether any layer of the wrapped model recomputes its activations."""
        return any(getattr(m, "gradient_checkpointing", False) is True for m in self.model.modules())

    def tokenize(self, texts: str | Sequence[str], max_length: int | None = None,
                 padding: bool | str = "longest") -> dict[str, torch.Tensor]:
        """Token ids and attention mask for a batch of texts, truncated to ``max_length``."""
        if self.tokenizer is None:
            raise RuntimeError("this text encoder has no tokenizer; load one with transformers.AutoTokenizer "
                               "and assign it to .tokenizer, or pass text_model=<directory with tokenizer files>")
        if isinstance(texts, str):
            texts = [texts]
        encoded = self.tokenizer(list(texts), padding=padding, truncation=True,
                                 max_length=int(max_length or self.max_length), return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled hidden state ``(B, hidden_size)`` of the last layer."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_hidden_states(hidden, attention_mask, self.pooling)
