"""Heatmaps for an attribute (FActOR, Grad-CAM, CAM) and scored boxes from a heatmap.

All three methods give a map on the feature-map grid; :func:`to_original` upsamples it to the
network input and undoes the preprocessing geometry (resize, crop, canonical flip) with the
records the transforms left (:mod:`mammoclip_monai.data.geometry`), so heatmaps and boxes land on
the original file's pixels. Grad-CAM and CAM come from ``monai.visualize``, on the zero-shot
score of the attribute's ``[absent, present]`` prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.geometry import image_to_original

__all__ = ["factor_heatmap", "ZeroShotLogits", "gradcam_map", "cam_map", "normalize_map", "to_original",
           "heatmap_boxes"]


def normalize_map(heatmap: torch.Tensor) -> torch.Tensor:
    """Scale a non-negative map to ``[0, 1]`` by its maximum (an all-zero map stays zero)."""
    heatmap = heatmap.float().clamp(min=0)
    peak = heatmap.max()
    return heatmap / peak if peak > 0 else heatmap


def factor_heatmap(feature_map: torch.Tensor, neuron_scores: torch.Tensor, top_k: int = 5,
                   temperature: float = 0.07) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The score-weighted sum of the top-``k`` neurons' maps for one image and one attribute.

    Args:
        feature_map: ``(C, h, w)``.
        neuron_scores: ``(C,)`` FActOR scores of the attribute (:meth:`FActOR.neuron_scores`).
    Returns:
        ``(heatmap (h, w) in [0, 1], top neuron indices (k,), their weights (k,))``; the weights are a
        softmax of the top scores over ``temperature``, each map rectified and scaled to its maximum
        first so that no channel wins by raw magnitude alone.
    """
    if feature_map.ndim != 3 or neuron_scores.shape != feature_map.shape[:1]:
        raise ValueError(f"feature map (C, h, w) and scores (C,) expected, got {tuple(feature_map.shape)} "
                         f"and {tuple(neuron_scores.shape)}")
    k = min(int(top_k), feature_map.shape[0])
    top_scores, top = neuron_scores.float().topk(k)
    weights = torch.softmax(top_scores / temperature, dim=0)
    maps = feature_map[top].float().clamp(min=0)
    peaks = maps.flatten(1).amax(1).clamp(min=1e-12)
    heatmap = (weights[:, None, None] * maps / peaks[:, None, None]).sum(0)
    return normalize_map(heatmap), top, weights


class ZeroShotLogits(nn.Module):
    """``image -> (B, 2)`` zero-shot logits of one attribute's ``[absent, present]`` class embeddings.

    The network Grad-CAM differentiates (its ``model.image_encoder.<layer>`` is the target layer).
    """

    def __init__(self, model: nn.Module, class_embeddings: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("class_embeddings", F.normalize(torch.as_tensor(class_embeddings).float(), dim=-1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.model.encode_image(image, normalize=True)
        return self.model.get_logit_scale() * features @ self.class_embeddings.T

    def location_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The same logits from one location's features, unnormalised (what CAM evaluates per location).

        With average pooling and a linear projection the mean of these over the locations is the
        image's unnormalised logit, which makes CAM exact.
        """
        return self.model.image_projection(pooled) @ self.class_embeddings.T


def _raw_map(compute: Callable[..., torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        out = compute(image, class_idx=1)
    return out.detach()[:, 0]


def gradcam_map(model: nn.Module, class_embeddings: torch.Tensor, image: torch.Tensor, layer: str) -> torch.Tensor:
    """Grad-CAM (``monai.visualize.GradCAM``) of the *present* zero-shot logit at encoder ``layer``: ``(B, h, w)``."""
    from monai.visualize import GradCAM

    # a new module is in train mode, and monai.visualize restores that mode onto the model afterwards
    wrapper = ZeroShotLogits(model, class_embeddings.to(image.device)).train(model.training)
    cam = GradCAM(nn_module=wrapper, target_layers=f"model.image_encoder.{layer}")
    return _raw_map(cam.compute_map, image)


def cam_map(model: nn.Module, class_embeddings: torch.Tensor, image: torch.Tensor, layer: str) -> torch.Tensor:
    """Plain CAM (``monai.visualize.CAM``): the *present* logit's projection weights at each location, ``(B, h, w)``."""
    from monai.visualize import CAM

    # a new module is in train mode, and monai.visualize restores that mode onto the model afterwards
    wrapper = ZeroShotLogits(model, class_embeddings.to(image.device)).train(model.training)
    cam = CAM(nn_module=wrapper, target_layers=f"model.image_encoder.{layer}",
              fc_layers=lambda net: net.location_logits)
    with torch.no_grad():
        present = torch.ones(image.shape[0], dtype=torch.long)  # CAM wants one class index per image
        return cam.compute_map(image, class_idx=present).detach()[:, 0]


def to_original(heatmap: torch.Tensor, reference: Any) -> torch.Tensor:
    """A feature-grid map ``(h, w)`` -> the original file's pixels ``(H0, W0)``, in ``[0, 1]``.

    ``reference`` is the preprocessed image (a ``MetaTensor`` with the geometry trace) or its
    ``applied_operations``; padding and cropped-away areas become 0.
    """
    return normalize_map(image_to_original(heatmap.float()[None], reference)[0])


def heatmap_boxes(heatmap: torch.Tensor | np.ndarray, threshold: float = 0.5, max_boxes: int = 3,
                  min_fraction: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Scored boxes around the connected regions of ``heatmap >= threshold * max``.

    Returns ``(boxes (N, 4) [x_min, y_min, x_max, y_max] in the heatmap's pixels, scores (N,))``,
    best first; a region's score is its peak value, regions smaller than ``min_fraction`` of the
    image are dropped (interpolation crumbs).
    """
    from scipy import ndimage

    heat = heatmap.detach().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    heat = np.asarray(heat, np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2D, got shape {heat.shape}")
    peak = float(heat.max()) if heat.size else 0.0
    if peak <= 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    regions, count = ndimage.label(heat >= threshold * peak)
    boxes, scores = [], []
    min_pixels = max(1, int(min_fraction * heat.size))
    for index, region in enumerate(ndimage.find_objects(regions), start=1):
        if region is None:
            continue
        inside = regions[region] == index
        if int(inside.sum()) < min_pixels:
            continue
        rows, cols = region
        boxes.append([cols.start, rows.start, cols.stop, rows.stop])
        scores.append(float(heat[region][inside].max()))
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    order = np.argsort(scores)[::-1][:max_boxes]
    return np.asarray(boxes, np.float32)[order], np.asarray(scores, np.float32)[order]
