"""Linear probe and fine-tuning heads: frozen means frozen, balanced losses, and the bundle command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mammoclip_monai.evaluation import (
    ClassificationReport,
    ImageClassifier,
    breast_mean,
    class_weights,
    feature_datalist,
    image_datalist,
    logits_to_probabilities,
    positive_weight,
    probe_loss,
)
from mammoclip_monai.networks import create_model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = "['bundle/configs/train.json','bundle/configs/linear_probe.json']"


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return create_model("tiny", init_towers=False, image_size=(96, 64)).image_encoder


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_linear_probe_leaves_every_encoder_parameter_and_bn_buffer_unchanged(encoder):
    model = ImageClassifier(encoder, num_outputs=1, freeze="all", dropout=0.5)
    before = snapshot(encoder)
    assert any("running_mean" in k for k in before)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # even handed every parameter
    model.train()
    assert not encoder.training and all(not m.training for m in encoder.modules())
    head_before = model.head.weight.detach().clone()
    for _ in range(3):
        x = torch.randn(4, 1, 96, 64) * 3 + 1  # statistics far from the running ones
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), torch.ones(4, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = snapshot(encoder)
    assert all(torch.equal(before[k], after[k]) for k in before), "an encoder tensor changed"
    assert not torch.equal(head_before, model.head.weight)
    assert all(p.grad is None for p in encoder.parameters())
    # dropout is off in a linear probe: training-mode outputs are deterministic
    x = torch.randn(2, 1, 96, 64)
    assert torch.equal(model(x), model(x))


def test_fine_tuning_modes_unfreeze_what_they_say(encoder):
    full = ImageClassifier(encoder, num_outputs=4, freeze="none")
    full.train()
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    partial = ImageClassifier(encoder, num_outputs=4, freeze="partial", trainable_blocks=1)
    partial.train()
    last = list(encoder.model.blocks)[-1]
    trainable = {id(p) for p in last.parameters()}
    assert all(p.requires_grad == (id(p) in trainable) for p in encoder.parameters())
    assert last.training and not encoder.model.conv_stem.training
    groups = partial.param_groups(lr=1e-3)
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(1e-4)
    assert len(groups[1]["params"]) == len(trainable)
    with pytest.raises(ValueError, match="freeze"):
        ImageClassifier(encoder, freeze="some")
    for p in encoder.parameters():
        p.requires_grad_(True)


def test_balanced_losses_and_targets():
    assert positive_weight([0, 0, 0, 1, -1]).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no positive"):
        positive_weight([0, 0])
    weights = class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)  # class 3 absent
    assert weights.tolist() == pytest.approx([6 / 3 / 3, 6 / 1 / 3, 6 / 2 / 3, 0.0])
    cache = {"features": np.eye(4, dtype=np.float32), "birads": np.array([1, 5, -1, 3]),
             "image_path": np.array(["a", "b", "c", "d"])}
    items = feature_datalist(cache, "birads", values=(1, 2, 3, 4, 5))
    assert [i["image_path"] for i in items] == ["a", "b", "d"]
    assert [int(i["label"]) for i in items] == [0, 4, 2] and items[0]["label"].dtype == torch.long
    binary = feature_datalist({**cache, "mass": np.array([0, 1, 1, -1])}, "mass", values=(0, 1))
    assert [i["label"].tolist() for i in binary] == [[0.0], [1.0], [1.0]]
    assert isinstance(probe_loss(binary, 2), nn.BCEWithLogitsLoss)
    assert probe_loss(binary, 2).pos_weight.item() == pytest.approx(0.5)
    assert isinstance(probe_loss(items, 5), nn.CrossEntropyLoss)
    with pytest.raises(KeyError, match="'density'"):
        image_datalist([{"image": "x.dcm", "mass": 1}], "density", (0, 1, 2, 3))
    with pytest.raises(ValueError, match="no item has a known"):
        feature_datalist({**cache, "mass": np.array([-1, -1, -1, -1])}, "mass", values=(0, 1))


def test_breast_mean_is_the_mean_of_the_views_logits():
    rng = np.random.default_rng(0)
    cache = {"features": rng.normal(size=(5, 6)).astype(np.float32), "mass": np.array([0, 1, 0, -1, -1]),
             "image_path": np.array(["p1_L_cc", "p1_L_mlo", "p1_R_cc", "p2_L_cc", "p2_L_mlo"]),
             "patient_id": np.array(["p1", "p1", "p1", "p2", "p2"]), "laterality": np.array(["L", "L", "R", "L", "L"])}
    breasts = breast_mean(cache, ["mass"])
    assert breasts["patient_id"].tolist() == ["p1", "p1", "p2"] and breasts["laterality"].tolist() == ["L", "R", "L"]
    assert breasts["mass"].tolist() == [1, 0, -1]  # the positive view wins; unknown stays unknown
    assert breasts["image_path"][0] == "p1_L_cc;p1_L_mlo"
    head = nn.Linear(6, 1)
    with torch.no_grad():
        per_view = head(torch.from_numpy(cache["features"])).squeeze(1)
        per_breast = head(torch.from_numpy(breasts["features"])).squeeze(1)
    assert per_breast[0].item() == pytest.approx(per_view[:2].mean().item(), abs=1e-6)
    assert per_breast[2].item() == pytest.approx(per_view[3:].mean().item(), abs=1e-6)
    items = feature_datalist(cache, "mass", (0, 1), aggregate="breast")
    assert [i["image_path"] for i in items] == ["p1_L_cc;p1_L_mlo", "p1_R_cc"]
    with pytest.raises(KeyError, match="laterality"):
        breast_mean({k: v for k, v in cache.items() if k != "laterality"}, ["mass"])
    with pytest.raises(ValueError, match="aggregate"):
        feature_datalist(cache, "mass", (0, 1), aggregate="study")
    with pytest.raises(ValueError, match="fine-tuning scores each image"):
        image_datalist([{"image": "x.dcm", "mass": 1}], "mass", (0, 1), aggregate="breast")


def test_classification_report_metric_matches_the_function():
    from ignite.engine import Engine

    logits = torch.tensor([[2.0], [-1.0], [0.5], [-0.2], [1.5], [-3.0]])
    labels = torch.tensor([[1.0], [0.0], [1.0], [1.0], [0.0], [0.0]])
    engine = Engine(lambda e, batch: batch)
    ClassificationReport(prefix="val_").attach(engine, "report")
    ClassificationReport(select="auroc").attach(engine, "auroc")
    state = engine.run([{"pred": logits[:3], "label": labels[:3]}, {"pred": logits[3:], "label": labels[3:]}],
                       max_epochs=1)
    probs = logits_to_probabilities(logits.numpy())
    assert probs[:, 1] == pytest.approx(torch.sigmoid(logits).reshape(-1).numpy())
    pos, neg = logits[labels == 1], logits[labels == 0]
    expected = float((pos[:, None] > neg[None, :]).float().mean())
    assert state.metrics["auroc"] == pytest.approx(expected)
    assert state.metrics["val_auroc"] == pytest.approx(expected)
    assert state.metrics["val_accuracy"] == pytest.approx(4 / 6)
    multi = logits_to_probabilities(np.array([[1.0, 2.0, 3.0]]))
    assert multi.sum() == pytest.approx(1.0) and multi.argmax() == 2


@pytest.mark.slow
def test_linear_probe_command(synthetic_dataset, tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, image_size=(96, 64))
    (tmp_path / "models").mkdir()
    torch.save(model.state_dict(), tmp_path / "models" / "model.pt")
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    args = ["--dataset_dir", str(synthetic_dataset), "--ckpt_dir", str(tmp_path / "models"),
            "--probe_dir", str(tmp_path / "probe"), "--output_dir", str(tmp_path / "logs"),
            "--image_size", "[96, 64]", "--probe_epochs", "3", "--probe_task", "density", "--probe_aggregate", "breast"]
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", CONFIGS, *args],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert [e["epoch"] for e in record["history"]] == [1, 2, 3]
    test = record["test"]
    assert {"test_auroc", "test_balanced_accuracy", "test_accuracy", "test_n"} <= set(test)
    from mammoclip_monai.data.datalists import image_text_datalist, select_split

    test_items = select_split(image_text_datalist(synthetic_dataset / "image_text.csv",
                                                  splits=synthetic_dataset / "splits.csv"), "test")
    breasts = {(i["patient_id"], i["laterality"]) for i in test_items if i["density"] >= 0}
    assert test["test_n"] == len(breasts) < len(test_items)  # scored per breast, not per view
    assert (tmp_path / "probe" / "head.pt").is_file()
    head = torch.load(tmp_path / "probe" / "head.pt", weights_only=True)
    assert head["weight"].shape == (4, model.image_encoder.feature_dim)
    # the checkpoint the probe read is untouched too
    reread = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(reread[f"image_encoder.{k}"], v) for k, v in before.items())


@pytest.mark.slow
def test_data_efficiency_command(synthetic_dataset, tmp_path):
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(create_model("tiny", init_towers=False, image_size=(96, 64)).state_dict(),
               tmp_path / "models" / "model.pt")
    out = tmp_path / "efficiency"
    overrides = [f"dataset_dir={synthetic_dataset}", f"ckpt_dir={tmp_path / 'models'}",
                 f"output_dir={tmp_path / 'logs'}", "image_size=[96, 64]", "probe_epochs=2"]
    result = subprocess.run([sys.executable, "-m", "mammoclip_monai.cli", "data-efficiency", "--tasks", "mass",
                             "--fractions", "0.5", "1.0", "--methods", "linear_probe", "finetune", "--out", str(out),
                             "--set", *overrides, "finetune_freeze=partial"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    import csv

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["fraction"]) for r in rows] == [("linear_probe", "0.5"), ("linear_probe", "1.0"),
                                                            ("finetune", "0.5"), ("finetune", "1.0")]
    n_train = {(r["method"], r["fraction"]): int(r["n_train"]) for r in rows}
    assert 0 < n_train[("linear_probe", "0.5")] < n_train[("linear_probe", "1.0")]
    assert n_train[("finetune", "1.0")] == n_train[("linear_probe", "1.0")]
    assert all(0.0 <= float(r["test_auroc"]) <= 1.0 for r in rows if r["test_auroc"] != "nan")
    assert "| linear probe | mass |" in (out / "results.md").read_text() and "| finetune | mass |" in result.stdout
    assert (out / "data_efficiency.png").stat().st_size > 1000
    assert (out / "finetune" / "mass_100pct" / "classifier.pt").is_file()


def test_probe_features_for_every_dataset_schema(synthetic_dataset, tmp_path):
    """VinDr-Mammo, CBIS-DDSM and RSNA items (boxes, finding lists, no or two-way splits) all give
    train / val / test splits by patient and cached probe features."""
    import csv

    from mammoclip_monai.data import datalists as dl
    from mammoclip_monai.data.pipelines import preprocessing
    from mammoclip_monai.evaluation import embed_datalist

    vindr = dl.vindr_datalist(synthetic_dataset)
    cbis = dl.cbis_ddsm_datalist(sorted(synthetic_dataset.glob("*_case_description_*_set.csv")))
    rows = []
    for item in vindr[:12]:
        target = tmp_path / "train_images" / item["patient_id"] / f"{item['image_id']}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(item["image"])
        rows.append({"patient_id": item["patient_id"], "image_id": item["image_id"], "laterality": item["laterality"],
                     "view": item["view"], "cancer": str(max(item["mass"], 0)), "BIRADS": "", "density": ""})
    with open(tmp_path / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rsna = dl.rsna_datalist(tmp_path / "train.csv")
    encoder = create_model("tiny", init_towers=False, image_size=(64, 48)).image_encoder
    chain = preprocessing(spatial_size=(64, 48))
    for items, label in ((vindr, "mass"), (cbis, "calcification"), (rsna, "cancer")):
        split = dl.with_validation(items, 0.2, seed=0)
        patients = {s: {i["patient_id"] for i in split if i["split"] == s} for s in ("train", "val", "test")}
        assert all(patients.values()), (items[0]["source"], {k: len(v) for k, v in patients.items()})
        assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                    or patients["val"] & patients["test"])
        train = dl.patient_subset(dl.select_split(split, "train", required=True), 0.5, seed=0)[:4]
        cache = embed_datalist(encoder, train, chain, [label])
        assert cache["features"].shape == (len(train), encoder.feature_dim)
        assert cache["patient_id"].tolist() == [i["patient_id"] for i in train]
