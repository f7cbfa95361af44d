"""Where the breast is: foreground mask, bounding box and chest-wall side, found on a small copy.

All analysis runs on an area-downsampled copy (about 256 pixels on the long side), so it costs a
fraction of a millisecond whatever the mammogram's size, and then maps back to full resolution.
The breast is the largest bright connected component: burned-in view labels, lead markers and
film-edge lines are separate (smaller or thinner) components and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

ANALYSIS_SIZE = 256


@dataclass(frozen=True)
class BreastRegion:
    """The breast found in one image, in that image's full-resolution pixels."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    chest_wall_side: str  # "left" or "right"
    area_fraction: float  # breast pixels / image pixels
    found: bool  # False when nothing stood out from the background (box is then the whole image)


def downsample(image: torch.Tensor | np.ndarray, target: int = ANALYSIS_SIZE) -> tuple[np.ndarray, int]:
    """Area-average a 2D image (or ``(1, H, W)``) by an integer factor so its long side is about ``target``."""
    x = torch.as_tensor(image)
    if x.ndim == 3:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"expected a 2D image or (1, H, W), got shape {tuple(x.shape)}")
    factor = max(1, int(np.ceil(max(x.shape) / target)))
    x = x.float()
    if factor > 1:
        x = F.avg_pool2d(x[None, None], kernel_size=factor, stride=factor, ceil_mode=True,
                         count_include_pad=False)[0, 0]
    return x.numpy(), factor


def foreground_threshold(small: np.ndarray, relative: float) -> float:
    """A level between background (low percentile) and tissue (high percentile)."""
    lo, hi = np.percentile(small, [2.0, 98.0])
    return float(lo + relative * (hi - lo))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _trim(profile: np.ndarray, fraction: float) -> tuple[int, int]:
    """First and last+1 index where ``profile`` reaches ``fraction`` of its maximum."""
    keep = np.flatnonzero(profile >= fraction * profile.max())
    return int(keep[0]), int(keep[-1]) + 1


def find_breast(image: torch.Tensor | np.ndarray, relative_threshold: float = 0.1, border_fraction: float = 0.01,
                trim_fraction: float = 0.02, margin_fraction: float = 0.0) -> BreastRegion:
    """Locate the breast in a ``(H, W)`` or ``(1, H, W)`` image with intensities where tissue is bright.

    Args:
        relative_threshold: foreground level between the 2nd and 98th intensity percentiles.
        border_fraction: width of the image frame ignored while segmenting (film edges, collimator
            lines); a breast reaching into it is extended back to the image edge.
        trim_fraction: rows/columns at the ends of the breast holding less than this fraction of the
            fullest row/column are trimmed (thin lines touching the breast).
        margin_fraction: margin added around the box, as a fraction of its size.
    """
    return analyse_breast(image, relative_threshold, border_fraction, trim_fraction, margin_fraction).region


@dataclass(frozen=True)
class BreastAnalysis:
    """One analysis of one image: the region, plus what is needed to judge a part of it again.

    Lets the fused chain (data/preprocess.py) decide the crop and the chest-wall side from a
    single downsampled copy instead of analysing the cropped image a second time.
    """

    region: BreastRegion
    weights: np.ndarray  # breast intensity summed per column of the small copy
    factor: int  # full-resolution pixels per small-copy pixel

    def chest_wall_side_within(self, x0: int, x1: int) -> str:
        """The chest-wall side of the breast inside columns ``[x0, x1)`` (full-resolution pixels)."""
        if not self.region.found:
            return "left"
        lo = max(0, x0 // self.factor)
        hi = min(self.weights.size, max(lo + 1, -(-x1 // self.factor)))
        part = self.weights[lo:hi]
        half = part.size // 2
        left, right = part[:half].sum(), part[part.size - half:].sum()
        return "right" if right > left else "left"


def analyse_breast(image: torch.Tensor | np.ndarray, relative_threshold: float = 0.1, border_fraction: float = 0.01,
                   trim_fraction: float = 0.02, margin_fraction: float = 0.0) -> BreastAnalysis:
    """:func:`find_breast`, keeping the per-column breast weights for later side decisions."""
    shape = tuple(torch.as_tensor(image).shape[-2:])
    small, factor = downsample(image)
    return analyse_small(small, factor, (int(shape[0]), int(shape[1])), relative_threshold, border_fraction,
                         trim_fraction, margin_fraction)


def analyse_small(small: np.ndarray, factor: int, shape: tuple[int, int], relative_threshold: float = 0.1,
                  border_fraction: float = 0.01, trim_fraction: float = 0.02, margin_fraction: float = 0.0
                  ) -> BreastAnalysis:
    """The analysis of :func:`analyse_breast` on an already downsampled copy (what :func:`downsample`
    gives for an image of ``shape``), for callers that build that copy while streaming the image."""
    height, width = shape
    sh, sw = small.shape
    mask = small > foreground_threshold(small, relative_threshold)
    border = max(1, round(float(border_fraction) * max(sh, sw)))
    mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = False, False, False, False
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
    breast = _largest_component(mask)
    if not breast.any():
        return BreastAnalysis(BreastRegion((0, 0, width, height), "left", 0.0, False), np.zeros(sw), factor)
    r0, r1 = _trim(breast.sum(1).astype(float), trim_fraction)
    c0, c1 = _trim(breast.sum(0).astype(float), trim_fraction)
    # touching the ignored frame means touching the image edge (the chest wall usually does)
    r0, c0 = (0 if r0 <= border else r0), (0 if c0 <= border else c0)
    r1, c1 = (sh if r1 >= sh - border else r1), (sw if c1 >= sw - border else c1)
    x0, y0 = c0 * factor, r0 * factor
    x1, y1 = min(width, c1 * factor), min(height, r1 * factor)
    if margin_fraction > 0:
        mx, my = round(float(margin_fraction) * (x1 - x0)), round(float(margin_fraction) * (y1 - y0))
        x0, y0, x1, y1 = max(0, x0 - mx), max(0, y0 - my), min(width, x1 + mx), min(height, y1 + my)
    weights = np.where(breast, small, 0.0).sum(0)
    half = sw // 2
    left, right = weights[:half].sum(), weights[sw - half:].sum()
    side = "right" if right > left else "left"
    region = BreastRegion((int(x0), int(y0), int(x1), int(y1)), side, float(breast.mean()), True)
    return BreastAnalysis(region, weights, factor)
