"""Mammo-FActOR: heads kept apart, heatmaps mapped back through the preprocessing, localisation metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammoclip_monai.data.datalists import vindr_datalist, with_validation
from mammoclip_monai.data.geometry import GEOMETRY_KEY, boxes_from_original
from mammoclip_monai.data.pipelines import preprocessing
from mammoclip_monai.engines.metrics import binary_auroc
from mammoclip_monai.interpret import (
    AttributeAUROC,
    FActOR,
    FActORLoss,
    FeatureMapExtractor,
    best_box_iou,
    cam_map,
    factor_heatmap,
    gradcam_map,
    ground_truth_boxes,
    heatmap_boxes,
    pointing_hit,
    summarize,
    to_original,
)
from mammoclip_monai.networks import create_model


def _toy_maps(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """8-channel 4x4 maps: channel 3 spikes where a mass is, channel 5 shows a 2x2 patch where calcifications are.

    The mappers see a channel's map, not its index, so the two findings must differ in pattern.
    """
    maps = torch.rand(n, 8, 4, 4, generator=generator) * 0.2
    labels = torch.randint(0, 2, (n, 2), generator=generator)
    for i in range(n):
        r, c = torch.randint(0, 3, (2,), generator=generator)
        if labels[i, 0]:
            maps[i, 3, r, c] += 3.0
        if labels[i, 1]:
            maps[i, 5, r:r + 2, c:c + 2] += 0.8
    return maps, labels


@pytest.mark.parametrize("readout", ["peak", "map"])
def test_factor_learns_each_attribute_with_its_own_head(readout):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    factor = FActOR(["mass", "calcification"], (4, 4), embed_dim=16, hidden_dim=64, channels=8, readout=readout)
    factor.fit_position_statistics(_toy_maps(64, g)[0])
    factor.set_attribute_embeddings({"mass": torch.randn(2, 16, generator=g),
                                     "calcification": torch.randn(2, 16, generator=g)})
    loss_fn = FActORLoss()
    optimizer = torch.optim.Adam(factor.parameters(), lr=1e-2)
    for _ in range(400):
        maps, labels = _toy_maps(32, g)
        optimizer.zero_grad()
        loss_fn(factor(maps), labels).backward()
        optimizer.step()
    maps, labels = _toy_maps(200, g)
    with torch.no_grad():
        evidence = FActOR.present_logit(factor(maps))
        scores = factor.neuron_scores(maps)
    for a, channel in ((0, 3), (1, 5)):
        assert binary_auroc(evidence[:, a].numpy(), labels[:, a].numpy()) > 0.95
        positives = labels[:, a] == 1
        # the neuron that carries the attribute is the top one on the images that have it
        assert (scores[positives, a].argmax(1) == channel).float().mean() > 0.9
    # each head reads only its own mapper: changing the calcification head leaves mass logits alone
    before = factor(maps)[:, 0]
    with torch.no_grad():
        for p in factor.mappers["calcification"].parameters():
            p.add_(1.0)
    assert torch.equal(factor(maps)[:, 0], before)


def test_factor_loss_and_shapes_reject_bad_input():
    factor = FActOR(["mass"], (2, 3), embed_dim=4, readout="map")
    with pytest.raises(ValueError, match=r"\(B, C, 2, 3\)"):
        factor(torch.zeros(1, 5, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        FActOR(["mass"], (2, 3), embed_dim=4)  # the 'peak' readout needs C
    peak = FActOR(["mass"], (2, 3), embed_dim=4, channels=5)
    with pytest.raises(ValueError, match=r"\(B, 5, 2, 3\).*layer"):
        peak(torch.zeros(1, 6, 2, 3))  # another layer's channel count
    with pytest.raises(ValueError, match="two"):
        peak.fit_position_statistics([torch.zeros(5, 2, 3)])
    with pytest.raises(ValueError, match="expected"):
        factor.set_attribute_embeddings({"mass": torch.zeros(3, 4)})
    with pytest.raises(KeyError, match="mass"):
        factor.set_attribute_embeddings({})
    loss = FActORLoss()
    logits = torch.tensor([[[0.0, 2.0]], [[1.0, -1.0]], [[0.5, 0.5]]])
    # unknown labels take no part; the image->text term alone is plain cross-entropy here (one positive)
    value = loss(logits, torch.tensor([[1], [0], [-1]]))
    i2t = F.cross_entropy(logits[:2, 0], torch.tensor([1, 0]))
    t2i = torch.logsumexp(logits[:2, 0, 1], 0) - logits[0, 0, 1]
    assert value.item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)
    with pytest.raises(ValueError, match="no known"):
        loss(logits, torch.full((3, 1), -1))
    with pytest.raises(FloatingPointError, match="nan"):
        loss(torch.full((2, 1, 2), float("nan")), torch.tensor([[1], [0]]))
    state = FActOR.from_state_dict(factor.state_dict(), (2, 3))
    assert state.attributes == ("mass",) and state.feature_size == (2, 3) and state.readout == "map"


def test_peak_readout_standardises_per_position_and_round_trips(tmp_path):
    torch.manual_seed(0)
    maps = torch.randn(40, 3, 2, 3) * torch.tensor([1.0, 5.0, 0.1])[:, None, None] + 7.0
    factor = FActOR(["mass", "calcification"], (2, 3), embed_dim=4, channels=3, peak_values=2, layer="model.blocks.5")
    factor.fit_position_statistics(maps[i:i + 8] for i in range(0, 40, 8))  # batches or single maps
    assert torch.allclose(factor.position_mean, maps.mean(0), atol=1e-5)
    assert torch.allclose(factor.position_std, maps.std(0), atol=1e-4)
    # the mapper reads each channel's strongest standardised responses: scale-free across channels
    inputs = factor._mapper_inputs(maps[:1])
    expected = ((maps[:1] - maps.mean(0)) / maps.std(0)).flatten(2).sort(-1, descending=True).values[..., :2]
    assert inputs.shape == (1, 3, 2) and torch.allclose(inputs, expected, atol=1e-4)
    path = tmp_path / "factor.pt"
    torch.save({"model": factor.state_dict()}, path)
    state = torch.load(path, weights_only=True)["model"]
    again = FActOR.from_state_dict(state)  # sizes, readout and layer come from the state itself
    assert (again.readout, again.peak_values, again.layer, again.feature_size) == ("peak", 2, "model.blocks.5", (2, 3))
    assert torch.equal(again(maps), factor(maps))
    with pytest.raises(ValueError, match="readout"):
        FActOR(["mass", "calcification"], (2, 3), embed_dim=4, channels=3, peak_values=3).load_state_dict(state)


def test_image_score_is_a_smooth_or_hard_maximum_over_channels():
    torch.manual_seed(0)
    maps = torch.randn(4, 3, 2, 3)
    smooth = FActOR(["mass"], (2, 3), embed_dim=4, channels=3, pool_temperature=0.05)
    cosines = smooth.similarities(maps)
    expected = 0.05 * torch.logsumexp(cosines / 0.05, dim=2) / 0.07
    assert torch.allclose(smooth(maps), expected, atol=1e-5)
    assert torch.all(smooth(maps) >= cosines.amax(2) / 0.07 - 1e-6)  # never below the best channel
    hard = FActOR(["mass"], (2, 3), embed_dim=4, channels=3, pool_temperature=0.0)
    hard.load_state_dict(smooth.state_dict() | {"pool_temperature": torch.tensor(0.0)})
    assert torch.equal(hard(maps), cosines.amax(2) / hard.temperature)
    with pytest.raises(ValueError, match="pool_temperature"):
        FActOR(["mass"], (2, 3), embed_dim=4, channels=3, pool_temperature=-1.0)
    legacy = {k: v for k, v in smooth.state_dict().items() if k != "pool_temperature"}
    assert float(FActOR.from_state_dict(legacy).pool_temperature) == 0.0  # saved before: the hard maximum


def test_attribute_auroc_matches_the_rank_formula():
    from ignite.engine import Engine

    logits = torch.tensor([[[0.0, 2.0], [0.0, 0.0]], [[0.0, -1.0], [1.0, 0.0]], [[0.0, 0.5], [0.0, 3.0]],
                           [[0.0, 0.1], [0.0, 1.0]]])
    labels = torch.tensor([[1, 0], [0, 0], [1, 1], [0, -1]])
    engine = Engine(lambda e, batch: batch)
    AttributeAUROC().attach(engine, "mean")
    AttributeAUROC(1).attach(engine, "calc")
    state = engine.run([{"pred": logits[:2], "label": labels[:2]}, {"pred": logits[2:], "label": labels[2:]}],
                       max_epochs=1)
    mass = float(np.mean([[p > n for n in (-1.0, 0.1)] for p in (2.0, 0.5)]))
    calc = 1.0  # the one positive (3.0) above both known negatives (0.0, -1.0)
    assert state.metrics["calc"] == pytest.approx(calc)
    assert state.metrics["mean"] == pytest.approx((mass + calc) / 2)


def test_localisation_metrics_against_hand_computation():
    assert best_box_iou([[0, 0, 10, 10], [20, 20, 30, 30]], [[5, 5, 15, 15]]) == pytest.approx(25 / 175)
    assert best_box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]) == 0.0
    heat = np.zeros((20, 20))
    heat[12, 7] = 1.0  # peak at pixel centre (7.5, 12.5)
    assert pointing_hit(heat, [[5, 10, 10, 15]]) and not pointing_hit(heat, [[8, 10, 12, 15]])
    assert not pointing_hit(np.zeros((4, 4)), [[0, 0, 4, 4]])
    rows = [{"iou": 0.6, "pointing": True}, {"iou": 0.3, "pointing": False}, {"iou": 0.1, "pointing": True}]
    assert summarize(rows) == pytest.approx({"n": 3, "iou@0.25": 2 / 3, "iou@0.5": 1 / 3, "mean_iou": 1.0 / 3,
                                             "pointing_game": 2 / 3})
    assert math.isnan(summarize([])["iou@0.25"])
    item = {"boxes": np.array([[1, 1, 2, 2], [3, 3, 4, 4]], np.float32), "box_labels": ["Mass", "Asymmetry"]}
    assert ground_truth_boxes(item, ["mass"]).tolist() == [[1, 1, 2, 2]]


def test_box_threshold_is_chosen_on_validation_per_method():
    """A blob with wide shoulders around a small lesion: a low threshold boxes the shoulders (IoU < 0.25),
    a high one the lesion; a flat-topped map is best boxed low. Each method gets its own choice."""
    from types import SimpleNamespace

    from mammoclip_monai.interpret import LocalizationEvaluator

    yy, xx = np.mgrid[0:100, 0:100]
    lesion = [45, 45, 55, 55]
    r2 = (yy - 50) ** 2 + (xx - 50) ** 2
    peaked = torch.tensor(np.exp(-r2 / (2 * 4.0 ** 2)) + np.exp(-r2 / (2 * 40.0 ** 2)), dtype=torch.float32)
    flat = torch.zeros(100, 100)
    flat[40:60, 40:60] = 0.5  # a plateau a little wider than the lesion: every threshold boxes well enough
    flat[44:56, 44:56] = 1.0

    class Fixed(LocalizationEvaluator):
        def heatmaps(self, items, desc=None):
            for item in items:
                yield item, "mass", np.asarray([lesion], np.float32), {"factor": peaked, "cam": flat}

    evaluator = Fixed(model=None, factor=SimpleNamespace(attributes=("mass",)), extractor=None, preprocessing=None,
                      findings={"mass": ["Mass"]}, methods=("factor", "cam"), threshold=0.5,
                      thresholds=[0.3, 0.5, 0.7, 0.9])
    assert evaluator.threshold_for("mass", "factor") == 0.5  # nothing chosen yet: the default
    chosen = evaluator.select_thresholds([{"image": "a.dcm"}])
    assert chosen == {"mass/factor": 0.7, "mass/cam": 0.3}
    summary, per_image = evaluator.evaluate([{"image": "a.dcm"}])
    assert {(r["method"], r["threshold"], r["iou@0.25"]) for r in summary} == {("factor", 0.7, 1.0), ("cam", 0.3, 1.0)}
    with pytest.raises(ValueError, match="fractions"):
        Fixed(None, SimpleNamespace(attributes=("mass",)), None, None, {"mass": ["Mass"]}, thresholds=[1.5])


def test_heatmap_boxes_and_factor_heatmap():
    heat = torch.zeros(40, 50)
    heat[5:10, 5:15] = 0.6
    heat[20:30, 30:45] = 1.0
    heat[0, 49] = 0.3  # below threshold
    boxes, scores = heatmap_boxes(heat, threshold=0.5)
    assert boxes.tolist() == [[30, 20, 45, 30], [5, 5, 15, 10]] and scores.tolist() == pytest.approx([1.0, 0.6])
    assert heatmap_boxes(torch.zeros(5, 5))[0].shape == (0, 4)
    fmap = torch.zeros(4, 3, 3)
    fmap[2, 1, 2] = 5.0
    fmap[0] = 1.0
    heatmap, top, weights = factor_heatmap(fmap, torch.tensor([0.1, -0.5, 0.9, 0.0]), top_k=1)
    assert top.tolist() == [2] and heatmap.argmax().item() == 1 * 3 + 2 and heatmap.max() == 1.0


def _mass_case(dataset):
    """A synthetic mammogram with a mass box whose preprocessing mirrors it (and crops and resizes)."""
    chain = preprocessing(spatial_size=(256, 160))
    for item in vindr_datalist(dataset):
        gt = ground_truth_boxes(item, ["Mass"])
        if len(gt) == 0:
            continue
        image = chain({"image": item["image"]})["image"]
        ops = {t["extra_info"][GEOMETRY_KEY]["op"]: t["extra_info"][GEOMETRY_KEY] for t in image.applied_operations}
        if ops["hflip"]["flipped"]:
            return image, gt, ops
    raise AssertionError("the synthetic set has no mirrored mass image: the flip cannot be tested")


def test_heatmap_mapped_back_lands_on_the_lesion_through_flip_crop_and_resize(synthetic_dataset):
    image, gt, ops = _mass_case(synthetic_dataset)
    assert ops["crop"]["x1"] - ops["crop"]["x0"] < ops["crop"]["orig_width"]  # the breast crop cut something
    assert (ops["resize_pad"]["resized_height"], ops["resize_pad"]["resized_width"]) != (
        ops["resize_pad"]["orig_height"], ops["resize_pad"]["orig_width"])
    # a known activation at a known place: channel 2 peaks over the lesion on an 8-pixel feature grid
    net_box = boxes_from_original(gt[:1], image)[0]
    cx, cy = (net_box[0] + net_box[2]) / 2 / 8, (net_box[1] + net_box[3]) / 2 / 8
    sx, sy = max((net_box[2] - net_box[0]) / 16, 0.5), max((net_box[3] - net_box[1]) / 16, 0.5)
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(20) + 0.5, indexing="ij")
    fmap = torch.rand(6, 32, 20) * 0.05
    fmap[2] += torch.exp(-(((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2) / 2)
    heatmap, top, _ = factor_heatmap(fmap, torch.tensor([0.0, 0.1, 0.9, 0.2, -0.3, 0.0]), top_k=2)
    assert top[0] == 2
    heat = to_original(heatmap, image)
    assert tuple(heat.shape) == (ops["crop"]["orig_height"], ops["crop"]["orig_width"])
    boxes, _ = heatmap_boxes(heat, threshold=0.5)
    assert pointing_hit(heat, gt) and best_box_iou(boxes, gt) >= 0.3
    # without undoing the mirror the same map misses: the test can fail
    unflipped = [t for t in image.applied_operations if t["extra_info"][GEOMETRY_KEY]["op"] != "hflip"]
    assert not pointing_hit(to_original(heatmap, unflipped), gt)


def test_cam_is_exact_and_gradcam_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, image_size=(128, 96)).eval()
    extractor = FeatureMapExtractor(model.image_encoder)
    assert extractor.layer == "model.bn2"
    x = torch.randn(2, 1, 128, 96)
    embeddings = F.normalize(torch.randn(2, model.config.embed_dim), dim=-1)
    cam = cam_map(model, embeddings, x, extractor.layer)
    grad = gradcam_map(model, embeddings, x, extractor.layer)
    assert cam.shape == grad.shape == (2, 4, 3) and (grad >= 0).all()
    assert not model.training
    with torch.no_grad():
        logits = model.image_projection(model.image_encoder(x)) @ embeddings.T
    # CAM's mean over locations is the unnormalised "present" logit (average pooling, linear projection)
    assert cam.mean((1, 2)) == pytest.approx(logits[:, 1], abs=1e-4)


def test_with_validation_carves_patients_out_of_training(synthetic_dataset):
    items = vindr_datalist(synthetic_dataset)
    assert not any(i["split"] == "val" for i in items)
    carved = with_validation(items, 0.2, seed=1)
    val = {i["patient_id"] for i in carved if i["split"] == "val"}
    train = {i["patient_id"] for i in carved if i["split"] == "train"}
    test_before = {i["patient_id"] for i in items if i["split"] == "test"}
    assert val and not val & train and {i["patient_id"] for i in carved if i["split"] == "test"} == test_before
    assert with_validation(carved, 0.5) == carved  # an existing validation split is kept
    assert json.dumps(sorted(val)) == json.dumps(sorted({i["patient_id"] for i in with_validation(items, 0.2, seed=1)
                                                         if i["split"] == "val"}))


@pytest.mark.slow
def test_factor_bundle_and_explain_command(synthetic_dataset, tmp_path):
    """``factor.json`` over ``train.json`` trains, selects on validation, writes the table and overlays;
    ``mammoclip explain`` then explains a folder with one corrupt file in it."""
    import csv
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, image_size=(128, 96))
    (tmp_path / "models").mkdir()
    torch.save(model.state_dict(), tmp_path / "models" / "model.pt")
    model.save_pretrained(tmp_path / "models" / "pretrained")
    configs = "['bundle/configs/train.json','bundle/configs/factor.json']"
    args = ["--dataset_dir", str(synthetic_dataset), "--ckpt_dir", str(tmp_path / "models"),
            "--factor_dir", str(tmp_path / "factor"), "--output_dir", str(tmp_path / "logs"),
            "--image_size", "[128, 96]", "--factor_epochs", "2", "--factor_overlays", "1"]
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs, *args],
                            cwd=repo, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "factor"
    record = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in record["history"]] == [1, 2] and "val_auroc_mass" in record["history"][0]
    table = json.loads((out / "localization.json").read_text())
    assert [(r["attribute"], r["method"]) for r in table] == [
        (a, m) for a in ("mass", "calcification") for m in ("factor", "gradcam", "cam")]
    assert all(r["n"] > 0 and 0.0 <= r["iou@0.25"] <= 1.0 and 0.0 <= r["pointing_game"] <= 1.0 for r in table)
    assert all(r["threshold"] in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8) for r in table)  # chosen on validation
    assert "| mass | Mammo-FActOR |" in (out / "localization.md").read_text()
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["calcification_00.png", "mass_00.png"]
    state = torch.load(out / "factor.pt", weights_only=True)
    trained = FActOR.from_state_dict(state)  # the 'peak' readout stores its sizes and its layer
    assert trained.attributes == ("mass", "calcification") and trained.layer == "model.blocks.5"
    assert trained.position_std.shape == (192, 4, 3) and not torch.all(trained.position_std == 1)  # fitted

    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((synthetic_dataset / "images").rglob("*.dicom"))[:2]
    for source in sources:
        shutil.copy(source, images / source.name)
    (images / "broken.dcm").write_bytes(b"not a dicom file")
    result = subprocess.run([sys.executable, "-m", "mammoclip_monai.cli", "explain", str(images), "--model",
                             str(tmp_path / "models" / "pretrained"), "--factor", str(out / "factor.pt"),
                             "--out", str(tmp_path / "explained"), "--quiet"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]  # one file failed, and says so
    assert "broken.dcm" in result.stderr
    summary = json.loads((tmp_path / "explained" / "explanations.json").read_text())
    assert [Path(r["image"]).name for r in summary["images"]] == [s.name for s in sources]
    assert [Path(e["image"]).name for e in summary["errors"]] == ["broken.dcm"]
    first = summary["images"][0]["attributes"]["mass"]
    assert 0.0 <= first["probability"] <= 1.0 and len(first["top_neurons"]) == 10  # stored layer (another: error)
    assert all(len(b["box"]) == 4 for b in first["boxes"])
    assert (tmp_path / "explained" / summary["images"][0]["overlay"]).stat().st_size > 1000
    rows = list(csv.DictReader(open(tmp_path / "explained" / "neurons.csv")))
    assert {r["attribute"] for r in rows} == {"mass", "calcification"} and "mean_score_calcification" in rows[0]
