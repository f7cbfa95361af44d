"""Ready-made transform chains for Python users (the bundle configs declare the same chain in JSON)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.transforms import Compose

from .transforms import (
    CanonicalLateralityd,
    CropBreastd,
    LoadMammogramd,
    NormalizeMammogramd,
    RandMammoAugmentd,
    ResizeKeepAspectd,
)


def preprocessing(spatial_size: Sequence[int] = (512, 320), keys: str = "image", box_keys: Sequence[str] = (),
                  normalize: bool = True, train: bool = False, voi: str = "auto",
                  allow_any_modality: bool = False, canonical_method: str = "image",
                  normalization: Mapping[str, Any] | None = None) -> Compose:
    """File path -> network-ready ``(1, H, W)`` tensor.

    Read (modality/VOI LUT, MONOCHROME1) -> crop to the breast -> chest wall to the left ->
    aspect-preserving resize and pad -> [augmentation when ``train``] -> normalisation.
    Deterministic steps come first, so MONAI's caching datasets can cache everything before the
    augmentation.

    ``normalization`` is the model's ``config.image_normalization`` (pass it: a model trained with
    another normalisation would otherwise see wrong intensities); ``None`` means the original
    Mammo-CLIP constants, the default of every preset.
    """
    steps = [
        LoadMammogramd(keys=keys, voi=voi, allow_any_modality=allow_any_modality),
        CropBreastd(keys=keys, box_keys=box_keys),
        CanonicalLateralityd(keys=keys, box_keys=box_keys, method=canonical_method),
        ResizeKeepAspectd(keys=keys, spatial_size=spatial_size, box_keys=box_keys),
    ]
    if train:
        steps.append(RandMammoAugmentd(keys=keys))
    if normalize:
        steps.append(NormalizeMammogramd(keys=keys) if normalization is None
                     else NormalizeMammogramd.from_config(normalization, keys=keys))
    return Compose(steps)
