"""The transform chains of the package, defined once: Python users and the bundle configs build them here.

Every chain keeps one order: the deterministic steps (read -> crop -> canonicalise -> resize, cacheable)
-> per-sample steps that must not be cached (the report text and its tokens) -> [random augmentation]
-> normalisation. :func:`mammogram_chain` is that order; :func:`preprocessing` is the file-path ->
network-input chain for Python users, and the configs call :func:`mammogram_chain` with their cached
deterministic step (``train.json``'s ``deterministic_transforms``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monai.transforms import Compose

from .preprocess import PreprocessMammogramd
from .transforms import NormalizeMammogramd, RandMammoAugmentd

__all__ = ["mammogram_chain", "preprocessing"]


def mammogram_chain(deterministic: Callable | Sequence[Callable], normalization: Mapping[str, Any] | None = None,
                    keys: str | Sequence[str] = "image", sample_steps: Sequence[Callable] = (),
                    augment: bool = False, normalize: bool = True) -> Compose:
    """``deterministic`` -> ``sample_steps`` -> [:class:`RandMammoAugmentd` when ``augment``] ->
    [:class:`NormalizeMammogramd` of ``normalization`` when ``normalize``], on the image ``keys``.

    ``normalization`` is the model's ``config.image_normalization`` (pass it: a model trained with
    another normalisation would otherwise see wrong intensities); ``None`` means the original
    Mammo-CLIP constants, the default of every preset. Training with ``augment_on_device`` leaves
    augmentation and normalisation to the batch transform (``augment=normalize=False`` here).
    """
    steps = list(deterministic) if isinstance(deterministic, Sequence) else [deterministic]
    steps += list(sample_steps)
    if augment:
        steps.append(RandMammoAugmentd(keys=keys))
    if normalize:
        steps.append(NormalizeMammogramd(keys=keys) if normalization is None
                     else NormalizeMammogramd.from_config(normalization, keys=keys))
    return Compose(steps)


def preprocessing(spatial_size: Sequence[int] = (512, 320), keys: str = "image", box_keys: Sequence[str] = (),
                  normalize: bool = True, train: bool = False, voi: str = "auto",
                  allow_any_modality: bool = False, canonical_method: str = "image",
                  normalization: Mapping[str, Any] | None = None) -> Compose:
    """File path -> network-ready ``(1, H, W)`` tensor.

    Read (modality/VOI LUT, MONOCHROME1) -> crop to the breast -> chest wall to the left ->
    aspect-preserving resize and pad (one pass: :class:`PreprocessMammogramd`, the same output as
    ``LoadMammogramd -> CropBreastd -> CanonicalLateralityd -> ResizeKeepAspectd``) ->
    [augmentation when ``train``] -> normalisation (:func:`mammogram_chain`). Deterministic steps
    come first, so a caching dataset (or :class:`~mammoclip_monai.data.cache.CachedPreprocessd`)
    can cache them.
    """
    read = PreprocessMammogramd(keys=keys, spatial_size=spatial_size, box_keys=box_keys, voi=voi,
                                allow_any_modality=allow_any_modality, method=canonical_method)
    return mammogram_chain(read, normalization, keys=keys, augment=train, normalize=normalize)
