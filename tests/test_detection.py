"""Detection: box conventions, boxes through the preprocessing chain and back, the network, the engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammoclip_monai.data.cache import CachedPreprocessd
from mammoclip_monai.data.datalists import vindr_datalist
from mammoclip_monai.data.pipelines import mammogram_chain
from mammoclip_monai.detection import (
    DEFAULT_CLASSES,
    DetectionEvaluator,
    DetectionMetrics,
    DetectionTargetsd,
    DetectionTrainer,
    GeometryRecordd,
    MammoDetector,
    RandDetectionAugmentd,
    boxes_to_file,
    class_boxes,
    detection_collate,
    detection_datalist,
    from_monai_order,
    initialise_encoder,
    to_monai_order,
)
from mammoclip_monai.networks import create_model

SIZE = (192, 128)


@pytest.fixture(scope="module")
def items(synthetic_dataset):
    return detection_datalist(vindr_datalist(synthetic_dataset), DEFAULT_CLASSES)


def eval_chain(cache_dir, size=SIZE):
    read = CachedPreprocessd(keys=["image"], spatial_size=size, cache_dir=cache_dir, box_keys=["det_boxes"],
                             box_ref_keys=["image"])
    return mammogram_chain([read, GeometryRecordd()], None)


def test_monai_order_swaps_x_and_y_and_is_its_own_inverse():
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert to_monai_order(boxes).tolist() == [[2.0, 1.0, 4.0, 3.0]]
    assert torch.equal(from_monai_order(to_monai_order(boxes)), boxes)


def test_class_boxes_keeps_the_detector_classes_and_drops_the_rest():
    boxes = [[0, 0, 10, 10], [5, 5, 9, 9], [1, 1, 2, 2]]
    kept, labels = class_boxes(boxes, ["Mass", "Asymmetry", "suspicious calcification"], DEFAULT_CLASSES)
    assert kept.tolist() == [[0, 0, 10, 10], [1, 1, 2, 2]]
    assert labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="2 box label"):
        class_boxes(boxes, ["Mass", "Mass"], DEFAULT_CLASSES)


def test_datalist_keeps_negatives_and_a_file_pixel_copy(items):
    assert any(len(it["det_boxes"]) == 0 for it in items), "images without findings must stay as negatives"
    with_boxes = [it for it in items if len(it["det_boxes"])]
    assert with_boxes
    for it in with_boxes:
        np.testing.assert_array_equal(it["det_boxes"], it["file_boxes"])
        assert it["det_boxes"] is not it["file_boxes"]


def test_boxes_round_trip_file_to_network_to_file_within_one_pixel(items, tmp_path):
    chain = eval_chain(tmp_path / "cache")
    flipped = 0
    checked = 0
    for item in items:
        if not len(item["file_boxes"]):
            continue
        out = chain(dict(item))
        records = out["geometry"]
        flipped += any(r["op"] == "hflip" and r["flipped"] for r in records)
        back = boxes_to_file(out["det_boxes"], records)
        inside = item["file_boxes"]  # boxes inside the breast crop survive it unclipped
        np.testing.assert_allclose(back, inside, atol=1.0)
        # and the network-frame box is a different place (the chain really moved it)
        assert not np.allclose(out["det_boxes"], inside, atol=1.0)
        checked += 1
    assert checked >= 3 and flipped >= 1, "the test must cover right breasts (flipped) too"


def test_augmentation_flips_boxes_with_the_image(items, tmp_path):
    item = next(it for it in items if len(it["file_boxes"]))
    base = eval_chain(tmp_path / "cache")(dict(item))
    aug = RandDetectionAugmentd(flip_prob=1.0, gamma_range=(1, 1), contrast_range=(1, 1), brightness=0.0,
                                noise_std=0.0)
    out = aug(dict(base))
    image, flipped = torch.as_tensor(base["image"]).clamp(0, 1), torch.as_tensor(out["image"])
    torch.testing.assert_close(flipped, torch.flip(image, dims=(-2,)))
    height = image.shape[-2]
    box, new = np.asarray(base["det_boxes"])[0], np.asarray(out["det_boxes"])[0]
    np.testing.assert_allclose(new, [box[0], height - box[3], box[2], height - box[1]])
    # the pixel mass inside the box moves with it
    r0, r1 = int(box[1]), int(np.ceil(box[3]))
    c0, c1 = int(box[0]), int(np.ceil(box[2]))
    n0, n1 = int(new[1]), int(np.ceil(new[3]))
    torch.testing.assert_close(image[0, r0:r1, c0:c1].sum(), flipped[0, n0:n1, c0:c1].sum(), atol=1e-3, rtol=1e-4)


def test_targets_drop_boxes_the_crop_squeezed_away():
    out = DetectionTargetsd(min_size=1.0)({"det_boxes": np.array([[0, 0, 5, 5], [3, 3, 3.5, 9]], np.float32),
                                           "det_labels": np.array([1, 0])})
    assert out["det_boxes"].tolist() == [[0, 0, 5, 5]] and out["det_labels"].tolist() == [1]


def tiny_detector(**kwargs):
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, image_size=SIZE)
    return model, MammoDetector(model.image_encoder, fpn_channels=16, **kwargs)


def test_detector_trains_and_predicts_in_project_order():
    _, det = tiny_detector(score_threshold=0.0)
    images = torch.rand(2, 1, *SIZE)
    targets = [{"boxes": torch.tensor([[20.0, 40.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    det.train()
    losses = det(images, targets)
    assert set(losses) == {"classification", "box_regression"}
    sum(losses.values()).backward()
    model = det.encoder.model
    assert model.conv_stem.weight.grad is None and not model.conv_stem.weight.requires_grad  # frozen: stride <= 4
    assert all(p.grad is None for p in model.blocks[1].parameters())
    assert all(p.grad is not None for p in model.blocks[2].parameters()), "stride-8 stages train with the heads"
    groups = det.param_groups(1e-3, encoder_lr=1e-4)
    assert not any(p is model.conv_stem.weight for p in groups[0]["params"])
    assert {g["lr"] for g in groups} == {1e-3, 1e-4}
    det.eval()
    with torch.no_grad():
        out = det(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    boxes = out[0]["boxes"]
    assert boxes.shape[1] == 4 and (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    # project order: x (columns) within the width, y (rows) within the height
    assert float(boxes[:, 2].max()) <= SIZE[1] + 1e-3 and float(boxes[:, 3].max()) <= SIZE[0] + 1e-3


def test_freeze_stride_zero_trains_the_whole_encoder():
    _, det = tiny_detector(freeze_stride=0)
    det.train()
    images = torch.rand(1, 1, *SIZE)
    target = {"boxes": torch.tensor([[20.0, 40.0, 60.0, 70.0]]), "labels": torch.tensor([0])}
    sum(det(images, [target]).values()).backward()
    assert det.encoder.model.conv_stem.weight.grad is not None


def test_detector_refuses_mismatched_anchor_levels():
    model = create_model("tiny", init_towers=False, image_size=SIZE)
    with pytest.raises(ValueError, match="anchor_sizes has 2 level"):
        MammoDetector(model.image_encoder, anchor_sizes=((16,), (32,)))


def test_efficientnet_bn_encoder_gives_a_pyramid_too():
    from mammoclip_monai.networks.encoders import EfficientNetBNImageEncoder

    encoder = EfficientNetBNImageEncoder("efficientnet-b0")
    assert encoder.stage_channels() == [40, 112, 320]
    maps = encoder.forward_stages(torch.rand(1, 1, 128, 96))
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 12), (8, 6), (4, 3)]
    det = MammoDetector(encoder, fpn_channels=16).eval()
    with torch.no_grad():
        assert len(det(torch.rand(1, 1, 128, 96))) == 1


def test_initialise_encoder_loads_the_contrastive_checkpoint(tmp_path):
    source = create_model("tiny", init_towers=False, image_size=SIZE)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    target = create_model("tiny", init_towers=False, image_size=SIZE)
    initialise_encoder(target, "mammoclip", tmp_path / "model.pt")
    for a, b in zip(source.image_encoder.parameters(), target.image_encoder.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs the contrastive checkpoint"):
        initialise_encoder(target, "mammoclip", None)
    with pytest.raises(ValueError, match="must be one of"):
        initialise_encoder(target, "coco", None)


def test_engines_train_then_evaluate_in_file_pixels(items, tmp_path):
    _, det = tiny_detector()
    read = CachedPreprocessd(keys=["image"], spatial_size=SIZE, cache_dir=tmp_path / "cache",
                             box_keys=["det_boxes"], box_ref_keys=["image"])
    train_chain = mammogram_chain([read, DetectionTargetsd()], None, sample_steps=[RandDetectionAugmentd()])
    eval_chain_ = mammogram_chain([read, GeometryRecordd()], None)
    subset = [it for it in items if len(it["file_boxes"])][:4] + [it for it in items if not len(it["file_boxes"])][:2]
    loader = torch.utils.data.DataLoader([train_chain(dict(it)) for it in subset], batch_size=3,
                                         collate_fn=detection_collate)
    eval_loader = torch.utils.data.DataLoader([eval_chain_(dict(it)) for it in subset], batch_size=4,
                                              collate_fn=detection_collate)
    optimizer = torch.optim.AdamW(det.param_groups(1e-3, encoder_lr=1e-4))
    trainer = DetectionTrainer("cpu", 1, loader, det, optimizer, grad_clip_norm=1.0)
    trainer.run()
    assert np.isfinite(float(trainer.state.output["loss"]))
    evaluator = DetectionEvaluator("cpu", eval_loader, det,
                                   key_val_metric={"froc": DetectionMetrics(list(DEFAULT_CLASSES), select="froc_mean")})
    evaluator.run()
    assert 0.0 <= evaluator.state.metrics["froc"] <= 1.0
    out = evaluator.state.output
    assert len(out["pred"]) == len(out["label"]) == len(out["image_path"]) == 2
    np.testing.assert_array_equal(out["label"][0]["boxes"], subset[4]["file_boxes"])
