"""ContrastiveTrainer: MONAI's SupervisedTrainer with an image-text iteration.

One iteration moves the batch to the device, runs the (possibly DDP-wrapped) MammoCLIP forward
once for every image and text of the batch that the loss consumes, builds label-aware targets if
asked, computes the contrastive loss and steps the optimiser with AMP, gradient clipping and
gradient accumulation. Everything else (handlers, events, metrics, checkpoints) is stock MONAI/Ignite.

Which inputs the network sees follows the loss's signature: a second view (``image2``) or text
(``input_ids2``) is encoded only for a loss that takes ``image_features2`` / ``text_features2``
(the multi-view loss), so CLIP and SigLIP train on batches that carry them too; the model's
``logit_bias`` goes to a loss that takes one (SigLIP).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim import Optimizer

from ..losses import label_aware_targets
from ..utils.errors import as_flag

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
LABEL_AWARE_MODES = ("none", "labels", "text", "labels+text")
MODEL_INPUT_KEYS = ("image", "input_ids", "attention_mask", "image2", "input_ids2", "attention_mask2")
SECOND_INPUTS = {"image_features2": ("image2",), "text_features2": ("input_ids2", "attention_mask2")}
"""Loss argument -> the batch keys the network encodes into it."""
OPTIONAL_LOSS_ARGS = ("image_features2", "text_features2", "logit_bias")
"""Network outputs passed to the loss only when its signature names them."""


def loss_arguments(loss_function: Callable) -> frozenset[str] | None:
    """The keyword names ``loss_function`` takes (its ``forward``'s for a module); ``None`` when it takes
    ``**kwargs`` or has no inspectable signature, i.e. anything may be passed."""
    target = loss_function.forward if isinstance(loss_function, torch.nn.Module) else loss_function
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters
                     if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def move_to_device(batch: Mapping[str, Any], device: torch.device, non_blocking: bool = False) -> dict[str, Any]:
    """Tensors to ``device`` (MetaTensors become plain tensors: the network needs no metadata)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.as_tensor() if hasattr(value, "as_tensor") else value
            out[key] = value.to(device, non_blocking=non_blocking)
        else:
            out[key] = value
    return out


def model_inputs(batch: Mapping[str, Any], channels_last: bool = False,
                 skip: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The keyword arguments of ``MammoCLIP.forward`` present in a collated batch, less ``skip``."""
    inputs = {}
    skip = set(skip)
    for key in MODEL_INPUT_KEYS:
        if key in batch and key not in skip:
            value = batch[key]
            if channels_last and key.startswith("image") and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            inputs[key] = value
    missing = [k for k in ("image", "input_ids") if k not in inputs]
    if missing:
        raise KeyError(f"batch has no {missing}: the preprocessing must produce image and tokenised text")
    return inputs


def contrastive_targets(batch: Mapping[str, Any], mode: str, label_keys: Sequence[str],
                        local_rows: bool = True) -> torch.Tensor | None:
    """Label-aware target matrix for the batch (``None`` for plain one-to-one targets).

    Under DDP the columns span the gathered batch; ``local_rows`` must match the loss's
    ``local_loss`` (this rank's rows, or all of them).
    """
    if mode == "none":
        return None
    labels = None
    if "labels" in mode:
        if not label_keys:
            raise ValueError("label-aware targets from labels need label_keys")
        missing = [k for k in label_keys if k not in batch]
        if missing:
            raise KeyError(f"batch has no label column(s) {missing} for label-aware targets")
        labels = torch.stack([torch.as_tensor(batch[k]).float().reshape(-1) for k in label_keys], dim=1)
        labels = labels.to(batch["input_ids"].device)
    text_ids = batch["input_ids"] if "text" in mode else None
    return label_aware_targets(labels=labels, text_ids=text_ids, mode="exact", local_rows=local_rows)


class ContrastiveTrainer(SupervisedTrainer):
    """Trains a MammoCLIP model with a contrastive loss.

    Args (beyond :class:`monai.engines.SupervisedTrainer`'s):
        loss_function: a loss from :mod:`mammoclip_monai.losses` called as
            ``loss(image_features, text_features, logit_scale, targets=..., [image_features2, text_features2,
            logit_bias])``; the bracketed ones only if its signature names them (see the module docstring).
        label_aware: ``"none"`` (one-to-one targets), ``"labels"`` (samples with the same values of
            ``label_keys`` are positives), ``"text"`` (identical tokenised texts are positives) or
            ``"labels+text"``.
        amp: autocast the forward pass; ``amp_dtype`` ``"float16"`` (with a gradient scaler, CUDA)
            or ``"bfloat16"`` (no scaler; also works on CPU).
        grad_clip_norm: clip the global gradient norm (after unscaling) when set.
        channels_last: feed images in channels-last memory format (faster convolutions).
        batch_transform: called on the batch once it is on the device, before the forward pass
            (e.g. :class:`~mammoclip_monai.data.batch_augment.BatchMammoAugment`: augmentation of the
            whole batch on the GPU instead of per item in the loader); ``None`` for none.
        inferer: accepted for MONAI bundle property completeness (``train#inferer``); the
            contrastive iteration calls the network directly.
    """

    def __init__(self, device: str | torch.device, max_epochs: int, train_data_loader: Iterable,
                 network: torch.nn.Module, optimizer: Optimizer, loss_function: Callable,
                 epoch_length: int | None = None, non_blocking: bool = False, label_aware: str = "none",
                 label_keys: Sequence[str] = (), amp: bool = False, amp_dtype: str = "float16",
                 grad_clip_norm: float | None = None, accumulation_steps: int = 1, channels_last: bool = False,
                 train_handlers: Sequence | None = None, key_train_metric: dict | None = None,
                 additional_metrics: dict | None = None, iteration_update: Callable | None = None,
                 inferer: Any = None, batch_transform: Callable[[dict], dict] | None = None) -> None:
        if label_aware not in LABEL_AWARE_MODES:
            raise ValueError(f"label_aware must be one of {LABEL_AWARE_MODES}, got {label_aware!r}")
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, got {amp_dtype!r}")
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=loss_function, epoch_length=epoch_length,
                         non_blocking=non_blocking, iteration_update=iteration_update, inferer=inferer,
                         train_handlers=train_handlers,
                         key_train_metric=key_train_metric, additional_metrics=additional_metrics, amp=False,
                         decollate=False, optim_set_to_none=True, accumulation_steps=accumulation_steps)
        self.label_aware = label_aware
        self.label_keys = tuple(label_keys)
        self.use_amp = as_flag(amp, "amp")
        self.amp_dtype = AMP_DTYPES[amp_dtype]
        device_type = torch.device(device).type
        self.grad_scaler = torch.amp.GradScaler(device_type, enabled=self.use_amp and amp_dtype == "float16"
                                                and device_type == "cuda")
        self.grad_clip_norm = grad_clip_norm
        self.batch_transform = batch_transform
        self.channels_last = channels_last = as_flag(channels_last, "channels_last")
        if channels_last:
            network.to(memory_format=torch.channels_last)
        accepted = loss_arguments(loss_function)
        self.loss_takes = (lambda name: True) if accepted is None else accepted.__contains__
        self.needs_logit_bias = accepted is not None and "logit_bias" in accepted
        self.skipped_inputs = tuple(key for arg, keys in SECOND_INPUTS.items() if not self.loss_takes(arg)
                                    for key in keys)
        self._told_skipped = False
        loss_name = type(loss_function).__name__
        if label_aware != "none" and not self.loss_takes("targets"):
            raise ValueError(f"label_aware={label_aware!r} needs a loss that takes targets; {loss_name} does not")
        config = getattr(getattr(network, "module", network), "config", None)
        bias_init = getattr(config, "logit_bias_init", 0.0)
        if self.needs_logit_bias and bias_init is None:
            raise ValueError(f"{loss_name} needs the model's learnable logit_bias: build the model with "
                             "logit_bias_init (e.g. -10, the SigLIP paper's): "
                             "create_model(..., logit_bias_init=-10.0); "
                             "in the bundle, choose the loss with --loss_name siglip")
        if bias_init is not None and accepted is not None and not self.needs_logit_bias and config is not None:
            warnings.warn(f"the model has a logit_bias but {loss_name} does not take one: it will not train "
                          "(and DDP, which expects every parameter to get a gradient, will fail)", stacklevel=2)

    def _step_flags(self, engine: SupervisedTrainer) -> tuple[bool, bool]:
        """(zero the gradients first, step the optimiser after) for gradient accumulation."""
        acc = engine.accumulation_steps
        if acc == 1:
            return True, True
        length = engine.state.epoch_length
        local = (engine.state.iteration - 1) % length if length else engine.state.iteration - 1
        last_of_epoch = length is not None and local + 1 == length
        return local % acc == 0, (local + 1) % acc == 0 or last_of_epoch

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = move_to_device(batchdata, engine.state.device, engine.non_blocking)
        if self.batch_transform is not None:
            batch = self.batch_transform(batch)
        inputs = model_inputs(batch, self.channels_last, skip=self.skipped_inputs)
        if not self._told_skipped:
            unused = [key for key in self.skipped_inputs if key in batch]
            if unused:
                engine.logger.info("%s takes no second view or text: %s not encoded",
                                   type(engine.loss_function).__name__, ", ".join(unused))
            self._told_skipped = True
        engine.state.output = {Keys.IMAGE: inputs["image"]}
        zero_grad, step = self._step_flags(engine)
        engine.network.train()
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=True)
        device_type = engine.state.device.type if isinstance(engine.state.device, torch.device) else "cpu"
        with torch.autocast(device_type, dtype=self.amp_dtype, enabled=self.use_amp):
            out = engine.network(**inputs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            extra = {k: out[k] for k in OPTIONAL_LOSS_ARGS if k in out and self.loss_takes(k)}
            if self.needs_logit_bias and "logit_bias" not in out:
                raise KeyError(f"{type(engine.loss_function).__name__} needs a logit_bias the network does not "
                               "return: build the model with logit_bias_init (MammoCLIPConfig)")
            if self.loss_takes("targets"):
                extra["targets"] = contrastive_targets(batch, self.label_aware, self.label_keys,
                                                       local_rows=getattr(engine.loss_function, "local_loss", True))
            loss = engine.loss_function(out["image_features"], out["text_features"], out["logit_scale"], **extra)
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.state.output["logit_scale"] = out["logit_scale"].detach()
        if "logit_bias" in out:
            engine.state.output["logit_bias"] = out["logit_bias"].detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        acc = engine.accumulation_steps
        self.grad_scaler.scale(loss / acc if acc > 1 else loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if step:
            if self.grad_clip_norm is not None:
                self.grad_scaler.unscale_(engine.optimizer)
                params = [p for group in engine.optimizer.param_groups for p in group["params"]]
                norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)
                engine.state.output["grad_norm"] = norm.detach()
            self.grad_scaler.step(engine.optimizer)
            self.grad_scaler.update()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def state_dict(self) -> dict:
        """Ignite engine state plus the gradient scaler (for exact resume with AMP)."""
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        state = dict(state_dict)
        scaler = state.pop("grad_scaler", None)
        super().load_state_dict(state)
        if scaler:
            self.grad_scaler.load_state_dict(scaler)
