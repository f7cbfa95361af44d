"""MONAI transforms for mammograms: read, canonicalise, crop, resize, normalise, augment.

The usual chain (what the bundle configs declare)::

    LoadMammogramd -> CropBreastd -> CanonicalLateralityd -> ResizeKeepAspectd
        -> [RandMammoAugmentd at train time] -> NormalizeMammogramd

Cropping before flipping makes the flip copy only the breast. The three spatial transforms are
invertible (``Compose.inverse`` / ``Invertd`` work), move boxes given by ``box_keys`` with the
image, and leave a self-contained record in ``applied_operations`` so that
:mod:`mammoclip_monai.data.geometry` can map heatmaps and boxes back to the file's pixels later.
Nothing ever flips up-down, and augmentation never flips at all: report text says "left",
"upper", "inner".
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    InvertibleTransform,
    MapTransform,
    Rand2DElastic,
    RandAdjustContrast,
    RandAffine,
    RandomizableTransform,
    RandScaleIntensityFixedMean,
    Transform,
)
from monai.transforms.inverse import TraceableTransform
from monai.utils import ensure_tuple, ensure_tuple_rep
from monai.utils.enums import TraceKeys

from ..utils.errors import as_flag
from . import geometry
from .batch_augment import check_angles
from .breast import find_breast
from .reader import DEFAULT_MAX_PIXELS, read_mammogram

# ----------------------------------------------------------------------------- reading


class LoadMammogram(Transform):
    """Read one DICOM/PNG/JPEG/TIFF mammogram into a ``(1, H, W)`` float32 ``MetaTensor`` in ``[0, 1]``.

    Applies the modality LUT, the VOI LUT or window, and MONOCHROME1 inversion (see
    :func:`mammoclip_monai.data.reader.read_mammogram`). The affine carries the pixel spacing
    (1 mm when unknown); the metadata holds only the allow-listed keys of docs/data_formats.md.
    ``max_pixels`` caps the size a file may declare (refused before decoding: a bad header cannot
    exhaust memory).
    """

    def __init__(self, voi: str = "auto", window_index: int = 0, allow_any_modality: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.voi = voi
        self.window_index = window_index
        self.allow_any_modality = as_flag(allow_any_modality, "allow_any_modality")
        self.max_pixels = max_pixels

    def __call__(self, path: str) -> MetaTensor:
        array, meta = read_mammogram(str(path), voi=self.voi, window_index=self.window_index,
                                     allow_any_modality=self.allow_any_modality, max_pixels=self.max_pixels)
        spacing = [s if math.isfinite(s) and s > 0 else 1.0 for s in meta["pixel_spacing"]]
        affine = torch.diag(torch.tensor([spacing[0], spacing[1], 1.0], dtype=torch.float64))
        return MetaTensor(torch.from_numpy(array)[None], affine=affine, meta=meta)


class LoadMammogramd(MapTransform):
    """Dictionary version of :class:`LoadMammogram`.

    ``fill_from_data`` names metadata keys (``laterality``, ``view``) that a datalist may supply
    (from a CSV column of the same name) for files whose headers lack them; the header wins when
    it knows the value.
    """

    def __init__(self, keys: KeysCollection = "image", voi: str = "auto", window_index: int = 0,
                 allow_any_modality: bool = False, fill_from_data: Sequence[str] = ("laterality", "view"),
                 allow_missing_keys: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMammogram(voi=voi, window_index=window_index, allow_any_modality=allow_any_modality,
                                    max_pixels=max_pixels)
        self.fill_from_data = tuple(fill_from_data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = self.loader(d[key])
            for name in self.fill_from_data:
                value = d.get(name)
                if image.meta.get(name) == "unknown" and isinstance(value, str) and value:
                    image.meta[name] = value.strip().upper()
            d[key] = image
        return d


# ----------------------------------------------------------------------------- geometry helpers


def _with_record(transform: TraceableTransform, image: torch.Tensor, new_data: torch.Tensor, record: dict,
                 index_map: np.ndarray) -> torch.Tensor:
    """Wrap ``new_data`` as the output of ``transform`` on ``image``: trace entry and updated affine.

    ``index_map`` (3 x 3) maps output pixel indices to input pixel indices, so the new affine is
    ``affine @ index_map`` (MONAI's convention).
    """
    if not (isinstance(image, MetaTensor) and get_track_meta()):
        return new_data
    meta_info = TraceableTransform.track_transform_meta(
        image, sp_size=tuple(new_data.shape[1:]), affine=torch.as_tensor(index_map, dtype=torch.float64),
        extra_info={geometry.GEOMETRY_KEY: record}, orig_size=tuple(image.shape[1:]),
        transform_info=transform.get_transform_info(), lazy=False)
    return MetaTensor(new_data).copy_meta_from(meta_info)


def _index_map(record: Mapping) -> np.ndarray:
    """Output-index -> input-index matrix of one geometry record (pixel centres, MONAI convention)."""
    m = np.eye(3)
    if record["op"] == "hflip" and record["flipped"]:
        m[1, 1], m[1, 2] = -1.0, record["width"] - 1.0
    elif record["op"] == "crop":
        m[0, 2], m[1, 2] = record["y0"], record["x0"]
    elif record["op"] == "resize_pad":
        sy = record["resized_height"] / record["orig_height"]
        sx = record["resized_width"] / record["orig_width"]
        m[0, 0], m[1, 1] = 1.0 / sy, 1.0 / sx
        m[0, 2] = (0.5 - record["pad_top"]) / sy - 0.5
        m[1, 2] = (0.5 - record["pad_left"]) / sx - 0.5
    return m


class _GeometryTransformd(MapTransform, InvertibleTransform):
    """Shared machinery of the spatial transforms.

    Each key is planned from its own pixels (two views of a breast are two different images),
    unless ``source_key`` names the key that decides for all (an image and its mask). Boxes in
    ``box_keys`` move with the key at the same position in ``box_ref_keys`` (default: the first
    key). Keys in ``label_keys`` are interpolated nearest-neighbour.
    """

    def __init__(self, keys: KeysCollection, box_keys: KeysCollection = (), box_ref_keys: KeysCollection = (),
                 source_key: str | None = None, label_keys: KeysCollection = (),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_keys = ensure_tuple(box_keys)
        refs = ensure_tuple(box_ref_keys) or (self.keys[0],)
        self.box_ref_keys = refs if len(refs) == len(self.box_keys) else ensure_tuple_rep(refs[0], len(self.box_keys))
        self.source_key = source_key
        self.label_keys = set(ensure_tuple(label_keys))

    @abstractmethod
    def plan(self, image: torch.Tensor) -> dict:
        """The geometry record for this image."""

    @abstractmethod
    def apply(self, image: torch.Tensor, record: Mapping, key: Hashable) -> torch.Tensor:
        """Apply ``record`` to one image-like tensor."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shared = self.plan(d[self.source_key]) if self.source_key is not None else None
        records = {}
        for key in self.key_iterator(d):
            image = d[key]
            record = records[key] = shared if shared is not None else self.plan(image)
            d[key] = _with_record(self, image, self.apply(image, record, key), record, _index_map(record))
        self._move_boxes(d, records, geometry.forward_boxes)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        records = {}
        for key in self.key_iterator(d):
            image = d[key]
            entry = self.pop_transform(image)
            record = records[key] = entry[TraceKeys.EXTRA_INFO][geometry.GEOMETRY_KEY]
            mode = "nearest" if key in self.label_keys else "bilinear"
            restored = geometry.inverse_image(image.as_tensor() if isinstance(image, MetaTensor) else image,
                                              record, mode=mode)
            if isinstance(image, MetaTensor):
                out = MetaTensor(restored).copy_meta_from(image)
                out.affine = image.affine @ torch.as_tensor(np.linalg.inv(_index_map(record)), dtype=torch.float64)
                restored = out
            d[key] = restored
        self._move_boxes(d, records, geometry.inverse_boxes)
        return d

    def _move_boxes(self, d: dict, records: Mapping[Hashable, Mapping], move) -> None:
        for box_key, ref_key in zip(self.box_keys, self.box_ref_keys):
            if box_key in d and ref_key in records:
                d[box_key] = move(geometry.as_boxes(d[box_key]), records[ref_key])


class CanonicalLateralityd(_GeometryTransformd):
    """Mirror images so every breast has its chest wall at the left edge (nipple pointing right).

    ``method="image"`` (default) decides from the pixels (where the tissue mass is), which also
    copes with files stored against the display convention; ``method="header"`` mirrors right
    breasts by their laterality tag (falling back to the pixels when it is unknown). Nothing is
    ever flipped up-down. Boxes in ``box_keys`` are mirrored with the image.
    """

    def __init__(self, keys: KeysCollection = "image", box_keys: KeysCollection = (), method: str = "image",
                 box_ref_keys: KeysCollection = (), source_key: str | None = None, label_keys: KeysCollection = (),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, box_keys, box_ref_keys, source_key, label_keys, allow_missing_keys)
        if method not in ("image", "header"):
            raise ValueError(f"method must be 'image' or 'header', got {method!r}")
        self.method = method

    def plan(self, image: torch.Tensor) -> dict:
        laterality = image.meta.get("laterality", "unknown") if isinstance(image, MetaTensor) else "unknown"
        if self.method == "header" and laterality in ("L", "R"):
            flip = laterality == "R"
        else:
            flip = find_breast(image).chest_wall_side == "right"
        return geometry.flip_record(image.shape[-2], image.shape[-1], flip)

    def apply(self, image: torch.Tensor, record: Mapping, key: Hashable) -> torch.Tensor:
        data = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        return torch.flip(data, dims=(-1,)) if record["flipped"] else data


class CropBreastd(_GeometryTransformd):
    """Crop to the breast's bounding box, leaving out burned-in labels, markers and film borders.

    The box comes from :func:`mammoclip_monai.data.breast.find_breast` on each key (or on
    ``source_key`` for all keys, e.g. an image and its mask); boxes are shifted (and clipped) with
    it. When no breast is found, or it covers less than ``min_area_fraction`` of the image,
    nothing is cropped.
    """

    def __init__(self, keys: KeysCollection = "image", box_keys: KeysCollection = (), margin_fraction: float = 0.02,
                 relative_threshold: float = 0.1, border_fraction: float = 0.01, trim_fraction: float = 0.02,
                 min_area_fraction: float = 0.02, box_ref_keys: KeysCollection = (), source_key: str | None = None,
                 label_keys: KeysCollection = (), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, box_keys, box_ref_keys, source_key, label_keys, allow_missing_keys)
        self.margin_fraction = margin_fraction
        self.relative_threshold = relative_threshold
        self.border_fraction = border_fraction
        self.trim_fraction = trim_fraction
        self.min_area_fraction = min_area_fraction

    def plan(self, image: torch.Tensor) -> dict:
        height, width = int(image.shape[-2]), int(image.shape[-1])
        region = find_breast(image, relative_threshold=self.relative_threshold, border_fraction=self.border_fraction,
                             trim_fraction=self.trim_fraction, margin_fraction=self.margin_fraction)
        x0, y0, x1, y1 = region.box
        if not region.found or region.area_fraction < self.min_area_fraction:
            x0, y0, x1, y1 = 0, 0, width, height
        return geometry.crop_record(x0, y0, x1, y1, height, width)

    def apply(self, image: torch.Tensor, record: Mapping, key: Hashable) -> torch.Tensor:
        data = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        return data[..., record["y0"]: record["y1"], record["x0"]: record["x1"]]


class ResizeKeepAspectd(_GeometryTransformd):
    """Resize to fit ``spatial_size`` (H, W) without distorting the aspect ratio, then pad.

    ``pad_position="end"`` pads at the bottom and right, which after canonicalisation is the
    nipple side, so the chest wall stays at the left edge of every input; ``"center"`` centres.
    Shrinking is anti-aliased (fine calcifications survive as small bright spots instead of
    aliasing away). Keys listed in ``label_keys`` use nearest-neighbour interpolation.
    """

    def __init__(self, keys: KeysCollection = "image", spatial_size: Sequence[int] = (512, 320),
                 box_keys: KeysCollection = (), pad_position: str = "end", label_keys: KeysCollection = (),
                 pad_value: float = 0.0, box_ref_keys: KeysCollection = (), source_key: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, box_keys, box_ref_keys, source_key, label_keys, allow_missing_keys)
        if pad_position not in ("end", "center"):
            raise ValueError(f"pad_position must be 'end' or 'center', got {pad_position!r}")
        size = tuple(int(s) for s in ensure_tuple(spatial_size))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"spatial_size must be (H, W) with positive entries, got {spatial_size!r}")
        self.spatial_size = size
        self.pad_position = pad_position
        self.pad_value = pad_value

    def plan(self, image: torch.Tensor) -> dict:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        out_h, out_w = self.spatial_size
        scale = min(out_h / h, out_w / w)
        new_h, new_w = min(out_h, max(1, round(h * scale))), min(out_w, max(1, round(w * scale)))
        if self.pad_position == "end":
            top = left = 0
        else:
            top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
        return geometry.resize_pad_record((h, w), (new_h, new_w), (out_h, out_w), top, left)

    def apply(self, image: torch.Tensor, record: Mapping, key: Hashable) -> torch.Tensor:
        data = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        mode = "nearest" if key in self.label_keys else "bilinear"
        resized = geometry.resize_2d(data, (record["resized_height"], record["resized_width"]), mode=mode)
        out = resized.new_full((data.shape[0], record["out_height"], record["out_width"]), self.pad_value)
        top, left = record["pad_top"], record["pad_left"]
        out[:, top: top + record["resized_height"], left: left + record["resized_width"]] = resized
        return out


# ----------------------------------------------------------------------------- intensity

ORIGINAL_MEAN = 0.3089279
ORIGINAL_STD = 0.25053555


class NormalizeMammogramd(MapTransform):
    """Standardise intensities for the network.

    ``mode="fixed"``: ``(x - mean) / std`` with constants (default: the original Mammo-CLIP's
    dataset statistics, so its checkpoints see what they were trained on). ``mode="breast"``:
    z-score over the breast pixels only (those above ``foreground``), so the amount of black
    background and padding does not shift the statistics.

    A model says which one it was trained with (``MammoCLIPConfig.image_normalization``, the
    arguments of this transform as a dict); build the transform from that dict with
    :meth:`from_config` so that training, evaluation and inference agree.
    """

    MODES = ("fixed", "breast")
    CONFIG_KEYS = ("mode", "mean", "std", "foreground")

    def __init__(self, keys: KeysCollection = "image", mode: str = "fixed", mean: float = ORIGINAL_MEAN,
                 std: float = ORIGINAL_STD, foreground: float = 0.05, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if not math.isfinite(float(mean)):
            raise ValueError(f"mean must be finite, got {mean}")
        if mode == "fixed" and not (math.isfinite(float(std)) and std > 0):
            raise ValueError(f"std must be positive and finite, got {std}")
        if not 0.0 <= float(foreground) < 1.0:
            raise ValueError(f"foreground must be in [0, 1) (intensities before normalisation), got {foreground}")
        self.mode, self.mean, self.std, self.foreground = mode, float(mean), float(std), float(foreground)

    @classmethod
    def validate_config(cls, normalization: Mapping[str, Any], where: str | None = "image_normalization"
                        ) -> dict[str, Any]:
        """The checked normalisation dict (numbers as floats), or a ``ValueError`` that says what is wrong.

        Keys: ``mode`` (required: ``"fixed"`` or ``"breast"``), ``mean`` and ``std`` (``"fixed"`` only;
        default: the original's constants), ``foreground`` (``"breast"`` threshold). A mean or std
        with ``"breast"`` is an error: that mode computes them per image, so a value there would be ignored.
        ``where`` starts each message (the config key the dict came from).
        """
        at = f"{where}: " if where else ""
        if not isinstance(normalization, Mapping):
            raise ValueError(f"{at}must be a dict of NormalizeMammogramd arguments, "
                             f"got {type(normalization).__name__}")
        unknown = sorted(set(normalization) - set(cls.CONFIG_KEYS))
        if unknown:
            raise ValueError(f"{at}unknown key(s) {unknown}; valid keys: {list(cls.CONFIG_KEYS)}")
        mode = normalization.get("mode")
        if mode not in cls.MODES:
            raise ValueError(f"{at}mode must be one of {list(cls.MODES)}, got {mode!r}")
        if mode == "breast" and ({"mean", "std"} & set(normalization)):
            raise ValueError(f"{at}mode 'breast' computes mean and std per image; "
                             "remove 'mean' / 'std' or use mode 'fixed'")
        checked: dict[str, Any] = {"mode": mode}
        for key in ("mean", "std", "foreground"):
            if key in normalization:
                value = normalization[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"{at}{key} must be a finite number, got {value!r}")
                checked[key] = float(value)
        if checked.get("std", 1.0) <= 0:
            raise ValueError(f"{at}std must be > 0, got {checked['std']}")
        if not 0.0 <= checked.get("foreground", 0.05) < 1.0:
            raise ValueError(f"{at}foreground must be in [0, 1), got {checked['foreground']}")
        return checked

    @classmethod
    def from_config(cls, normalization: Mapping[str, Any], keys: KeysCollection = "image",
                    allow_missing_keys: bool = False) -> NormalizeMammogramd:
        """The transform a model's ``config.image_normalization`` describes (validated first)."""
        return cls(keys=keys, allow_missing_keys=allow_missing_keys, **cls.validate_config(normalization))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if self.mode == "fixed":
                mean, std = self.mean, self.std
            else:
                values = image[image > self.foreground]
                if values.numel() < 2:
                    values = image.reshape(-1)
                mean, std = float(values.mean()), float(values.std())
                std = std if std > 1e-6 else 1.0
            d[key] = (image - mean) / std
        return d


# ----------------------------------------------------------------------------- augmentation


class RandMammoAugmentd(RandomizableTransform, MapTransform):
    """Train-time augmentation that keeps anatomy words true: affine, elastic, gamma, contrast.

    There is deliberately no flip (left/right and upper/lower appear in report text). Ranges:
    ``rotate_range`` and ``shear_range`` in degrees, ``scale_range`` as a fraction (0.2 means
    0.8-1.2), ``translate_range`` as a fraction of the image size, ``elastic_magnitude`` in
    pixels of displacement at control points ``elastic_spacing`` (fraction of the image size)
    apart, ``gamma_range`` for the gamma curve, ``contrast_range`` as a fractional scaling about the
    mean. Expects intensities in ``[0, 1]`` (apply it before normalisation); output is clipped
    to ``[0, 1]``. All keys get the same random geometry (labels use nearest interpolation).
    """

    def __init__(self, keys: KeysCollection = "image", prob: float = 1.0, rotate_range: float = 20.0,
                 scale_range: float = 0.2, translate_range: float = 0.1, shear_range: float = 20.0,
                 affine_prob: float = 0.8, elastic_prob: float = 0.3, elastic_spacing: float = 0.15,
                 elastic_magnitude: Sequence[float] = (1.0, 3.0), gamma_range: Sequence[float] = (0.7, 1.5),
                 gamma_prob: float = 0.5, contrast_range: float = 0.2, contrast_prob: float = 0.5,
                 label_keys: KeysCollection = (), allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        check_angles(rotate_range=rotate_range, shear_range=shear_range)
        self.translate_range = float(translate_range)
        self.elastic_spacing = float(elastic_spacing)
        self.label_keys = set(ensure_tuple(label_keys))
        shear = math.tan(math.radians(shear_range))
        self.affine = RandAffine(prob=affine_prob, rotate_range=(math.radians(rotate_range),),
                                 shear_range=(shear, shear), translate_range=(0.0, 0.0),
                                 scale_range=(scale_range, scale_range), padding_mode="zeros", cache_grid=False)
        self.elastic = Rand2DElastic(spacing=(1.0, 1.0), magnitude_range=tuple(elastic_magnitude), prob=elastic_prob,
                                     padding_mode="zeros")
        self.gamma = RandAdjustContrast(prob=gamma_prob, gamma=tuple(gamma_range))
        self.contrast = RandScaleIntensityFixedMean(prob=contrast_prob, factors=contrast_range)
        self._children = (self.affine, self.elastic, self.gamma, self.contrast)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for child in self._children:
            child.set_random_state(state=self.R)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        keys = list(self.key_iterator(d))
        if not self._do_transform or not keys:
            return d
        height, width = (int(s) for s in d[keys[0]].shape[-2:])
        self.affine.rand_affine_grid.translate_range = (
            (-self.translate_range * height, self.translate_range * height),
            (-self.translate_range * width, self.translate_range * width))
        self.elastic.deform_grid.spacing = ensure_tuple_rep(max(4.0, self.elastic_spacing * min(height, width)), 2)
        self.affine.randomize()
        self.elastic.randomize((height, width))
        self.gamma.randomize(None)
        self.contrast.randomize(None)
        for key in keys:
            image = d[key]
            mode = "nearest" if key in self.label_keys else "bilinear"
            image = self.affine(image, mode=mode, randomize=False)
            image = self.elastic(image, mode=mode, randomize=False)
            if key not in self.label_keys:
                image = self.contrast(self.gamma(image, randomize=False), randomize=False).clamp(0.0, 1.0)
            d[key] = image
        return d
