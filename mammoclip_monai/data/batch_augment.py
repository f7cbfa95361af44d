"""Augmentation of a whole batch on the training device: one warp per image instead of two.

:class:`~mammoclip_monai.data.transforms.RandMammoAugmentd` runs per item in the loader's
processes: MONAI's ``RandAffine`` then ``Rand2DElastic``, two full-size sampling grids and two
resamplings, 90-320 ms an image at 1520 x 912 on one core (``docs/benchmarks.md``). That makes the
augmentation, not the cache read (3 ms), what bounds the loader. :class:`BatchMammoAugment` draws
the same kinds of random parameters, builds one sampling grid per image (the affine map plus an
elastic displacement upsampled from its control points) and resamples once, for the whole batch,
on the device the batch is on (a GPU in real training), then applies gamma, contrast and the
model's normalisation. The loader then only reads and collates.

Its random numbers come from its own ``torch.Generator`` on the CPU (the draws are a few numbers
an image, whatever the device), saved by :meth:`state_dict` so that a resumed run continues the
same sequence; checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["BatchMammoAugment", "check_angles"]


def check_angles(**ranges: float) -> None:
    """Rotation and shear ranges in degrees must lie in ``[0, 90)`` (shared with ``RandMammoAugmentd``)."""
    for name, value in ranges.items():
        if not 0 <= value < 90:
            raise ValueError(f"{name} must be in [0, 90) degrees, got {value}")


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


class BatchMammoAugment:
    """Affine + elastic + gamma + contrast (+ normalisation) on batched images ``(B, 1, H, W)`` in ``[0, 1]``.

    Arguments and ranges are those of ``RandMammoAugmentd`` (degrees, fractions, pixels); every
    image of a sample (``keys``: the CC and the MLO view) gets the same geometry, as there. No flip,
    deliberately (left / right and upper / lower appear in report text). ``normalize``: a
    per-image callable on ``{key: (1, H, W)}`` dicts (a ``NormalizeMammogramd``), applied last
    so that the loader need not.
    """

    def __init__(self, keys: Sequence[str] = ("image",), prob: float = 1.0, rotate_range: float = 20.0,
                 scale_range: float = 0.2, translate_range: float = 0.1, shear_range: float = 20.0,
                 affine_prob: float = 0.8, elastic_prob: float = 0.3, elastic_spacing: float = 0.15,
                 elastic_magnitude: Sequence[float] = (1.0, 3.0), gamma_range: Sequence[float] = (0.7, 1.5),
                 gamma_prob: float = 0.5, contrast_range: float = 0.2, contrast_prob: float = 0.5,
                 normalize: Callable[[dict], Mapping] | None = None, seed: int = 0) -> None:
        check_angles(rotate_range=rotate_range, shear_range=shear_range)
        for name, value in (("prob", prob), ("affine_prob", affine_prob), ("elastic_prob", elastic_prob),
                            ("gamma_prob", gamma_prob), ("contrast_prob", contrast_prob)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not (len(elastic_magnitude) == 2 and 0 <= elastic_magnitude[0] <= elastic_magnitude[1]):
            raise ValueError("elastic_magnitude must be (low, high) pixels with 0 <= low <= high, "
                             f"got {elastic_magnitude}")
        if not (len(gamma_range) == 2 and 0 < gamma_range[0] <= gamma_range[1]):
            raise ValueError(f"gamma_range must be (low, high) with 0 < low <= high, got {gamma_range}")
        if not 0 < elastic_spacing <= 1:
            raise ValueError(f"elastic_spacing must be a fraction of the image size in (0, 1], got {elastic_spacing}")
        self.keys = tuple(keys)
        self.prob, self.affine_prob, self.elastic_prob = float(prob), float(affine_prob), float(elastic_prob)
        self.gamma_prob, self.contrast_prob = float(gamma_prob), float(contrast_prob)
        self.rotate = math.radians(rotate_range)
        self.shear = math.tan(math.radians(shear_range))
        self.scale_range, self.translate_range = float(scale_range), float(translate_range)
        self.elastic_spacing = float(elastic_spacing)
        self.elastic_magnitude = tuple(float(m) for m in elastic_magnitude)
        self.gamma_range = tuple(float(g) for g in gamma_range)
        self.contrast_range = float(contrast_range)
        self.normalize = normalize
        self.generator = torch.Generator().manual_seed(int(seed))

    # ------------------------------------------------------------------ random state (exact resume)
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    # ------------------------------------------------------------------ parameters
    def draw(self, batch_size: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """The random parameters of one batch (CPU, float64): what :meth:`apply` uses, for tests and logs."""
        g, n = self.generator, batch_size
        active = torch.rand(n, generator=g, dtype=torch.float64) < self.prob
        affine_on = active & (torch.rand(n, generator=g, dtype=torch.float64) < self.affine_prob)
        angle = _uniform(g, n, -self.rotate, self.rotate)
        shear = torch.stack([_uniform(g, n, -self.shear, self.shear) for _ in range(2)], 1)
        scale = 1.0 + torch.stack([_uniform(g, n, -self.scale_range, self.scale_range) for _ in range(2)], 1)
        shift = torch.stack([_uniform(g, n, -self.translate_range, self.translate_range) for _ in range(2)], 1)
        elastic_on = active & (torch.rand(n, generator=g, dtype=torch.float64) < self.elastic_prob)
        spacing = max(4.0, self.elastic_spacing * min(height, width))
        grid_shape = (max(2, math.ceil(height / spacing) + 1), max(2, math.ceil(width / spacing) + 1))
        magnitude = _uniform(g, n, *self.elastic_magnitude)
        offsets = torch.randn(n, 2, *grid_shape, generator=g, dtype=torch.float64) * magnitude.view(n, 1, 1, 1)
        gamma_on = active & (torch.rand(n, generator=g, dtype=torch.float64) < self.gamma_prob)
        gamma = _uniform(g, n, *self.gamma_range)
        contrast_on = active & (torch.rand(n, generator=g, dtype=torch.float64) < self.contrast_prob)
        contrast = 1.0 + _uniform(g, n, -self.contrast_range, self.contrast_range)
        return {"affine_on": affine_on, "angle": angle, "shear": shear, "scale": scale, "shift": shift,
                "elastic_on": elastic_on, "offsets": offsets * elastic_on.view(n, 1, 1, 1),
                "gamma": torch.where(gamma_on, gamma, torch.ones_like(gamma)),
                "contrast": torch.where(contrast_on, contrast, torch.ones_like(contrast))}

    @staticmethod
    def theta(params: Mapping[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
        """``(B, 2, 3)`` output -> input maps in ``affine_grid``'s normalised coordinates (identity where off).

        Composed in pixel units about the image centre (rotation, shear, scale, translation, as
        MONAI's ``RandAffine``), then expressed in ``[-1, 1]`` coordinates of each axis.
        """
        n = params["angle"].shape[0]
        cos, sin = torch.cos(params["angle"]), torch.sin(params["angle"])
        eye = torch.eye(2, dtype=torch.float64).expand(n, 2, 2)
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        shear = eye.clone()
        shear[:, 0, 1], shear[:, 1, 0] = params["shear"][:, 0], params["shear"][:, 1]
        scale = torch.diag_embed(params["scale"])
        linear = rotation @ shear @ scale  # (x, y) pixels about the centre, output -> input
        shift = params["shift"] * torch.tensor([width, height], dtype=torch.float64)
        to_pixels = torch.diag(torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64))
        to_unit = torch.linalg.inv(to_pixels)
        linear_unit = to_unit @ linear @ to_pixels
        shift_unit = (to_unit @ shift.unsqueeze(-1)).squeeze(-1)
        on = params["affine_on"].view(n, 1, 1)
        linear_unit = torch.where(on, linear_unit, eye)
        shift_unit = torch.where(on.view(n, 1), shift_unit, torch.zeros_like(shift_unit))
        return torch.cat([linear_unit, shift_unit.unsqueeze(-1)], -1)

    # ------------------------------------------------------------------ application
    def apply(self, images: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Warp, gamma, contrast and clip ``images`` ``(B, C, H, W)`` (float in ``[0, 1]``) with ``params``.

        One image at a time: each step runs only where its draw is on (an image with neither an
        affine nor an elastic draw is not resampled), and a full-size grid of one image stays in
        cache where a batch's would not (measured: a batch of 8 at once was slower per image on CPU).
        """
        n, channels, height, width = images.shape
        device = images.device
        theta = self.theta(params, height, width).to(device, torch.float32)
        unit = torch.tensor([2.0 / width, 2.0 / height], device=device).view(1, 2, 1, 1)
        out = torch.empty_like(images, dtype=torch.float32)
        for i in range(n):
            image = images[i: i + 1].float()
            elastic = bool(params["elastic_on"][i])
            if bool(params["affine_on"][i]) or elastic:
                grid = F.affine_grid(theta[i: i + 1], [1, channels, height, width], align_corners=False)
                if elastic:
                    offsets = params["offsets"][i: i + 1].to(device, torch.float32)  # (1, 2, gh, gw) pixels (x, y)
                    field = F.interpolate(offsets, size=(height, width), mode="bicubic", align_corners=True)
                    grid = grid + (field * unit).permute(0, 2, 3, 1)
                image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            gamma = float(params["gamma"][i])
            if gamma != 1.0:
                low, high = image.amin(), image.amax()
                span = high - low
                image = ((image - low) / (span + 1e-7)).clamp_min_(0.0).pow_(gamma).mul_(span).add_(low)
            contrast = float(params["contrast"][i])
            if contrast != 1.0:
                mean = image.mean()
                image = (image - mean).mul_(contrast).add_(mean)
            torch.clamp(image, 0.0, 1.0, out=out[i: i + 1])  # never in place: image may be the input
        return out.to(images.dtype)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch with each key in ``keys`` augmented (one draw per sample, shared by its keys)."""
        out = dict(batch)
        keys = [k for k in self.keys if isinstance(out.get(k), torch.Tensor)]
        if not keys:
            return out
        first = out[keys[0]]
        params = self.draw(first.shape[0], first.shape[-2], first.shape[-1])
        with torch.no_grad():
            for key in keys:
                images = out[key].as_tensor() if hasattr(out[key], "as_tensor") else out[key]
                if not images.dtype.is_floating_point or images.ndim != 4:
                    raise ValueError(f"BatchMammoAugment: {key!r} must be a float batch (B, C, H, W) in [0, 1], "
                                     f"got {images.dtype} {tuple(images.shape)}")
                out[key] = self.apply(images, params)
            if self.normalize is not None:
                for i in range(first.shape[0]):
                    normalised = self.normalize({key: out[key][i] for key in keys})
                    for key in keys:
                        out[key][i] = normalised[key]
        return out
