"""Ready-made transform chains for Python users (the bundle configs declare the same chain in JSON)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.transforms import Compose

from .preprocess import PreprocessMammogramd
from .transforms import NormalizeMammogramd, RandMammoAugmentd


def preprocessing(spatial_size: Sequence[int] = (512, 320), keys: str = "image", box_keys: Sequence[str] = (),
                  normalize: bool = True, train: bool = False, voi: str = "auto",
                  allow_any_modality: bool = False, canonical_method: str = "image",
                  normalization: Mapping[str, Any] | None = None) -> Compose:
    """File path -> network-ready ``(1, H, W)`` tensor.

    Read (modality/VOI LUT, MONOCHROME1) -> crop to the breast -> chest wall to the left ->
    aspect-preserving resize and pad (one pass: :class:`PreprocessMammogramd`, the same output as
    ``LoadMammogramd -> CropBreastd -> CanonicalLateralityd -> ResizeKeepAspectd``) ->
    [augmentation when ``train``] -> normalisation. Deterministic steps come first, so a caching
    dataset (or :class:`~mammoclip_monai.data.cache.CachedPreprocessd`) can cache them.

    ``normalization`` is the model's ``config.image_normalization`` (pass it: a model trained with
    another normalisation would otherwise see wrong intensities); ``None`` means the original
    Mammo-CLIP constants, the default of every preset.
    """
    steps = [PreprocessMammogramd(keys=keys, spatial_size=spatial_size, box_keys=box_keys, voi=voi,
                                  allow_any_modality=allow_any_modality, method=canonical_method)]
    if train:
        steps.append(RandMammoAugmentd(keys=keys))
    if normalize:
        steps.append(NormalizeMammogramd(keys=keys) if normalization is None
                     else NormalizeMammogramd.from_config(normalization, keys=keys))
    return Compose(steps)
