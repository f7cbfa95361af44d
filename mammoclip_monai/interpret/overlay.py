"""Overlay PNGs: heatmaps and boxes drawn on the mammogram as read from its file (original pixels)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.transforms import LoadMammogram

__all__ = ["load_original", "save_overlay", "save_comparison_overlay"]


def load_original(path: str | os.PathLike, allow_any_modality: bool = False) -> np.ndarray:
    """The image as the project's reader returns it, before any crop, flip or resize: ``(H, W)`` float."""
    image = LoadMammogram(allow_any_modality=allow_any_modality)(str(path))
    return np.asarray(torch.as_tensor(image)[0].float().numpy())


def _draw_boxes(ax: Any, boxes: Any, color: str, scores: Any = None, dashed: bool = False) -> None:
    from matplotlib.patches import Rectangle

    for i, box in enumerate(np.asarray(boxes, np.float32).reshape(-1, 4)):
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5,
                               linestyle="--" if dashed else "-"))
        if scores is not None and i < len(scores):
            ax.text(x0, max(y0 - 4, 0), f"{float(scores[i]):.2f}", color=color, fontsize=7, va="bottom")


def save_overlay(path: str | os.PathLike, image: np.ndarray,
                 panels: Mapping[str, tuple[Any, Any, Any]], gt_boxes: Any = None, title: str = "") -> Path:
    """One panel per entry of ``panels`` ``{name: (heatmap (H, W), boxes, scores)}`` over ``image`` (H, W).

    Predicted boxes are solid (with their scores), ground-truth boxes dashed green: ``gt_boxes`` is
    one set for every panel, or ``{panel name: boxes}`` (a detector's classes, each its own truth).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = np.asarray(image, np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    shown = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    height, width = image.shape
    columns = max(len(panels), 1)
    panel_height = 3.6
    fig, axes = plt.subplots(1, columns, figsize=(columns * panel_height * min(max(width / height, 0.4), 2.0) + 0.3,
                                                  panel_height + 0.5), squeeze=False)
    for ax, (name, (heat, boxes, scores)) in zip(axes[0], panels.items()):
        heat = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
        if heat.shape != image.shape:
            raise ValueError(f"heatmap {heat.shape} and image {image.shape} differ: "
                             "map the heatmap to the original first")
        ax.imshow(shown, cmap="gray", interpolation="lanczos")
        ax.imshow(np.ma.masked_less(heat, 0.05), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        truth = gt_boxes.get(name) if isinstance(gt_boxes, Mapping) else gt_boxes
        if truth is not None:
            _draw_boxes(ax, truth, "lime", dashed=True)
        _draw_boxes(ax, boxes, "yellow", scores)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_comparison_overlay(path: str | os.PathLike, image_path: str, panels: Mapping[str, tuple[Any, Any, Any]],
                            gt_boxes: Any, title: str = "", method_names: Mapping[str, str] | None = None) -> Path:
    """:func:`save_overlay` of several methods' maps of one image, read from ``image_path``."""
    names = method_names or {}
    return save_overlay(path, load_original(image_path), {names.get(k, k): v for k, v in panels.items()},
                        gt_boxes, title)
