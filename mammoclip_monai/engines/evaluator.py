"""ContrastiveEvaluator: embeds images and texts, scores zero-shot prompts, reports the loss.

Prompt embeddings are computed once per run (at ``STARTED``), not per batch: the text tower is
frozen during evaluation, and a validation pass after each training epoch re-embeds them once with
the current weights. Each iteration outputs, per sample, the normalised embeddings, the zero-shot
class probabilities of every prompt set and, per prompt set, the label as an index into its classes
(-1 when unknown or not one of them), which the metrics in
:mod:`mammoclip_monai.engines.metrics` accumulate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from monai.utils.enums import CommonKeys as Keys

from ..text.prompts import PromptSet, embed_prompt_sets, load_prompt_sets, zero_shot_probabilities
from ..utils.errors import as_flag
from .trainer import model_inputs, move_to_device


def image_paths(batch: Mapping[str, Any], key: str = "image") -> list[str]:
    """The source file of each image in a collated batch (outputs name images by path, never by patient)."""
    image = batch.get(key)
    meta = getattr(image, "meta", None) or {}
    names = meta.get("filename_or_obj")
    if names is None:
        return [""] * (len(image) if image is not None else 0)
    return [str(n) for n in (names if isinstance(names, (list, tuple)) else [names])]


def class_indices(labels: Any, values: Sequence[int]) -> torch.Tensor:
    """Label values -> indices into a prompt set's classes; other values (unknown, -1) -> -1."""
    labels = torch.as_tensor(labels).reshape(-1).long()
    out = torch.full_like(labels, -1)
    for index, value in enumerate(values):
        out[labels == int(value)] = index
    return out


class ContrastiveEvaluator(SupervisedEvaluator):
    """Evaluates a MammoCLIP model on batches of images with texts (and labels).

    Args (beyond :class:`monai.engines.SupervisedEvaluator`'s):
        loss_function: optional contrastive loss reported per batch (``"loss"`` in the output).
        prompt_sets: zero-shot prompt sets (``{name: PromptSet}``), a prompt file path, or ``None``
            for the packaged prompts; ``zero_shot_tasks`` selects tasks from a file.
        zero_shot_scale: logit scale for zero-shot softmax (``None``: the model's own).
    """

    def __init__(self, device: str | torch.device, val_data_loader: Iterable, network: torch.nn.Module,
                 loss_function: Callable | None = None, prompt_sets: Mapping[str, PromptSet] | str | None = None,
                 zero_shot_tasks: Sequence[str] | None = None, zero_shot_scale: float | None = None,
                 epoch_length: int | None = None, non_blocking: bool = False, key_val_metric: dict | None = None,
                 additional_metrics: dict | None = None, val_handlers: Sequence | None = None, amp: bool = False,
                 amp_dtype: torch.dtype = torch.bfloat16, channels_last: bool = False) -> None:
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, epoch_length=epoch_length,
                         non_blocking=non_blocking, key_val_metric=key_val_metric,
                         additional_metrics=additional_metrics, val_handlers=val_handlers, amp=False,
                         decollate=False)
        if prompt_sets is None or isinstance(prompt_sets, str):
            prompt_sets = load_prompt_sets(prompt_sets, tasks=zero_shot_tasks)
        self.prompt_sets = dict(prompt_sets)
        self.loss_function = loss_function
        self.zero_shot_scale = zero_shot_scale
        self.use_amp = amp
        self.amp_dtype = amp_dtype
        self.channels_last = as_flag(channels_last, "channels_last")
        self.class_embeddings: dict[str, torch.Tensor] = {}
        self.add_event_handler(Events.STARTED, self._embed_prompts)

    def _embed_prompts(self, engine: ContrastiveEvaluator) -> None:
        self.class_embeddings = embed_prompt_sets(self.network, self.prompt_sets, device=self.state.device)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        paths = image_paths(batchdata)
        batch = move_to_device(batchdata, engine.state.device, engine.non_blocking)
        inputs = model_inputs(batch, self.channels_last)
        engine.network.eval()
        device_type = engine.state.device.type if isinstance(engine.state.device, torch.device) else "cpu"
        with torch.no_grad(), torch.autocast(device_type, dtype=self.amp_dtype, enabled=self.use_amp):
            out = engine.network(**inputs)
            output: dict[str, Any] = {
                Keys.IMAGE: inputs["image"],
                "image_features": out["image_features"].float(),
                "text_features": out["text_features"].float(),
                "input_ids": inputs["input_ids"],
                "logit_scale": out["logit_scale"].float(),
            }
            if self.loss_function is not None:
                output[Keys.LOSS] = self.loss_function(out["image_features"].float(), out["text_features"].float(),
                                                       out["logit_scale"].float()).detach()
        scale = self.zero_shot_scale if self.zero_shot_scale is not None else float(out["logit_scale"])
        output["zero_shot"] = {name: zero_shot_probabilities(output["image_features"], emb, scale)
                               for name, emb in self.class_embeddings.items()}
        output["image_path"] = paths
        output["labels"] = {name: class_indices(batch[ps.label_key], ps.values)
                            for name, ps in self.prompt_sets.items() if ps.label_key in batch}
        engine.state.output = output
        return output
