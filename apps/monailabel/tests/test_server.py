"""Integration test: the real ``monailabel start_server`` serving the app on synthetic MG DICOMs.

Needs MONAI Label 0.8.5 in the running environment (``.ci/monailabel`` builds one). The bundle is a
copy of the repository's ``bundle/configs`` with an untrained checkpoint of the preset that
``inference.json`` names, so the test checks the plumbing and the output contract, not accuracy.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
APP_DIR = Path("apps") / "monailabel"  # relative to REPO, as in the README's command
MODEL = "mammoclip"
N_IMAGES = 2
STARTUP_TIMEOUT_S = 300.0
INFER_TIMEOUT_S = 300.0
HEADER_IDENTIFIERS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(url: str, data: bytes | None = None, timeout: float = 10.0) -> Any:
    """GET (or POST when ``data`` is given) and decode the JSON answer."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if data is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8"))


def _tail(path: Path, lines: int = 80) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's bundle configs plus ``models/model.pt`` from an untrained model (offline)."""
    import torch
    from mammoclip_monai.networks import create_model

    bundle = tmp_path_factory.mktemp("bundle")
    shutil.copytree(REPO / "bundle" / "configs", bundle / "configs")
    config = json.loads((bundle / "configs" / "inference.json").read_text(encoding="utf-8"))
    model = create_model(config["preset"], pretrained=True, image_size=tuple(config["image_size"]))
    (bundle / "models").mkdir()
    torch.save(model.state_dict(), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="module")
def output_names(bundle_dir: Path) -> list[str]:
    """What the server must answer with, read independently of the app: metadata.json's channel_def."""
    metadata = json.loads((bundle_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    return [channel_def[k] for k in sorted(channel_def, key=int)]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat folder of small synthetic MG DICOMs (hash file names, fictitious headers).

    The CC views of both breasts: with seed 0 the right one is MONOCHROME1 and RLE compressed, so
    the server also decodes RLE, inverts MONOCHROME1 and flips a right breast with pydicom 2.4.
    """
    from mammoclip_monai.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root / "data", n_patients=1, seed=0, image_size=(512, 384), workers=1, progress=False)
    with open(root / "data" / "truth.csv", newline="", encoding="utf-8") as f:
        chosen = [row for row in csv.DictReader(f) if row["view"] == "CC"]
    assert sorted(row["laterality"] for row in chosen) == ["L", "R"]
    folder = root / "studies"
    folder.mkdir()
    for row in chosen:
        source = root / "data" / row["image_path"]
        shutil.copy2(source, folder / source.name)
    return folder


@pytest.fixture(scope="module")
def header_identifiers(studies: Path) -> set[str]:
    """The fictitious patient identifiers in the studies' headers: none may appear in answers or logs."""
    import pydicom

    found = set()
    for path in studies.glob("*.dicom"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {str(ds.get(tag, "")) for tag in HEADER_IDENTIFIERS}
    found.discard("")
    assert found, "the synthetic headers should carry identifiers"
    return found


@pytest.fixture(scope="module")
def server(bundle_dir: Path, studies: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Start the server, wait for /info/, yield (base URL, log file); always stop it."""
    cli = Path(sys.executable).with_name("monailabel")
    if not cli.exists():
        pytest.fail(f"{cli} not found: run in a MONAI Label 0.8.5 environment (.ci/monailabel)")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [
        os.fspath(cli), "start_server", "--app", os.fspath(APP_DIR), "--studies", os.fspath(studies),
        "--host", "127.0.0.1", "--port", str(port), "--conf", "bundle_path", os.fspath(bundle_dir),
    ]  # fmt: skip
    env = dict(os.environ, MONAILABEL_PYEXE=sys.executable, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with code {process.returncode}:\n{_tail(log)}")
            try:
                _request(f"{base}/info/", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S:.0f} s:\n{_tail(log)}")
            time.sleep(1.0)
        yield base, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def test_info_lists_the_classification_model(server: tuple[str, Path], output_names: list[str]) -> None:
    base, _ = server
    info = _request(f"{base}/info/")
    assert list(info["models"]) == [MODEL]
    model = info["models"][MODEL]
    assert model["type"] == "classification"
    assert model["labels"] == {name: i for i, name in enumerate(output_names)}
    assert info["datastore"]["total"] == N_IMAGES  # the DICOM files are listed


def test_infer_returns_per_finding_scores(server: tuple[str, Path], studies: Path, output_names: list[str],
                                          header_identifiers: set[str]) -> None:
    base, _ = server
    image_ids = sorted(path.name[: -len(".dicom")] for path in studies.glob("*.dicom"))
    assert len(image_ids) == N_IMAGES
    for image_id in image_ids:
        query = urllib.parse.urlencode({"image": image_id})
        answer = _request(f"{base}/infer/{MODEL}?{query}", data=b"params=%7B%7D", timeout=INFER_TIMEOUT_S)
        scores = answer["scores"]
        assert list(scores) == output_names
        for name, score in scores.items():
            assert isinstance(score, float) and 0.0 <= score <= 1.0, (name, score)
        density = [score for name, score in scores.items() if name.startswith("density_")]
        assert density, "the bundle should score breast density"
        assert sum(density) == pytest.approx(1.0, abs=1e-4)
        assert [(p["idx"], p["label"], p["score"]) for p in answer["prediction"]] == [
            (i, name, scores[name]) for i, name in enumerate(output_names)
        ]
        text = json.dumps(answer)
        assert not [value for value in header_identifiers if value in text]


def test_server_log_names_no_patient(server: tuple[str, Path], header_identifiers: set[str]) -> None:
    """Runs after the inferences above (file order), so the log covers reading the DICOM headers."""
    _, log = server
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Infer Request" in text, "the log should cover the inference requests"
    assert not [value for value in header_identifiers if value in text]
