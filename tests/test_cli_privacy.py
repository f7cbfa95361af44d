"""The installed ``mammoclip`` command, and the privacy rule across metadata, logs and output files."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from mammoclip_monai.data.pipelines import preprocessing

IDENTIFIER_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs")


def mammoclip_command() -> list[str]:
    """The console script installed beside this interpreter (what users run)."""
    script = Path(sys.executable).parent / "mammoclip"
    found = str(script) if script.exists() else shutil.which("mammoclip")
    assert found, "the mammoclip console script is not installed (pip install -e .)"
    return [found]


def header_identifiers(files: list[Path]) -> set[str]:
    values = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for tag in IDENTIFIER_TAGS:
            value = str(ds.get(tag, "") or "")
            if len(value) >= 4:
                values.add(value)
                values.update(part for part in value.split("^") if len(part) >= 4)
    return values


def assert_no_identifier(text: str, identifiers: set[str], where: str) -> None:
    leaked = sorted(v for v in identifiers if v in text)
    assert not leaked, f"patient identifiers {leaked} found in {where}"


def test_synth_command_writes_a_dataset(tmp_path):
    out = tmp_path / "tiny"
    result = subprocess.run(mammoclip_command() + ["synth", "--out", str(out), "--patients", "2", "--height", "160",
                                                   "--width", "128", "--workers", "1", "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # --quiet is quiet
    assert json.loads((out / "dataset.json").read_text())["counts"]["images"] == 8
    assert len(list((out / "images").rglob("*.dicom"))) == 8
    for name in ("image_text.csv", "breast-level_annotations.csv", "finding_annotations.csv", "splits.csv"):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_no_identifier_reaches_metadata_logs_or_outputs(synthetic_dataset, tmp_path, caplog):
    files = sorted((synthetic_dataset / "images").rglob("*.dicom"))[:12]
    identifiers = header_identifiers(files)
    assert len(identifiers) >= 12, "the synthetic headers should carry fictitious identifiers"

    # 1. metadata of the transformed tensors
    chain = preprocessing(spatial_size=(128, 80))
    with caplog.at_level(logging.DEBUG):
        for path in files:
            image = chain({"image": str(path)})["image"]
            assert_no_identifier(repr(image.meta), identifiers, f"metadata of {path.name}")
    assert_no_identifier(caplog.text, identifiers, "library logs")

    # 2. the command line: printed metadata, verbose logs, written files
    inputs = [str(p) for p in files]
    inspect = subprocess.run(mammoclip_command() + ["-v", "inspect", *inputs], capture_output=True, text=True,
                             timeout=300)
    assert inspect.returncode == 0, inspect.stderr
    assert len(inspect.stdout.strip().splitlines()) == len(files)
    assert_no_identifier(inspect.stdout + inspect.stderr, identifiers, "mammoclip inspect output")

    out = tmp_path / "pre"
    pre = subprocess.run(mammoclip_command() + ["-v", "preprocess", *inputs, "--out", str(out), "--height", "128",
                                                "--width", "80"], capture_output=True, text=True, timeout=300)
    assert pre.returncode == 0, pre.stderr
    assert_no_identifier(pre.stdout + pre.stderr, identifiers, "mammoclip preprocess output")
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(list(out.glob("*/entries/*/*.mce"))) == len(files)  # + params.json and the path index
    for path in written:
        assert_no_identifier(path.read_bytes().decode("latin-1"), identifiers, str(path))

    # 3. the synthetic dataset's own CSV/JSON outputs
    for path in synthetic_dataset.glob("*.[cj]s*"):
        assert_no_identifier(path.read_text(errors="replace"), identifiers, path.name)


def test_bad_arguments_give_a_message_not_a_traceback(tmp_path):
    result = subprocess.run(mammoclip_command() + ["synth", "--out", str(tmp_path / "x"), "--height", "16"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "image_size" in result.stderr and "Traceback" not in result.stderr


def test_inspect_reports_bad_files_and_continues(synthetic_dataset, tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"DICM" * 10)
    good = next((synthetic_dataset / "images").rglob("*.dicom"))
    result = subprocess.run(mammoclip_command() + ["inspect", str(bad), str(good)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]  # stdout: data only
    assert len(lines) == 1 and lines[0]["laterality"] in ("L", "R") and lines[0]["modality"] == "MG"
    failures = [line for line in result.stderr.splitlines() if line.startswith("mammoclip inspect: /")]
    assert failures == [f"mammoclip inspect: {bad}: unreadable DICOM file (InvalidDicomError)"] or \
        (len(failures) == 1 and failures[0].startswith(f"mammoclip inspect: {bad}: "))
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["synth", "--help"], ["preprocess", "--help"]])
def test_help(argv):
    result = subprocess.run(mammoclip_command() + argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout
