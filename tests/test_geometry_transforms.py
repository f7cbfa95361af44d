"""Spatial transforms on constructed images: flips, crops, resizes, their inverses, boxes and affines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from mammoclip_monai.data import geometry
from mammoclip_monai.data.breast import find_breast
from mammoclip_monai.data.transforms import (
    CanonicalLateralityd,
    CropBreastd,
    NormalizeMammogramd,
    RandMammoAugmentd,
    ResizeKeepAspectd,
)


def constructed_mammogram(height: int = 600, width: int = 480, chest_wall: str = "left", seed: int = 0):
    """A half-ellipse 'breast' against one edge, a bright label and marker in the background corners.

    Returns the image (H, W) and the true breast box (continuous pixel coordinates).
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, ry, rx = height * 0.5, height * 0.38, width * 0.62
    inside = ((rows - cy) / ry) ** 2 + (cols / rx) ** 2 <= 1.0
    image = np.where(inside, 0.35 + 0.3 * np.exp(-((cols / rx) ** 2)), 0.0).astype(np.float32)
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    image[20:44, width - 90: width - 30] = 1.0  # burned-in label, nipple side, top corner
    image[height - 60: height - 44, width - 50: width - 34] = 1.0  # lead marker
    image = np.clip(image, 0, 1)
    r_idx, c_idx = np.nonzero(inside)
    box = np.array([c_idx.min(), r_idx.min(), c_idx.max() + 1, r_idx.max() + 1], dtype=np.float32)
    if chest_wall == "right":
        image = image[:, ::-1].copy()
        box = geometry.flip_boxes_horizontal(box[None], width)[0]
    return image, box


def as_meta(image: np.ndarray, laterality: str = "unknown") -> MetaTensor:
    return MetaTensor(torch.from_numpy(image.copy())[None], affine=torch.eye(3, dtype=torch.float64),
                      meta={"laterality": laterality})


def test_find_breast_leaves_out_label_and_marker():
    image, true_box = constructed_mammogram()
    region = find_breast(image)
    assert region.found and region.chest_wall_side == "left"
    assert geometry.box_iou(np.array(region.box, dtype=np.float32), true_box)[0, 0] >= 0.95


def test_find_breast_on_a_blank_image_keeps_everything():
    region = find_breast(np.zeros((100, 80), np.float32))
    assert not region.found and region.box == (0, 0, 80, 100)


def test_canonical_flips_right_breasts_and_their_boxes():
    left, _ = constructed_mammogram(chest_wall="left")
    right, _ = constructed_mammogram(chest_wall="right")
    lesion = np.array([[40.0, 250.0, 100.0, 310.0]], np.float32)
    lesion_right = geometry.flip_boxes_horizontal(lesion, left.shape[1])
    t = CanonicalLateralityd(keys="image", box_keys="boxes")
    out_l = t({"image": as_meta(left), "boxes": lesion})
    out_r = t({"image": as_meta(right), "boxes": lesion_right})
    assert torch.equal(out_l["image"].as_tensor(), out_r["image"].as_tensor())
    np.testing.assert_allclose(out_r["boxes"], lesion)
    np.testing.assert_allclose(out_l["boxes"], lesion)
    back = t.inverse(out_r)
    assert torch.equal(back["image"].as_tensor()[0], torch.from_numpy(right))
    np.testing.assert_allclose(back["boxes"], lesion_right)


def test_canonical_by_header_uses_laterality_then_pixels():
    right, _ = constructed_mammogram(chest_wall="right")
    t = CanonicalLateralityd(keys="image", method="header")
    # header says L: trusted even though the pixels disagree
    kept = t({"image": as_meta(right, laterality="L")})["image"]
    assert torch.equal(kept.as_tensor()[0], torch.from_numpy(right))
    # unknown laterality: the pixels decide
    flipped = t({"image": as_meta(right, laterality="unknown")})["image"]
    assert torch.equal(flipped.as_tensor()[0], torch.from_numpy(right[:, ::-1].copy()))


def test_crop_shifts_boxes_and_inverts():
    image, true_box = constructed_mammogram()
    lesion = np.array([[100.0, 260.0, 160.0, 330.0]], np.float32)
    t = CropBreastd(keys="image", box_keys="boxes", margin_fraction=0.0)
    out = t({"image": as_meta(image), "boxes": lesion})
    record = out["image"].applied_operations[-1]["extra_info"][geometry.GEOMETRY_KEY]
    assert out["image"].shape[1:] == (record["y1"] - record["y0"], record["x1"] - record["x0"])
    np.testing.assert_allclose(out["boxes"], lesion - [record["x0"], record["y0"], record["x0"], record["y0"]])
    crop_box = np.array([record["x0"], record["y0"], record["x1"], record["y1"]], np.float32)
    assert geometry.box_iou(crop_box, true_box)[0, 0] >= 0.95
    back = t.inverse(out)
    assert back["image"].shape == (1, *image.shape)
    np.testing.assert_allclose(back["boxes"], lesion)
    inside = back["image"].as_tensor()[0, record["y0"]:record["y1"], record["x0"]:record["x1"]]
    assert torch.equal(inside, torch.from_numpy(image)[record["y0"]:record["y1"], record["x0"]:record["x1"]])


@pytest.mark.parametrize("pad_position", ["end", "center"])
def test_resize_keeps_aspect_and_scales_boxes(pad_position):
    image = np.random.default_rng(1).random((300, 120)).astype(np.float32)
    box = np.array([[12.0, 30.0, 60.0, 150.0]], np.float32)
    t = ResizeKeepAspectd(keys="image", spatial_size=(200, 160), box_keys="boxes", pad_position=pad_position)
    out = t({"image": as_meta(image), "boxes": box})
    assert out["image"].shape == (1, 200, 160)
    record = out["image"].applied_operations[-1]["extra_info"][geometry.GEOMETRY_KEY]
    assert (record["resized_height"], record["resized_width"]) == (200, 80)  # 300x120 -> 200x80 exactly
    expected = box * (200 / 300) + [record["pad_left"], record["pad_top"]] * 2
    np.testing.assert_allclose(out["boxes"], expected, rtol=1e-6)
    padded = out["image"].as_tensor()[0]
    if pad_position == "end":
        assert torch.all(padded[:, 80:] == 0)
    else:
        assert torch.all(padded[:, :40] == 0) and torch.all(padded[:, 120:] == 0)
    back = t.inverse(out)
    assert back["image"].shape == (1, 300, 120)
    np.testing.assert_allclose(back["boxes"], box, rtol=1e-5)


def pipeline(size=(256, 160)):
    return Compose([
        CropBreastd(keys="image", box_keys="boxes"),
        CanonicalLateralityd(keys="image", box_keys="boxes"),
        ResizeKeepAspectd(keys="image", spatial_size=size, box_keys="boxes"),
    ])


@pytest.mark.parametrize("chest_wall", ["left", "right"])
def test_chain_boxes_and_heatmaps_map_back_to_the_lesion(chest_wall):
    image, _ = constructed_mammogram(chest_wall=chest_wall)
    width = image.shape[1]
    lesion = np.array([[120.0, 270.0, 170.0, 320.0]], np.float32)
    if chest_wall == "right":
        lesion = geometry.flip_boxes_horizontal(lesion, width)
    out = pipeline()({"image": as_meta(image), "boxes": lesion})
    # boxes: forward equals the analytic chain, backward returns the original
    np.testing.assert_allclose(geometry.boxes_from_original(lesion, out["image"]), out["boxes"], rtol=1e-5)
    np.testing.assert_allclose(geometry.boxes_to_original(out["boxes"], out["image"]), lesion, rtol=1e-4, atol=1e-3)
    # a known activation at the lesion's place in network space lands on the lesion in file space
    heat = torch.zeros(1, 256, 160)
    x0, y0, x1, y1 = out["boxes"][0].round().astype(int)
    heat[0, y0:y1, x0:x1] = 1.0
    back = geometry.image_to_original(heat, out["image"])[0]
    assert back.shape == image.shape
    peak_rows, peak_cols = torch.nonzero(back > 0.5, as_tuple=True)
    found = np.array([peak_cols.min(), peak_rows.min(), peak_cols.max() + 1, peak_rows.max() + 1], np.float32)
    assert geometry.box_iou(found, lesion)[0, 0] >= 0.8
    # a low-resolution feature-map heatmap is first resized to the network input
    small = torch.nn.functional.interpolate(heat[None], size=(16, 10), mode="area")[0]
    assert geometry.image_to_original(small, out["image"]).shape[-2:] == image.shape


def test_compose_inverse_restores_original_geometry():
    image, _ = constructed_mammogram(chest_wall="right")
    chain = pipeline()
    out = chain({"image": as_meta(image), "boxes": np.zeros((0, 4), np.float32)})
    back = chain.inverse(out)
    assert back["image"].shape == (1, *image.shape)
    assert back["image"].applied_operations == []
    assert torch.allclose(back["image"].affine, torch.eye(3, dtype=torch.float64), atol=1e-6)


def test_affine_tracks_pixels_through_the_chain():
    image, _ = constructed_mammogram(chest_wall="right")
    out = pipeline()({"image": as_meta(image), "boxes": np.zeros((0, 4), np.float32)})
    # the centre of output pixel (r, c) maps through the affine to the original pixel index
    r, c = 100, 50
    original = out["image"].affine.numpy() @ np.array([r, c, 1.0])
    box = np.array([[c, r, c + 1, r + 1]], np.float32)
    expected = geometry.boxes_to_original(box, out["image"])[0]
    np.testing.assert_allclose(original[:2], [(expected[1] + expected[3]) / 2 - 0.5,
                                              (expected[0] + expected[2]) / 2 - 0.5], atol=1e-4)


def test_geometry_records_reject_foreign_spatial_transforms():
    with pytest.raises(ValueError, match="Invertd"):
        geometry.geometry_records([{"class": "Rotate90", "extra_info": {}}])


def test_normalize_modes():
    image = torch.zeros(1, 10, 10)
    image[0, :5] = torch.linspace(0.2, 0.8, 50).reshape(5, 10)
    fixed = NormalizeMammogramd(keys="image")({"image": image})["image"]
    assert torch.allclose(fixed, (image - 0.3089279) / 0.25053555)
    breast = NormalizeMammogramd(keys="image", mode="breast")({"image": image})["image"]
    tissue = breast[image > 0.05]
    assert abs(float(tissue.mean())) < 1e-5 and abs(float(tissue.std()) - 1) < 1e-4


def test_augmentation_never_flips():
    image = torch.zeros(1, 128, 96)
    image[0, 10:40, 8:30] = 1.0  # bright block in the upper-left quadrant
    aug = RandMammoAugmentd(keys="image", prob=1.0, affine_prob=1.0, elastic_prob=1.0)
    aug.set_random_state(seed=0)
    for _ in range(40):
        out = aug({"image": MetaTensor(image.clone())})["image"].as_tensor()[0]
        assert out.min() >= 0 and out.max() <= 1
        rows, cols = torch.nonzero(out > 0.5, as_tuple=True)
        assert rows.float().mean() < 64 and cols.float().mean() < 48


def test_augmentation_is_reproducible_with_a_seed():
    image = torch.rand(1, 64, 48)
    outs = []
    for _ in range(2):
        aug = RandMammoAugmentd(keys="image").set_random_state(seed=3)
        outs.append(aug({"image": MetaTensor(image.clone())})["image"].as_tensor())
    assert torch.equal(outs[0], outs[1])
