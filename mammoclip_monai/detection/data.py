"""Detection data: datalist items with class boxes, box-safe augmentation, and a collate that keeps boxes.

A detection item is a datalist item (VinDr, CBIS-DDSM, synthetic) plus

    det_boxes    (M, 4) the boxes of the detector's classes; file pixels in the datalist, moved with
                 the image by the preprocessing chain (``box_keys=["det_boxes"]``)
    det_labels   (M,)  their class indices
    file_boxes   (M, 4) the same boxes, never moved, and ``file_labels`` their classes: the ground
                 truth metrics compare against, in file pixels
    geometry     (added by :class:`GeometryRecordd` after preprocessing) the geometry records that
                 map the network's predictions back to file pixels

Images without a box of any class stay in the datalist: they are the negatives that teach the
detector what is not a lesion and that the FROC counts false positives on.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data.utils import list_data_collate
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple

from ..data.geometry import as_boxes, geometry_records, inverse_boxes
from .boxes import class_boxes

__all__ = ["BOX_KEYS", "detection_datalist", "DetectionTargetsd", "GeometryRecordd", "RandDetectionAugmentd",
           "detection_collate", "boxes_to_file"]

BOX_KEYS = ("det_boxes", "det_labels", "file_boxes", "file_labels", "geometry", "boxes", "box_labels", "findings")
"""Per-image keys of varying length: :func:`detection_collate` keeps them as lists."""


def detection_datalist(items: Sequence[Mapping[str, Any]], classes: Mapping[str, Sequence[str]],
                       split: str | None = None) -> list[dict[str, Any]]:
    """Items (of ``split`` when given) with the boxes and labels of ``classes`` (module docstring)."""
    out = []
    for item in items:
        if split is not None and item.get("split") != split:
            continue
        boxes, labels = class_boxes(item.get("boxes", np.zeros((0, 4))), item.get("box_labels", []), classes)
        out.append({**item, "det_boxes": boxes.copy(), "det_labels": labels, "file_boxes": boxes,
                    "file_labels": labels.copy()})
    return out


class GeometryRecordd(MapTransform):
    """Copy the image's geometry records (crop, flip, resize) into ``record_key``, a plain list that
    survives collation, so predictions can be mapped back to file pixels per image."""

    def __init__(self, keys: str = "image", record_key: str = "geometry") -> None:
        super().__init__(keys)
        self.record_key = record_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.record_key] = geometry_records(d[self.keys[0]].applied_operations)
        return d


class DetectionTargetsd(MapTransform):
    """Drop target boxes that preprocessing squeezed below ``min_size`` pixels (a lesion cut by the
    crop), with their labels, and make both tensors the detector accepts."""

    def __init__(self, box_key: str = "det_boxes", label_key: str = "det_labels", min_size: float = 1.0) -> None:
        super().__init__([box_key, label_key])
        self.box_key, self.label_key, self.min_size = box_key, label_key, float(min_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        boxes = as_boxes(d[self.box_key])
        labels = np.asarray(d[self.label_key], dtype=np.int64).reshape(-1)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_size)
        d[self.box_key] = torch.as_tensor(boxes[keep])
        d[self.label_key] = torch.as_tensor(labels[keep])
        return d


class RandDetectionAugmentd(RandomizableTransform, MapTransform):
    """Box-safe training augmentation of a preprocessed ``(1, H, W)`` image in [0, 1].

    An up-down flip (the chest wall stays on the left, where canonical laterality put it; boxes
    flip with the image), then intensity only: gamma, contrast and brightness around the mean,
    Gaussian noise. No rotation or elastic warp: they would turn a box into a loose one.
    Training only: the flip is not recorded for mapping back.
    """

    def __init__(self, keys: str = "image", box_keys: Sequence[str] | str = ("det_boxes",), prob: float = 1.0,
                 flip_prob: float = 0.5, gamma_range: tuple[float, float] = (0.7, 1.4),
                 contrast_range: tuple[float, float] = (0.8, 1.2), brightness: float = 0.05,
                 noise_std: float = 0.02) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.box_keys = ensure_tuple(box_keys)
        self.flip_prob = float(flip_prob)
        self.gamma_range, self.contrast_range = tuple(gamma_range), tuple(contrast_range)
        self.brightness, self.noise_std = float(brightness), float(noise_std)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        rng = self.R
        flip = rng.random_sample() < self.flip_prob
        gamma = rng.uniform(*self.gamma_range)
        contrast = rng.uniform(*self.contrast_range)
        shift = rng.uniform(-self.brightness, self.brightness)
        noise_seed = int(rng.randint(0, 2**31 - 1))
        for key in self.key_iterator(d):
            image = d[key]
            height = image.shape[-2]
            out = torch.flip(image, dims=(-2,)) if flip else image
            out = out.clamp(0, 1) ** gamma
            mean = out.mean()
            out = (out - mean) * contrast + mean + shift
            if self.noise_std > 0:
                generator = torch.Generator().manual_seed(noise_seed)
                out = out + torch.randn(out.shape, generator=generator).to(out) * self.noise_std
            d[key] = out.clamp(0, 1)
        if flip:
            for box_key in self.box_keys:
                if box_key in d:
                    boxes = as_boxes(d[box_key]).copy()
                    boxes[:, [1, 3]] = height - boxes[:, [3, 1]]
                    d[box_key] = boxes
        return d


def detection_collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """MONAI's collate for the images and scalars; the per-image box keys (:data:`BOX_KEYS`) as lists."""
    kept = [{k: v for k, v in item.items() if k not in BOX_KEYS} for item in batch]
    out = list_data_collate(kept)
    for key in BOX_KEYS:
        if all(key in item for item in batch):
            out[key] = [item[key] for item in batch]
    return out


def boxes_to_file(boxes: Any, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Boxes in network-input pixels -> file pixels, through one image's geometry records."""
    out = as_boxes(boxes)
    for record in reversed(records):
        out = inverse_boxes(out, record)
    return out
