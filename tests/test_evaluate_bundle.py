"""evaluate.json as users run it, and its pieces: checkpoint loading and the zero-shot report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mammoclip_monai.engines.metrics import binary_auroc
from mammoclip_monai.networks import create_model, load_weights

REPO = Path(__file__).resolve().parents[1]
CONFIGS = "['bundle/configs/train.json','bundle/configs/evaluate.json']"
TASKS = ["mass", "calcification", "density", "malignancy", "birads"]


def tiny_text_config() -> dict:
    return {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A default-preset checkpoint (random weights: the test checks the plumbing, not the model)."""
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, image_size=(96, 64))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_evaluate_command_writes_metrics_predictions_and_plots(synthetic_dataset, checkpoint, tmp_path):
    out = tmp_path / "eval"
    args = ["--dataset_dir", str(synthetic_dataset), "--ckpt_dir", str(checkpoint.parent), "--eval_dir", str(out),
            "--output_dir", str(tmp_path / "logs"), "--image_size", "[96, 64]"]
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIGS, *args],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    splits = {r["patient_id"]: r["split"] for r in csv.DictReader(open(synthetic_dataset / "splits.csv"))}
    with open(synthetic_dataset / "image_text.csv", newline="") as f:
        test_images = [r for r in csv.DictReader(f) if splits[r["patient_id"]] == "test"]
    assert metrics["n_images"] == len(rows) == len(test_images) > 0
    assert metrics["split"] == "test" and metrics["checkpoint"].endswith("model.pt")
    assert set(metrics["tasks"]) == set(TASKS)
    # outputs name images by path, and the metrics agree with a recomputation from the CSV
    assert all(Path(r["image"]).is_file() for r in rows)
    labels = np.array([int(r["mass_label"]) for r in rows])
    scores = np.array([float(r["mass_p_mass"]) for r in rows])
    if 0 < labels.sum() < len(labels):
        assert metrics["tasks"]["mass"]["auroc"] == pytest.approx(binary_auroc(scores, labels), abs=1e-5)
    truth = {Path(r["image_path"]).name: int(r["mass"]) for r in test_images}
    assert all(truth[Path(r["image"]).name] == int(r["mass_label"]) for r in rows)
    density = metrics["tasks"]["density"]
    assert density["classes"] == ["A", "B", "C", "D"] and np.array(density["confusion_matrix"]).sum() == len(rows)
    for name in ("roc_binary.png", "roc_density.png", "roc_birads.png", "confusion_mass.png", "confusion_density.png"):
        assert (out / name).stat().st_size > 1000, name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoint_of_another_preset_is_a_clear_error(tmp_path):
    small = create_model("tiny", init_towers=False, text_config=tiny_text_config())
    other = create_model("tiny", init_towers=False, text_config=tiny_text_config(), embed_dim=256)
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError, match=r"other\.pt: does not fit this model.*shape mismatch.*image_projection"):
        load_weights(small, path)
    state = small.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["logit_scale"]
    torch.save({"model": state}, path)  # a training checkpoint with a "model" entry
    with pytest.raises(ValueError, match=r"1 missing key\(s\): logit_scale; 1 unexpected key\(s\): extra\.weight"):
        load_weights(small, path)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_weights(small, tmp_path / "nowhere.pt")
    torch.save(small.state_dict(), path)
    load_weights(small, path)


def test_report_names_a_missing_label_column(tmp_path):
    from types import SimpleNamespace

    from mammoclip_monai.evaluation import ZeroShotReport
    from mammoclip_monai.text.prompts import load_prompt_sets

    report = ZeroShotReport(tmp_path, tasks=["malignancy"])
    engine = SimpleNamespace(prompt_sets=load_prompt_sets(tasks=["malignancy"]), state=SimpleNamespace(
        output={"image_path": ["a.dcm"], "zero_shot": {"malignancy": torch.tensor([[0.4, 0.6]])}, "labels": {}}))
    with pytest.raises(KeyError, match="label column 'cancer'"):
        report._collect(engine)
    with pytest.raises(KeyError, match=r"no prompt set for \['nonsense'\]"):
        ZeroShotReport(tmp_path, tasks=["nonsense"])._collect(engine)
