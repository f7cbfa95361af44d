"""BatchMammoAugment: the batched, device-side augmentation (one warp per image) and its exact resume."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from mammoclip_monai.data.batch_augment import BatchMammoAugment
from mammoclip_monai.data.transforms import NormalizeMammogramd
from mammoclip_monai.engines import RandomStates


def _phantom(n: int = 3, height: int = 64, width: int = 40, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    images = []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.15 * width) ** 2))
        images.append(0.1 + 0.8 * blob)
    return torch.tensor(np.stack(images)[:, None], dtype=torch.float32)


def _off(**kwargs) -> BatchMammoAugment:
    probs = {"affine_prob": 0.0, "elastic_prob": 0.0, "gamma_prob": 0.0, "contrast_prob": 0.0}
    probs.update(kwargs)
    return BatchMammoAugment(keys=("image", "image2"), **probs)


def test_everything_off_is_the_identity():
    images = _phantom()
    out = _off()({"image": images, "image2": images.clone(), "label": torch.ones(3)})
    torch.testing.assert_close(out["image"], images, atol=1e-5, rtol=0)
    assert torch.equal(out["label"], torch.ones(3))


def test_translation_moves_pixels_by_the_drawn_shift():
    """A pure shift of a quarter of the width moves the content by exactly that many pixels."""
    augment = _off(affine_prob=1.0)
    images = _phantom(n=1, height=32, width=40)
    params = augment.draw(1, 32, 40)
    params.update(angle=torch.zeros(1, dtype=torch.float64), shear=torch.zeros(1, 2, dtype=torch.float64),
                  scale=torch.ones(1, 2, dtype=torch.float64),
                  shift=torch.tensor([[0.25, 0.0]], dtype=torch.float64))
    out = augment.apply(images, params)
    # output(x) = input(x + 10): the image moves 10 px to the left, zeros come in on the right
    torch.testing.assert_close(out[..., :30], images[..., 10:], atol=1e-5, rtol=0)
    assert float(out[..., 31:].abs().max()) == 0.0


def test_rotation_matches_a_hand_rotation():
    """90 degrees on a square image is an exact transpose-and-flip: the matrix convention is right."""
    augment = _off(affine_prob=1.0)
    images = _phantom(n=1, height=24, width=24)
    params = augment.draw(1, 24, 24)
    params.update(angle=torch.full((1,), math.pi / 2, dtype=torch.float64),
                  shear=torch.zeros(1, 2, dtype=torch.float64),
                  scale=torch.ones(1, 2, dtype=torch.float64), shift=torch.zeros(1, 2, dtype=torch.float64))
    out = augment.apply(images, params)
    candidates = [torch.rot90(images, k, dims=(-2, -1)) for k in (1, 3)]
    assert min(float((out - c).abs().max()) for c in candidates) < 1e-4


def test_views_of_a_sample_share_the_geometry_and_samples_differ():
    images = _phantom(n=4, height=48, width=32)
    before = images.clone()
    augment = BatchMammoAugment(keys=("image", "image2"), affine_prob=1.0, elastic_prob=1.0, seed=3)
    out = augment({"image": images, "image2": images.clone()})
    assert torch.equal(images, before)  # the loader's batch is not modified in place
    torch.testing.assert_close(out["image"], out["image2"])
    assert float((out["image"] - images).abs().max()) > 0.05
    same = _phantom(n=1, height=48, width=32).expand(4, -1, -1, -1).contiguous()
    warped = augment({"image": same})["image"]
    assert float((warped[0] - warped[1]).abs().max()) > 0.01
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0


def test_draws_stay_in_their_ranges_and_follow_the_probabilities():
    augment = BatchMammoAugment(rotate_range=10, scale_range=0.1, translate_range=0.05, gamma_range=(0.8, 1.2),
                                contrast_range=0.1, affine_prob=0.5, seed=1)
    p = augment.draw(4000, 100, 60)
    assert float(p["angle"].abs().max()) <= math.radians(10) + 1e-9
    assert float((p["scale"] - 1).abs().max()) <= 0.1 + 1e-9
    assert float(p["shift"].abs().max()) <= 0.05 + 1e-9
    assert 0.8 - 1e-9 <= float(p["gamma"].min()) and float(p["gamma"].max()) <= 1.2 + 1e-9
    assert float((p["contrast"] - 1).abs().max()) <= 0.1 + 1e-9
    assert 0.45 < float(p["affine_on"].double().mean()) < 0.55
    assert 0.25 < float(p["elastic_on"].double().mean()) < 0.35
    assert float(p["offsets"][~p["elastic_on"]].abs().max()) == 0.0


def test_normalisation_is_applied_last_per_image():
    images = _phantom()
    normalize = NormalizeMammogramd(keys=("image",), mode="fixed", mean=0.25, std=0.5)
    out = BatchMammoAugment(keys=("image",), affine_prob=0, elastic_prob=0, gamma_prob=0, contrast_prob=0,
                            normalize=normalize)({"image": images})
    torch.testing.assert_close(out["image"], (images - 0.25) / 0.5, atol=1e-5, rtol=0)


def test_state_round_trips_through_a_weights_only_checkpoint():
    augment = BatchMammoAugment(seed=7)
    states = RandomStates(batch_transform=augment)
    augment.draw(5, 40, 30)
    buffer = io.BytesIO()
    torch.save(states.state_dict(), buffer)
    expected = augment.draw(5, 40, 30)
    resumed = BatchMammoAugment(seed=123)
    RandomStates(batch_transform=resumed).load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    again = resumed.draw(5, 40, 30)
    for key, value in expected.items():
        assert torch.equal(value, again[key]), key
    with pytest.raises(ValueError, match="augment_on_device"):
        RandomStates().load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))


def test_bad_arguments_and_inputs_are_refused():
    with pytest.raises(ValueError, match="rotate_range"):
        BatchMammoAugment(rotate_range=95)
    with pytest.raises(ValueError, match="gamma_range"):
        BatchMammoAugment(gamma_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="float batch"):
        BatchMammoAugment()({"image": torch.zeros(2, 1, 8, 8, dtype=torch.uint8)})
