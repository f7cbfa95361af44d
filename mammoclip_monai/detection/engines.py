"""Ignite engines of the detector: MONAI's SupervisedTrainer / SupervisedEvaluator with detection iterations.

The trainer feeds images and per-image targets to :class:`~.network.MammoDetector` and sums MONAI's
classification and box-regression losses. The evaluator maps every prediction back to the file's
pixels through the image's geometry records, so metrics, predictions files and overlays all speak
file pixels, the frame the annotations were drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim import Optimizer

from ..engines.evaluator import image_paths
from ..engines.trainer import AMP_DTYPES, move_to_device
from ..utils.distributed import unwrap
from ..utils.errors import as_flag
from .data import boxes_to_file

__all__ = ["DetectionTrainer", "DetectionEvaluator"]


def _targets(batch: dict[str, Any], device: torch.device) -> list[dict[str, torch.Tensor]]:
    if "det_boxes" not in batch or "det_labels" not in batch:
        raise KeyError("a detection batch needs det_boxes and det_labels (see mammoclip_monai.detection.data)")
    return [{"boxes": torch.as_tensor(np.asarray(b, np.float32)).reshape(-1, 4).to(device),
             "labels": torch.as_tensor(np.asarray(lab, np.int64)).reshape(-1).to(device)}
            for b, lab in zip(batch["det_boxes"], batch["det_labels"], strict=True)]


def _use_channels_last(network: torch.nn.Module, channels_last: bool) -> bool:
    """Put the network in channels-last memory format when asked (faster convolutions, CPU and GPU)."""
    if as_flag(channels_last, "channels_last"):
        network.to(memory_format=torch.channels_last)
        return True
    return False


def _images(batch: dict[str, Any], channels_last: bool) -> torch.Tensor:
    images = batch["image"]
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _device_type(engine: Any) -> str:
    device = engine.state.device
    return device.type if isinstance(device, torch.device) else "cpu"


class DetectionTrainer(SupervisedTrainer):
    """Trains a :class:`~.network.MammoDetector`; loss = classification + ``box_weight`` x box regression.

    Args (beyond :class:`monai.engines.SupervisedTrainer`'s): ``amp`` / ``amp_dtype`` (bfloat16 also
    on CPU), ``grad_clip_norm``, ``box_weight``, ``channels_last``. ``loss_function`` and ``inferer`` are accepted for
    bundle property completeness; the detector computes its own losses.
    """

    def __init__(self, device: str | torch.device, max_epochs: int, train_data_loader: Iterable,
                 network: torch.nn.Module, optimizer: Optimizer, epoch_length: int | None = None,
                 non_blocking: bool = False, amp: bool = False, amp_dtype: str = "bfloat16",
                 grad_clip_norm: float | None = None, box_weight: float = 1.0, channels_last: bool = False,
                 train_handlers: Sequence | None = None, key_train_metric: dict | None = None,
                 additional_metrics: dict | None = None, loss_function: Callable | None = None,
                 inferer: Any = None) -> None:
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, got {amp_dtype!r}")
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=loss_function, epoch_length=epoch_length,
                         non_blocking=non_blocking, inferer=inferer, train_handlers=train_handlers,
                         key_train_metric=key_train_metric, additional_metrics=additional_metrics, amp=False,
                         decollate=False, optim_set_to_none=True)
        self.use_amp = as_flag(amp, "amp")
        self.amp_dtype = AMP_DTYPES[amp_dtype]
        device_type = torch.device(device).type
        self.grad_scaler = torch.amp.GradScaler(device_type, enabled=self.use_amp and amp_dtype == "float16"
                                                and device_type == "cuda")
        self.grad_clip_norm = grad_clip_norm
        self.box_weight = float(box_weight)
        self.channels_last = _use_channels_last(network, channels_last)

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = move_to_device(batchdata, engine.state.device, engine.non_blocking)
        targets = _targets(batch, engine.state.device)
        images = _images(batch, self.channels_last)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(_device_type(engine), dtype=self.amp_dtype, enabled=self.use_amp):
            losses = engine.network(images, targets)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        detector = unwrap(engine.network).detector
        cls_loss = losses[detector.cls_key].float()
        box_loss = losses[detector.box_reg_key].float()
        loss = cls_loss + self.box_weight * box_loss
        engine.state.output = {Keys.IMAGE: images, Keys.LOSS: loss.detach(), "cls_loss": cls_loss.detach(),
                               "box_loss": box_loss.detach()}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self.grad_scaler.scale(loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if self.grad_clip_norm is not None:
            self.grad_scaler.unscale_(engine.optimizer)
            params = [p for group in engine.optimizer.param_groups for p in group["params"]]
            engine.state.output["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm).detach()
        self.grad_scaler.step(engine.optimizer)
        self.grad_scaler.update()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class DetectionEvaluator(SupervisedEvaluator):
    """Runs the detector on evaluation batches; outputs per image, in file pixels,

    ``pred``: ``{"boxes", "scores", "labels"}`` and ``label``: ``{"boxes", "labels"}`` (the
    ``file_boxes`` ground truth), plus ``image_path``. :class:`~.metrics.DetectionMetrics` reads
    ``pred`` / ``label``; the predictions writer reads all three.
    """

    def __init__(self, device: str | torch.device, val_data_loader: Iterable, network: torch.nn.Module,
                 epoch_length: int | None = None, non_blocking: bool = False, key_val_metric: dict | None = None,
                 additional_metrics: dict | None = None, val_handlers: Sequence | None = None, amp: bool = False,
                 amp_dtype: str = "bfloat16", channels_last: bool = False) -> None:
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, epoch_length=epoch_length,
                         non_blocking=non_blocking, key_val_metric=key_val_metric,
                         additional_metrics=additional_metrics, val_handlers=val_handlers, amp=False,
                         decollate=False)
        self.use_amp = as_flag(amp, "amp")
        self.amp_dtype = AMP_DTYPES[amp_dtype]
        self.channels_last = _use_channels_last(network, channels_last)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        paths = image_paths(batchdata)
        batch = move_to_device(batchdata, engine.state.device, engine.non_blocking)
        engine.network.eval()
        with torch.no_grad(), torch.autocast(_device_type(engine), dtype=self.amp_dtype, enabled=self.use_amp):
            detections = engine.network(_images(batch, self.channels_last))
        records = batch.get("geometry") or [[] for _ in detections]
        preds = [{"boxes": boxes_to_file(d["boxes"].float().cpu(), rec),
                  "scores": d["scores"].float().cpu().numpy(), "labels": d["labels"].cpu().numpy()}
                 for d, rec in zip(detections, records, strict=True)]
        if "file_boxes" not in batch or "file_labels" not in batch:
            raise KeyError("a detection evaluation batch needs file_boxes and file_labels "
                           "(mammoclip_monai.detection.detection_datalist adds them)")
        truths = [{"boxes": np.asarray(b, np.float32).reshape(-1, 4), "labels": np.asarray(lab, np.int64).reshape(-1)}
                  for b, lab in zip(batch["file_boxes"], batch["file_labels"], strict=True)]
        engine.state.output = {"pred": preds, "label": truths, "image_path": paths}
        return engine.state.output
