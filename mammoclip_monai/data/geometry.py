"""Geometry records and their inverses: how an image and its boxes moved, and how to move them back.

Every spatial transform of this project (canonical flip, breast crop, aspect-preserving resize)
stores one self-contained record in the image's ``applied_operations`` (under ``extra_info``).
The records alone are enough to map boxes, heatmaps or masks from network-input pixels back to
the original file's pixels, without the transform objects that made them (they may live in
another process). Boxes follow docs/data_formats.md: ``[x_min, y_min, x_max, y_max]``, continuous
pixel coordinates, x along columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import TraceKeys

GEOMETRY_KEY = "mammo_geometry"
"""Key under a trace entry's ``extra_info`` that holds this project's geometry record."""


# ----------------------------------------------------------------------------- boxes
def as_boxes(boxes: Any) -> np.ndarray:
    """Return boxes as a float32 ``(N, 4)`` array (an empty input gives ``(0, 4)``)."""
    arr = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes, dtype=np.float32)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(arr.shape)}")
    return arr


def flip_boxes_horizontal(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror boxes left-right in an image ``width`` pixels wide."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def shift_boxes(boxes: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Translate boxes by ``(dx, dy)`` pixels."""
    return boxes + np.asarray([dx, dy, dx, dy], dtype=np.float32)


def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Scale box coordinates (continuous coordinates scale exactly with the image)."""
    return boxes * np.asarray([sx, sy, sx, sy], dtype=np.float32)


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip boxes to ``[0, width] x [0, height]``."""
    out = boxes.copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0.0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0.0, height)
    return out


def box_iou(a: Any, b: Any) -> np.ndarray:
    """Pairwise IoU of two box sets, ``(N, M)``."""
    a, b = as_boxes(a).astype(np.float64), as_boxes(b).astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


# ----------------------------------------------------------------------------- records
def flip_record(height: int, width: int, flipped: bool) -> dict:
    """Record of a (possibly skipped) left-right mirror of a ``height x width`` image."""
    return {"op": "hflip", "height": int(height), "width": int(width), "flipped": bool(flipped)}


def crop_record(x0: int, y0: int, x1: int, y1: int, orig_height: int, orig_width: int) -> dict:
    """Record of a crop to columns ``[x0, x1)`` and rows ``[y0, y1)`` of an ``orig_height x orig_width`` image."""
    return {"op": "crop", "x0": int(x0), "y0": int(y0), "x1": int(x1), "y1": int(y1),
            "orig_height": int(orig_height), "orig_width": int(orig_width)}


def resize_pad_record(orig_hw: Sequence[int], resized_hw: Sequence[int], out_hw: Sequence[int],
                      pad_top: int, pad_left: int) -> dict:
    """Record of a resize from ``orig_hw`` to ``resized_hw`` followed by padding to ``out_hw``."""
    return {"op": "resize_pad", "orig_height": int(orig_hw[0]), "orig_width": int(orig_hw[1]),
            "resized_height": int(resized_hw[0]), "resized_width": int(resized_hw[1]),
            "out_height": int(out_hw[0]), "out_width": int(out_hw[1]),
            "pad_top": int(pad_top), "pad_left": int(pad_left)}


def forward_boxes(boxes: np.ndarray, record: Mapping) -> np.ndarray:
    """Move boxes the way ``record``'s operation moved the image."""
    op = record["op"]
    if op == "hflip":
        return flip_boxes_horizontal(boxes, record["width"]) if record["flipped"] else boxes.copy()
    if op == "crop":
        out = shift_boxes(boxes, -record["x0"], -record["y0"])
        return clip_boxes(out, record["x1"] - record["x0"], record["y1"] - record["y0"])
    if op == "resize_pad":
        sx = record["resized_width"] / record["orig_width"]
        sy = record["resized_height"] / record["orig_height"]
        return shift_boxes(scale_boxes(boxes, sx, sy), record["pad_left"], record["pad_top"])
    raise ValueError(f"unknown geometry operation {op!r}")


def inverse_boxes(boxes: np.ndarray, record: Mapping) -> np.ndarray:
    """Undo one operation on boxes (boxes in the padding are clipped to the resized area)."""
    op = record["op"]
    if op == "hflip":
        return flip_boxes_horizontal(boxes, record["width"]) if record["flipped"] else boxes.copy()
    if op == "crop":
        return shift_boxes(boxes, record["x0"], record["y0"])
    if op == "resize_pad":
        out = shift_boxes(boxes, -record["pad_left"], -record["pad_top"])
        out = clip_boxes(out, record["resized_width"], record["resized_height"])
        sx = record["orig_width"] / record["resized_width"]
        sy = record["orig_height"] / record["resized_height"]
        return scale_boxes(out, sx, sy)
    raise ValueError(f"unknown geometry operation {op!r}")


def inverse_image(image: torch.Tensor, record: Mapping, mode: str = "bilinear") -> torch.Tensor:
    """Undo one operation on a channel-first 2D tensor (any number of channels, any float values).

    Crops are undone by zero padding (what was cut away is unknown), resizes by interpolation.
    """
    op = record["op"]
    img = torch.as_tensor(image)
    if op == "hflip":
        return torch.flip(img, dims=(-1,)) if record["flipped"] else img
    if op == "crop":
        if tuple(img.shape[-2:]) != (record["y1"] - record["y0"], record["x1"] - record["x0"]):
            raise ValueError(f"image of shape {tuple(img.shape)} does not match the crop record {dict(record)}")
        pad = (record["x0"], record["orig_width"] - record["x1"], record["y0"], record["orig_height"] - record["y1"])
        return F.pad(img, pad, mode="constant", value=0.0)
    if op == "resize_pad":
        if tuple(img.shape[-2:]) != (record["out_height"], record["out_width"]):
            raise ValueError(f"image of shape {tuple(img.shape)} does not match the resize record {dict(record)}")
        top, left = record["pad_top"], record["pad_left"]
        inner = img[..., top: top + record["resized_height"], left: left + record["resized_width"]]
        return resize_2d(inner, (record["orig_height"], record["orig_width"]), mode=mode)
    raise ValueError(f"unknown geometry operation {op!r}")


def resize_2d(image: torch.Tensor, size: Sequence[int], mode: str = "bilinear", antialias: bool = True) -> torch.Tensor:
    """Resize a channel-first ``(C, H, W)`` tensor; anti-aliased when shrinking so fine specks survive."""
    img = torch.as_tensor(image)
    dtype = img.dtype
    x = img.float()[None] if img.ndim == 3 else img.float()[None, None]
    size = (int(size[0]), int(size[1]))
    if mode == "nearest":
        out = F.interpolate(x, size=size, mode="nearest-exact")
    else:
        shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        out = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias and shrinking)
    out = out[0] if img.ndim == 3 else out[0, 0]
    return out.to(dtype) if dtype.is_floating_point else out


# ----------------------------------------------------------------------------- whole chains
def geometry_records(applied_operations: Sequence[Mapping]) -> list[dict]:
    """The geometry records of a trace, oldest first; other invertible transforms are an error.

    Non-invertible transforms (intensity) leave no trace entry, so any entry without a record is a
    spatial transform this module cannot undo: use MONAI's ``Invertd`` for those.
    """
    records = []
    for entry in applied_operations:
        record = entry.get(TraceKeys.EXTRA_INFO, {}).get(GEOMETRY_KEY)
        if record is None:
            name = entry.get(TraceKeys.CLASS_NAME, "?")
            raise ValueError(f"cannot map back through {name}: only this project's geometry transforms are "
                             "invertible here; use monai.transforms.Invertd for MONAI's own spatial transforms")
        records.append(dict(record))
    return records


def _operations_of(reference: Any) -> Sequence[Mapping]:
    if hasattr(reference, "applied_operations"):
        return reference.applied_operations
    if isinstance(reference, Sequence):
        return reference
    raise TypeError("reference must be a MetaTensor or a list of applied operations")


def boxes_to_original(boxes: Any, reference: Any) -> np.ndarray:
    """Map boxes from the transformed image's pixels back to the original file's pixels.

    ``reference`` is the transformed image (a ``MetaTensor``) or its ``applied_operations``.
    """
    out = as_boxes(boxes)
    for record in reversed(geometry_records(_operations_of(reference))):
        out = inverse_boxes(out, record)
    return out


def boxes_from_original(boxes: Any, reference: Any) -> np.ndarray:
    """Map boxes from the original file's pixels into the transformed image's pixels."""
    out = as_boxes(boxes)
    for record in geometry_records(_operations_of(reference)):
        out = forward_boxes(out, record)
    return out


def image_to_original(image: Any, reference: Any, mode: str = "bilinear") -> torch.Tensor:
    """Map a map aligned with the transformed image (heatmap, mask; ``(C, h, w)``) to the original pixels.

    A map of another size than the transformed image (a feature-map heatmap) is first resized to it.
    """
    records = geometry_records(_operations_of(reference))
    out = torch.as_tensor(image).float()
    if out.ndim == 2:
        out = out[None]
    if records:
        last = records[-1]
        expected = _output_shape(last)
        if tuple(out.shape[-2:]) != expected:
            out = resize_2d(out, expected, mode=mode)
    for record in reversed(records):
        out = inverse_image(out, record, mode=mode)
    return out


def _output_shape(record: Mapping) -> tuple[int, int]:
    op = record["op"]
    if op == "hflip":
        return record["height"], record["width"]
    if op == "crop":
        return record["y1"] - record["y0"], record["x1"] - record["x0"]
    return record["out_height"], record["out_width"]
