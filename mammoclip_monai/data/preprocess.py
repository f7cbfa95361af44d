"""The deterministic chain in one pass: read, crop to the breast, canonicalise, resize.

:class:`PreprocessMammogramd` does the work of ::

    LoadMammogramd -> CropBreastd -> CanonicalLateralityd -> ResizeKeepAspectd

and returns the same thing (image, metadata, the three geometry records in ``applied_operations``
in the same order, boxes moved the same way, an ``inverse``), only faster at real mammogram sizes:

* the grey-scale mapping (modality LUT, VOI LUT or window, MONOCHROME1) is the reader's, which
  works on the integer pixels in one fused float32 pass (bit-identical to the four-transform chain);
* the breast is analysed once, on one downsampled copy: the same analysis gives the crop box and
  the chest-wall side (the separate transforms analyse the cropped image a second time);
* the crop and the flip are views: nothing is copied at full resolution; only the crop is resized,
  straight to the target, and the mirror is applied to the small resized image;
* no float64 at full resolution, and torch uses the threads the process has.

The separate transforms stay: they are the reference this one is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform, MapTransform
from monai.transforms.inverse import TraceableTransform
from monai.utils import ensure_tuple, ensure_tuple_rep
from monai.utils.enums import TraceKeys

from ..utils.errors import as_flag
from . import geometry
from .breast import ANALYSIS_SIZE, analyse_small
from .reader import DEFAULT_MAX_PIXELS, VOI_MODES, read_mammogram
from .transforms import _index_map

__all__ = ["CHAIN_VERSION", "PreprocessMammogramd"]

CHAIN_VERSION = 1
"""Bump when the pixels this chain produces for the same arguments change (a cache key part)."""


class PreprocessMammogramd(MapTransform, InvertibleTransform):
    """File path -> ``(1, H, W)`` float32 ``MetaTensor`` in ``[0, 1]``, breast cropped, chest wall left.

    Arguments are those of the four transforms it replaces, with the same defaults:
    ``LoadMammogramd`` (``voi``, ``window_index``, ``allow_any_modality``, ``fill_from_data``,
    ``max_pixels``), ``CropBreastd`` (``margin_fraction``, ``relative_threshold``,
    ``border_fraction``, ``trim_fraction``, ``min_area_fraction``), ``CanonicalLateralityd``
    (``method``) and ``ResizeKeepAspectd`` (``spatial_size`` as (H, W), ``pad_position``,
    ``pad_value``). Boxes in ``box_keys`` (file pixels, ``[x0, y0, x1, y1]``) move with the key at
    the same position of ``box_ref_keys`` (default: the first key). ``decoder`` is passed to the
    reader (``read_mammogram``'s DICOM decoder choice; None: its default).
    """

    def __init__(self, keys: KeysCollection = "image", spatial_size: Sequence[int] = (512, 320),
                 box_keys: KeysCollection = (), voi: str = "auto", window_index: int = 0,
                 allow_any_modality: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, method: str = "image",
                 margin_fraction: float = 0.02, relative_threshold: float = 0.1, border_fraction: float = 0.01,
                 trim_fraction: float = 0.02, min_area_fraction: float = 0.02, pad_position: str = "end",
                 pad_value: float = 0.0, fill_from_data: Sequence[str] = ("laterality", "view"),
                 box_ref_keys: KeysCollection = (), decoder: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if voi not in VOI_MODES:
            raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
        if method not in ("image", "header"):
            raise ValueError(f"method must be 'image' or 'header', got {method!r}")
        if pad_position not in ("end", "center"):
            raise ValueError(f"pad_position must be 'end' or 'center', got {pad_position!r}")
        size = tuple(int(s) for s in ensure_tuple(spatial_size))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"spatial_size must be (H, W) with positive entries, got {spatial_size!r}")
        self.spatial_size = size
        self.voi = voi
        self.window_index = int(window_index)
        self.allow_any_modality = as_flag(allow_any_modality, "allow_any_modality")
        self.max_pixels = max_pixels
        self.method = method
        self.margin_fraction = float(margin_fraction)
        self.relative_threshold = float(relative_threshold)
        self.border_fraction = float(border_fraction)
        self.trim_fraction = float(trim_fraction)
        self.min_area_fraction = float(min_area_fraction)
        self.pad_position = pad_position
        self.pad_value = float(pad_value)
        self.fill_from_data = tuple(fill_from_data)
        self.decoder = decoder  # the reader's DICOM decoder choice (lossless: not a cache parameter)
        self.box_keys = ensure_tuple(box_keys)
        refs = ensure_tuple(box_ref_keys) or (self.keys[0],)
        self.box_ref_keys = refs if len(refs) == len(self.box_keys) else ensure_tuple_rep(refs[0], len(self.box_keys))

    # ------------------------------------------------------------------ cache identity
    def cache_params(self) -> dict[str, Any]:
        """Every argument that changes the output image or its metadata, plus :data:`CHAIN_VERSION`.

        JSON-able; two instances with equal ``cache_params()`` give the same output for the same
        file, so a cache may key its entries by it (with the file's content hash).
        """
        return {
            "chain": "PreprocessMammogramd", "chain_version": CHAIN_VERSION,
            "spatial_size": list(self.spatial_size), "voi": self.voi, "window_index": self.window_index,
            "method": self.method, "margin_fraction": self.margin_fraction,
            "relative_threshold": self.relative_threshold, "border_fraction": self.border_fraction,
            "trim_fraction": self.trim_fraction, "min_area_fraction": self.min_area_fraction,
            "pad_position": self.pad_position, "pad_value": self.pad_value,
            "fill_from_data": list(self.fill_from_data),
        }

    # ------------------------------------------------------------------ forward
    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        records: dict[Hashable, list[dict]] = {}
        for key in self.key_iterator(d):
            d[key], records[key] = self._one(d[key], d)
        for box_key, ref_key in zip(self.box_keys, self.box_ref_keys):
            if box_key in d and ref_key in records:
                boxes = geometry.as_boxes(d[box_key])
                for record in records[ref_key]:
                    boxes = geometry.forward_boxes(boxes, record)
                d[box_key] = boxes
        return d

    def _load(self, path: Any, d: Mapping[Hashable, Any]
              ) -> tuple[np.ndarray, _Grey, dict[str, Any], torch.Tensor]:
        """Stored pixels and how they become grey (or the [0, 1] image as is), metadata, affine.

        8/16-bit integer DICOM pixels come back unmapped (``dicom.stored_values``): a clipped ramp
        or a table says what each stored value becomes, as the reader would map it, and each
        pixel is mapped while its strip is in the CPU cache. Other files come back as the
        reader's [0, 1] image.
        """
        options = {} if self.decoder is None else {"decoder": self.decoder}
        with _stored_values() as sink:
            array, meta = read_mammogram(str(path), voi=self.voi, window_index=self.window_index,
                                         allow_any_modality=self.allow_any_modality, max_pixels=self.max_pixels,
                                         **options)
        grey: _Grey = _Grey(None, None)
        if sink:
            array, table, linear = sink[0]
            meta["spatial_shape"] = (int(array.shape[0]), int(array.shape[1]))
            if table is not None:
                array = array.view(np.dtype(f"u{array.dtype.itemsize}"))  # the table's index
            grey = _Grey(table, linear)
        for name in self.fill_from_data:
            value = d.get(name)
            if meta.get(name) == "unknown" and isinstance(value, str) and value:
                meta[name] = value.strip().upper()
        spacing = [s if math.isfinite(s) and s > 0 else 1.0 for s in meta["pixel_spacing"]]
        affine = torch.diag(torch.tensor([spacing[0], spacing[1], 1.0], dtype=torch.float64))
        return array, grey, meta, affine

    def plan(self, small: np.ndarray, factor: int, shape: tuple[int, int], laterality: str) -> list[dict]:
        """The crop, flip and resize records of one image from its downsampled copy (one analysis)."""
        height, width = shape
        analysis = analyse_small(small, factor, shape, relative_threshold=self.relative_threshold,
                                 border_fraction=self.border_fraction, trim_fraction=self.trim_fraction,
                                 margin_fraction=self.margin_fraction)
        region = analysis.region
        x0, y0, x1, y1 = region.box
        if not region.found or region.area_fraction < self.min_area_fraction:
            x0, y0, x1, y1 = 0, 0, width, height
        crop = geometry.crop_record(x0, y0, x1, y1, height, width)
        h, w = y1 - y0, x1 - x0
        if self.method == "header" and laterality in ("L", "R"):
            flipped = laterality == "R"
        else:
            flipped = analysis.chest_wall_side_within(x0, x1) == "right"
        flip = geometry.flip_record(h, w, flipped)
        out_h, out_w = self.spatial_size
        scale = min(out_h / h, out_w / w)
        new_h, new_w = min(out_h, max(1, round(h * scale))), min(out_w, max(1, round(w * scale)))
        top, left = (0, 0) if self.pad_position == "end" else ((out_h - new_h) // 2, (out_w - new_w) // 2)
        resize = geometry.resize_pad_record((h, w), (new_h, new_w), (out_h, out_w), top, left)
        return [crop, flip, resize]

    def _one(self, path: Any, d: Mapping[Hashable, Any]) -> tuple[torch.Tensor, list[dict]]:
        pixels, grey, meta, affine = self._load(path, d)
        height, width = pixels.shape
        small, factor = _downsampled(pixels, grey)
        crop, flip, resize = records = self.plan(small, factor, (height, width), meta.get("laterality", "unknown"))
        size = (resize["resized_height"], resize["resized_width"])
        region = pixels[crop["y0"]: crop["y1"], crop["x0"]: crop["x1"]]  # a view
        resized = _resize_region(region, grey, size)
        if flip["flipped"]:
            # mirroring commutes with the (symmetric) resampling: mirror the small image, not the crop
            resized = torch.flip(resized, dims=(-1,))
        out = resized.new_full((1, resize["out_height"], resize["out_width"]), self.pad_value)
        top, left = resize["pad_top"], resize["pad_left"]
        out[0, top: top + size[0], left: left + size[1]] = resized
        if not get_track_meta():
            return out, records
        # metadata only: stand-ins of the right shapes for the full image, the crop and the flip
        image = MetaTensor(torch.zeros(1, 1, 1).expand(1, height, width), affine=affine, meta=meta)
        # the same trace entries and affine updates as the three separate transforms, in order
        for record, shape in ((crop, region.shape), (flip, region.shape), (resize, out.shape[1:])):
            info = TraceableTransform.track_transform_meta(
                image, sp_size=tuple(shape), affine=torch.as_tensor(_index_map(record), dtype=torch.float64),
                extra_info={geometry.GEOMETRY_KEY: record}, orig_size=tuple(image.shape[1:]),
                transform_info=self.get_transform_info(), lazy=False)
            placeholder = out if record is resize else torch.zeros(1, 1, 1).expand(1, *shape)
            image = MetaTensor(placeholder).copy_meta_from(info)
        return image, records

    # ------------------------------------------------------------------ inverse
    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Undo resize, flip and crop (in that order) on each key, and move the boxes back."""
        d = dict(data)
        records: dict[Hashable, list[dict]] = {}
        for key in self.key_iterator(d):
            image = d[key]
            undone = []
            for _ in range(3):
                entry = self.pop_transform(image)
                record = entry[TraceKeys.EXTRA_INFO][geometry.GEOMETRY_KEY]
                undone.append(record)
                restored = geometry.inverse_image(image.as_tensor() if isinstance(image, MetaTensor) else image,
                                                  record)
                if isinstance(image, MetaTensor):
                    out = MetaTensor(restored).copy_meta_from(image)
                    out.affine = image.affine @ torch.as_tensor(np.linalg.inv(_index_map(record)),
                                                                dtype=torch.float64)
                    restored = out
                image = restored
            d[key] = image
            records[key] = undone
        for box_key, ref_key in zip(self.box_keys, self.box_ref_keys):
            if box_key in d and ref_key in records:
                boxes = geometry.as_boxes(d[box_key])
                for record in records[ref_key]:
                    boxes = geometry.inverse_boxes(boxes, record)
                d[box_key] = boxes
        return d


# ---------------------------------------------------------------------- streaming helpers
STRIP_ROWS = 64
"""Rows mapped at a time for the resize: a strip of grey values stays in the CPU cache between the steps that use it."""

DOWNSAMPLE_ROWS = 256
"""Rows mapped at a time for the analysis copy: its per-strip work is two sums, so fewer, larger strips
(fewer torch calls) win here (3-6 % of the whole chain at 2294 x 1914 to 5000 x 4000, measured)."""


@contextmanager
def _stored_values() -> Iterator[list]:
    """``dicom.stored_values`` when pydicom is there (PNG-only environments have none)."""
    try:
        from . import dicom
    except ImportError:  # pragma: no cover - pydicom missing
        yield []
        return
    with dicom.stored_values() as sink:
        yield sink


class _Grey(NamedTuple):
    """How stored pixels become [0, 1] values: a table, a clipped ramp, or nothing (already grey)."""

    table: np.ndarray | None
    linear: tuple[float, float] | None

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        """The [0, 1] values of some pixels (a strip), as a new contiguous float32 tensor."""
        if self.table is not None:  # indices are in range by construction: "clip" skips the checks
            return torch.from_numpy(np.take(self.table, pixels, mode="clip"))
        out = torch.empty(pixels.shape, dtype=torch.float32)
        out.copy_(torch.from_numpy(pixels))
        if self.linear is not None:
            shift, scale = self.linear
            out.sub_(shift).mul_(scale).clamp_(0.0, 1.0)
        return out


def _downsampled(pixels: np.ndarray, grey: _Grey) -> tuple[np.ndarray, int]:
    """``breast.downsample`` of the grey image, built strip by strip (the full image never exists).

    Strips are whole pooling blocks high; each block's mean is its column sums' sum over its
    size (edge blocks hold fewer pixels, as with ``ceil_mode`` and no padding counted): the
    same means as ``avg_pool2d`` up to float32 summation order, at a fraction of its cost.
    """
    height, width = pixels.shape
    factor = max(1, math.ceil(max(height, width) / ANALYSIS_SIZE))
    if factor == 1:
        return grey(pixels).numpy(), factor
    rows = factor * max(1, DOWNSAMPLE_ROWS // factor)
    whole = width // factor * factor
    parts = []
    for r0 in range(0, height, rows):
        part = grey(pixels[r0: r0 + rows])
        n = part.shape[0]
        full = n // factor * factor
        sums = [part[:full].view(-1, factor, width).sum(1)] if full else []
        if full < n:
            sums.append(part[full:].sum(0, keepdim=True))
        cols = torch.cat(sums)  # (blocks, width): sums over each block's rows
        counts = torch.full((cols.shape[0], 1), float(factor))
        counts[-1] = n - (cols.shape[0] - 1) * factor
        blocks = [cols[:, :whole].view(cols.shape[0], -1, factor).sum(2) / (counts * factor)]
        if whole < width:
            blocks.append(cols[:, whole:].sum(1, keepdim=True) / (counts * (width - whole)))
        parts.append(torch.cat(blocks, dim=1))
    return torch.cat(parts).numpy(), factor


def aa_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: first input index, number of taps, and weights (n_out, taps), float32.

    The triangle filter torch's ``interpolate(mode="bilinear", antialias=True,
    align_corners=False)`` uses along one axis (support scaled with the reduction), computed the
    same way, so resampling with these weights matches ``geometry.resize_2d`` to float rounding.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    centre = scale * (np.arange(n_out) + 0.5)
    start = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    stop = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    taps = int((stop - start).max())
    index = start[:, None] + np.arange(taps)[None]
    weights = np.clip(1.0 - np.abs((index - centre[:, None] + 0.5) * inv), 0.0, None)
    weights[index >= stop[:, None]] = 0.0
    total = weights.sum(1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return start, stop - start, weights.astype(np.float32)


def _resize_region(region: np.ndarray, grey: _Grey, size: tuple[int, int]) -> torch.Tensor:
    """Map and resize the crop to ``size`` in one streaming pass (``geometry.resize_2d``'s result).

    Rows: strips of grey values are folded into the output rows at once (the anti-aliasing filter
    as small matrix products), so the full-resolution grey crop is never stored; columns: torch's
    own anti-aliased resampling of the row-reduced image.
    """
    h, w = region.shape
    out_h, out_w = int(size[0]), int(size[1])
    if out_h >= h and out_w >= w:  # nothing shrinks: plain bilinear, as resize_2d does (small images)
        return geometry.resize_2d(grey(region)[None], size)[0]
    start, count, weights = aa_weights(h, out_h)
    stop = start + count
    reduced = torch.zeros((out_h, w), dtype=torch.float32)
    taps = np.arange(weights.shape[1])[None]
    for r0 in range(0, h, STRIP_ROWS):
        r1 = min(h, r0 + STRIP_ROWS)
        lo, hi = int(np.searchsorted(stop, r0, side="right")), int(np.searchsorted(start, r1, side="left"))
        if hi <= lo:
            continue
        cols = start[lo:hi, None] + taps - r0
        valid = (cols >= 0) & (cols < r1 - r0) & (taps < count[lo:hi, None])
        block = np.zeros((hi - lo, r1 - r0), dtype=np.float32)
        rows_i, taps_i = np.nonzero(valid)
        block[rows_i, cols[rows_i, taps_i]] = weights[lo:hi][rows_i, taps_i]
        reduced[lo:hi].addmm_(torch.from_numpy(block), grey(region[r0:r1]))
    if out_w == w and out_h <= h:
        return reduced
    return F.interpolate(reduced[None, None], size=(out_h, out_w), mode="bilinear", align_corners=False,
                         antialias=True)[0, 0]
