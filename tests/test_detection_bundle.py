"""Detection as users run it: the bundle command over train.json, then ``mammoclip detect`` on its detector."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mammoclip_monai.detection import MammoDetector
from mammoclip_monai.networks import create_model
from mammoclip_monai.utils.errors import EXIT_FAILED_INPUTS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = "['bundle/configs/train.json','bundle/configs/detection.json']"
SIZE = [128, 96]


def mammoclip_cli() -> list[str]:
    script = Path(sys.executable).parent / "mammoclip"
    return [str(script) if script.exists() else shutil.which("mammoclip")]


@pytest.fixture(scope="module")
def detection_run(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("detection_run")
    torch.manual_seed(0)
    (out / "models").mkdir()
    torch.save(create_model("tiny", init_towers=False, image_size=SIZE).state_dict(), out / "models" / "model.pt")
    args = ["--dataset_dir", str(synthetic_dataset), "--ckpt_dir", str(out / "models"),
            "--output_dir", str(out / "logs"), "--cache_dir", str(out / "cache"), "--detection_dir", str(out / "det"),
            "--image_size", json.dumps(SIZE), "--detection_epochs", "2", "--detection_batch_size", "4",
            "--detection_overlays", "3"]
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", CONFIGS, *args],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_bundle_trains_selects_on_validation_and_tests_once(detection_run, synthetic_dataset):
    det = detection_run / "det"
    record = json.loads((det / "metrics.json").read_text())
    assert [e["epoch"] for e in record["history"]] == [1, 2]
    assert all("val_froc" in e for e in record["history"])
    test = record["test"]
    for name in ("mass", "calcification"):
        for key in (f"test_{name}_froc@1", f"test_{name}_froc_mean", f"test_{name}_ap@0.25", f"test_{name}_ap@0.5"):
            assert 0.0 <= test[key] <= 1.0, key
    assert 0.0 <= test["test_froc"] <= 1.0
    assert (det / "detector.pt").is_file() and (det / "froc.png").stat().st_size > 1000
    assert len(list((det / "overlays").glob("*.png"))) == 3
    # predictions are in file pixels: inside each file's own size
    images = json.loads((det / "detections.json").read_text())["images"]
    from mammoclip_monai.data.datalists import vindr_datalist

    test_items = [i for i in vindr_datalist(synthetic_dataset) if i["split"] == "test"]
    assert len(images) == len(test_items)
    rows = list(csv.DictReader(open(det / "detections.csv")))
    assert rows and set(rows[0]) == {"file", "class", "score", "x_min", "y_min", "x_max", "y_max"}
    assert {r["class"] for r in rows} <= {"mass", "calcification"}
    # the saved detector rebuilds alone and scores like the tested one
    rebuilt = MammoDetector.from_pretrained(det / "pretrained")
    assert rebuilt.image_size == tuple(SIZE) and rebuilt.class_names == ["mass", "calcification"]
    state = torch.load(det / "detector.pt", weights_only=True)
    state = state.get("model", state)
    assert all(torch.equal(state[k], v) for k, v in rebuilt.state_dict().items())


@pytest.mark.slow
def test_detect_command_writes_file_pixel_boxes_and_reports_bad_files(detection_run, synthetic_dataset, tmp_path):
    files = sorted((synthetic_dataset / "images").rglob("*.dicom"))[:3]
    bad = tmp_path / "broken.dicom"
    bad.write_bytes(b"not a dicom file at all")
    out = tmp_path / "detect"
    result = subprocess.run([*mammoclip_cli(), "detect", *map(str, files), str(bad), "--detector",
                             str(detection_run / "det" / "pretrained"), "--out", str(out), "--overlays", "2",
                             "--min-score", "0.0"], capture_output=True, text=True, timeout=600)
    assert result.returncode == EXIT_FAILED_INPUTS, result.stderr[-2000:]
    assert f"{bad}:" in result.stderr and "detected in 3 image(s)" in result.stderr
    record = json.loads((out / "detections.json").read_text())
    assert [Path(i["file"]) for i in record["images"]] == files
    assert record["errors"] and record["errors"][0]["file"] == str(bad)
    import pydicom

    for image in record["images"]:
        ds = pydicom.dcmread(image["file"], stop_before_pixels=True)
        boxes = np.array([[d[k] for k in ("x_min", "y_min", "x_max", "y_max")] for d in image["detections"]])
        if len(boxes):
            assert boxes[:, [0, 2]].max() <= ds.Columns + 0.5 and boxes[:, [1, 3]].max() <= ds.Rows + 0.5
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert "PatientName" not in (out / "detections.json").read_text()
