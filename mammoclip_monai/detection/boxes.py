"""Boxes between the project's convention, MONAI's detector and the training targets.

The project (datalists, geometry records, outputs) writes ``[x_min, y_min, x_max, y_max]`` with x
along columns. MONAI's detection module orders box coordinates by array axis: for a ``(C, H, W)``
image its 2D box is ``[row_min, col_min, row_max, col_max]``. The two differ by swapping x and y,
done here and only here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.geometry import as_boxes

__all__ = ["to_monai_order", "from_monai_order", "class_boxes", "class_index"]

_SWAP = [1, 0, 3, 2]


def to_monai_order(boxes: Any) -> torch.Tensor:
    """Project boxes ``[x0, y0, x1, y1]`` -> MONAI's array-axis order ``[y0, x0, y1, x1]`` (a tensor)."""
    tensor = boxes if isinstance(boxes, torch.Tensor) else torch.as_tensor(as_boxes(boxes))
    return tensor.reshape(-1, 4)[:, _SWAP]


def from_monai_order(boxes: torch.Tensor) -> torch.Tensor:
    """MONAI's ``[y0, x0, y1, x1]`` -> the project's ``[x0, y0, x1, y1]`` (the swap is its own inverse)."""
    return boxes.reshape(-1, 4)[:, _SWAP]


def class_index(classes: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Finding category (lower case) -> class index, from ``{class: [categories]}``."""
    index: dict[str, int] = {}
    for i, categories in enumerate(classes.values()):
        for category in categories:
            key = str(category).lower()
            if key in index and index[key] != i:
                raise ValueError(f"finding category {category!r} is given to two classes")
            index[key] = i
    return index


def class_boxes(boxes: Any, box_labels: Sequence[str], classes: Mapping[str, Sequence[str]],
                min_size: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The boxes whose category belongs to one of ``classes``, with their class indices.

    Boxes of other categories are dropped (a detector of mass and calcification learns nothing of
    an asymmetry box: it is neither a target nor, by its absence, a negative). Boxes narrower or
    lower than ``min_size`` pixels (a lesion cut away by a crop) are dropped too.
    """
    arr = as_boxes(boxes)
    if len(box_labels) != len(arr):
        raise ValueError(f"{len(arr)} box(es) but {len(box_labels)} box label(s)")
    index = class_index(classes)
    keep = [i for i, label in enumerate(box_labels) if str(label).lower() in index
            and arr[i, 2] - arr[i, 0] > min_size and arr[i, 3] - arr[i, 1] > min_size]
    labels = np.asarray([index[str(box_labels[i]).lower()] for i in keep], dtype=np.int64)
    return arr[keep].reshape(-1, 4), labels
