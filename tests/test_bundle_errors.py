"""Bundle runs follow the error convention: one line instead of MONAI's traceback, the exit status, a summary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mammoclip_monai.networks import create_model

REPO = Path(__file__).resolve().parents[1]
SIZE = (96, 64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle_errors")
    torch.manual_seed(0)
    torch.save(create_model("tiny", init_towers=False, image_size=SIZE).state_dict(), root / "model.pt")
    return root / "model.pt"


@pytest.fixture(scope="module")
def images(synthetic_dataset, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bundle_images")
    for source in sorted((synthetic_dataset / "images").rglob("*.dicom"))[:2]:
        shutil.copy(source, folder / source.name)
    (folder / "broken.dcm").write_bytes(b"not a mammogram")
    return folder


def infer(checkpoint: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundle/configs/inference.json",
               "--checkpoint", str(checkpoint), "--image_size", json.dumps(list(SIZE)), "--output_dir", str(out),
               *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_an_input_that_does_not_exist_is_one_line_and_exit_2(checkpoint, tmp_path):
    result = infer(checkpoint, tmp_path / "out", "--input", str(tmp_path / "nope"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [f"mammoclip bundle: error: nothing to read: {tmp_path / 'nope'}: no such file or folder"]


@pytest.mark.slow
def test_bad_and_missing_inputs_are_listed_with_a_summary_and_the_rest_predicted(checkpoint, images, tmp_path):
    missing = tmp_path / "typo.dcm"
    inputs = json.dumps([str(images), str(missing)])
    result = infer(checkpoint, tmp_path / "out", "--input", inputs)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    assert f"could not read {missing}: file not found" in log
    assert f"could not read {images / 'broken.dcm'}:" in log
    assert "predicted 2 of 4 image(s) (zero_shot head: mass, calcification, density_A" in log
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert saved["head"] == "zero_shot" and len(saved["predictions"]) == 2
    assert sorted(Path(e["file"]).name for e in saved["errors"]) == ["broken.dcm", "typo.dcm"]


def test_fail_on_errors_ends_with_exit_1_after_writing_the_rest(checkpoint, images, tmp_path):
    result = infer(checkpoint, tmp_path / "out", "--input", str(images), "--fail_on_errors", "true")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "mammoclip bundle: error: 1 of 3 input(s) failed (fail_on_errors is set)" in result.stderr
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]) == 2


def test_verbose_keeps_the_traceback(checkpoint, tmp_path):
    result = infer(checkpoint, tmp_path / "out", "--input", str(tmp_path / "nope"), "--verbose", "true")
    assert result.returncode != 0 and "Traceback" in result.stderr and "NoInputsError" in result.stderr
