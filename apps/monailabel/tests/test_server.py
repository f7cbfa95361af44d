"""Integration test: the real ``monailabel start_server`` serving the app on synthetic MG DICOMs.

Needs MONAI Label 0.8.5 in the running environment (``.ci/monailabel`` builds one). The bundle is a
copy of the repository's ``bundle/configs`` with an untrained checkpoint of the preset that
``inference.json`` names, so the test checks the plumbing, the output contract and what the
server refuses, not accuracy.

Two servers start side by side: the default one (closed: no uploads) on a studies folder with two
mammograms, a CT and a corrupt file, and one started with ``--conf allow_uploads true`` on an
empty folder, for hostile uploads.
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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
APP_DIR = Path("apps") / "monailabel"  # relative to REPO, as in the README's command
MODEL = "mammoclip"
N_MAMMOGRAMS = 2
CT_ID = "refused-ct"
CORRUPT_ID = "refused-corrupt"
LINK_ID = "linked-outside"
STARTUP_TIMEOUT_S = 300.0
INFER_TIMEOUT_S = 300.0
HEADER_IDENTIFIERS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")
NOT_AN_ID_DETAIL = (
    "image must be the id of an image in this server's datastore (GET /datastore/?output=all lists them), "
    "not a path"
)  # spelled out here, not imported: the test holds the server to the documented answer


@dataclass
class Server:
    base: str
    log: Path
    process: subprocess.Popen


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(url: str, data: bytes | None = None, timeout: float = 10.0) -> Any:
    """GET (or POST when ``data`` is given) and decode the JSON answer; HTTP errors raise."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if data is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8"))


def _call(method: str, url: str, data: bytes | None = None, content_type: str | None = None,
          timeout: float = INFER_TIMEOUT_S) -> tuple[int, Any]:
    """Any method; (status, decoded JSON or text) whatever the status."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    text = body.decode("utf-8", errors="replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def _infer(base: str, image: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
    query = urllib.parse.urlencode({"image": image})
    form = urllib.parse.urlencode({"params": json.dumps(params if params is not None else {})}).encode()
    return _call("POST", f"{base}/infer/{MODEL}?{query}", form, "application/x-www-form-urlencoded")


def _upload(base: str, content: bytes, filename: str, image_id: str | None) -> tuple[int, Any]:
    """``PUT /datastore/image`` with one multipart file, as MONAI Label's clients send it."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    query = f"?{urllib.parse.urlencode({'image': image_id})}" if image_id is not None else ""
    return _call("PUT", f"{base}/datastore/image{query}", body, f"multipart/form-data; boundary={boundary}")


def _tail(path: Path, lines: int = 80) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _files(folder: Path) -> set[str]:
    """Image files directly in ``folder`` (MONAI Label's own datastore_v2.json, .lock, labels/ left out)."""
    return {p.name for p in folder.iterdir() if p.is_file() and p.suffix in (".dcm", ".dicom", ".png")}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's bundle configs plus ``models/model.pt`` from an untrained model (offline)."""
    import torch

    from mammoclip_monai.networks import create_model

    bundle = tmp_path_factory.mktemp("bundle")
    shutil.copytree(REPO / "bundle" / "configs", bundle / "configs")
    config = json.loads((bundle / "configs" / "inference.json").read_text(encoding="utf-8"))
    model = create_model(config["preset"], init_towers=True, image_size=tuple(config["image_size"]))
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
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The CC views of both breasts of one synthetic patient (hash file names, fictitious headers).

    With seed 0 the right one is MONOCHROME1 and RLE compressed, so the server also decodes RLE,
    inverts MONOCHROME1 and flips a right breast with pydicom 2.4.
    """
    from mammoclip_monai.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root / "data", n_patients=1, seed=0, image_size=(512, 384), workers=1, progress=False)
    with open(root / "data" / "truth.csv", newline="", encoding="utf-8") as f:
        chosen = [row for row in csv.DictReader(f) if row["view"] == "CC"]
    assert sorted(row["laterality"] for row in chosen) == ["L", "R"]
    return [root / "data" / row["image_path"] for row in chosen]


@pytest.fixture(scope="module")
def studies(synthetic: list[Path], outside: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat studies folder: the two mammograms, a CT and a corrupt file the reader refuses, and a
    symbolic link to a mammogram outside the folder."""
    import pydicom

    folder = tmp_path_factory.mktemp("studies")
    for source in synthetic:
        shutil.copy2(source, folder / source.name)
    ct = pydicom.dcmread(synthetic[0])
    ct.Modality = "CT"
    ct.save_as(folder / f"{CT_ID}.dicom")
    (folder / f"{CORRUPT_ID}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x07" * 64)
    (folder / f"{LINK_ID}.dicom").symlink_to(outside["existing"])
    return folder


@pytest.fixture(scope="module")
def mammogram_ids(synthetic: list[Path]) -> list[str]:
    return sorted(path.name[: -len(".dicom")] for path in synthetic)


@pytest.fixture(scope="module")
def outside(synthetic: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A readable mammogram outside every studies folder, and a path next to it that does not exist."""
    folder = tmp_path_factory.mktemp("outside")
    existing = folder / "outside.dicom"
    shutil.copy2(synthetic[0], existing)
    return {"existing": existing, "missing": folder / "missing.dicom"}


@pytest.fixture(scope="module")
def upload_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nested two levels down, so ``../../x`` from it still lies inside the test's temporary tree."""
    folder = tmp_path_factory.mktemp("uploads") / "level1" / "studies"
    folder.mkdir(parents=True)
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


def _start(studies: Path, bundle_dir: Path, log: Path, conf: dict[str, str]) -> Server:
    cli = Path(sys.executable).with_name("monailabel")
    if not cli.exists():
        pytest.fail(f"{cli} not found: run in a MONAI Label 0.8.5 environment (.ci/monailabel)")
    port = _free_port()
    command = [
        os.fspath(cli), "start_server", "--app", os.fspath(APP_DIR), "--studies", os.fspath(studies),
        "--host", "127.0.0.1", "--port", str(port), "--conf", "bundle_path", os.fspath(bundle_dir),
    ]
    for key, value in conf.items():
        command += ["--conf", key, value]
    env = dict(os.environ, MONAILABEL_PYEXE=sys.executable, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Server(f"http://127.0.0.1:{port}", log, process)


def _wait_ready(server: Server, deadline: float) -> None:
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with code {server.process.returncode}:\n{_tail(server.log)}")
        try:
            _request(f"{server.base}/info/", timeout=5)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S:.0f} s:\n{_tail(server.log)}")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def servers(bundle_dir: Path, studies: Path, upload_studies: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Start both servers at once (start-up is most of the test's time), wait for /info/, always stop them."""
    logs = tmp_path_factory.mktemp("server")
    started: dict[str, Server] = {}
    try:
        started["closed"] = _start(studies, bundle_dir, logs / "closed.log", {})
        started["uploads"] = _start(upload_studies, bundle_dir, logs / "uploads.log", {"allow_uploads": "true"})
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for server in started.values():
            _wait_ready(server, deadline)
        yield started
    finally:
        for server in started.values():
            server.process.terminate()
        for server in started.values():
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(servers: dict[str, Server]) -> tuple[str, Path]:
    return servers["closed"].base, servers["closed"].log


@pytest.fixture(scope="module")
def upload_server(servers: dict[str, Server]) -> str:
    return servers["uploads"].base


def test_info_lists_the_classification_model(server: tuple[str, Path], output_names: list[str]) -> None:
    base, _ = server
    info = _request(f"{base}/info/")
    assert list(info["models"]) == [MODEL]
    model = info["models"][MODEL]
    assert model["type"] == "classification"
    assert model["labels"] == {name: i for i, name in enumerate(output_names)}
    assert "model_filename" not in model["config"]  # MONAI Label would load the checkpoint a request names
    assert info["trainers"] == {} and info["strategies"] == {} and info["scoring"] == {}
    assert info["datastore"]["total"] == N_MAMMOGRAMS + 3  # the DICOM files are listed, refused ones too


def test_infer_returns_per_finding_scores(server: tuple[str, Path], mammogram_ids: list[str],
                                          output_names: list[str], header_identifiers: set[str]) -> None:
    base, _ = server
    assert len(mammogram_ids) == N_MAMMOGRAMS
    for image_id in mammogram_ids:
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


def test_paths_and_traversal_are_refused_alike(server: tuple[str, Path], outside: dict[str, Path]) -> None:
    """An existing readable mammogram outside the folder and a missing path get the same 400."""
    base, _ = server
    existing, missing = outside["existing"], outside["missing"]
    traversal = os.path.relpath(existing, REPO)  # from the server's working directory
    assert traversal.startswith("..") and (REPO / traversal).resolve() == existing.resolve()
    cases = {
        "absolute, existing": os.fspath(existing),
        "absolute, missing": os.fspath(missing),
        "traversal to an existing file": traversal,
        "traversal to a missing file": os.path.relpath(missing, REPO),
        "parent": "..",
        "inside then out": f"x/../../{existing.name}",
    }
    answers = {name: _infer(base, image) for name, image in cases.items()}
    # percent-encoded dots and slashes in the raw query: the server decodes them to "../.." first
    encoded = traversal.replace(".", "%2e").replace("/", "%2f")
    answers["%2e%2e%2f traversal"] = _call("POST", f"{base}/infer/{MODEL}?image={encoded}", b"params=%7B%7D",
                                           "application/x-www-form-urlencoded")
    answers["%2e%2e"] = _call("POST", f"{base}/infer/{MODEL}?image=%2e%2e", b"params=%7B%7D",
                              "application/x-www-form-urlencoded")
    assert answers == {name: (400, {"detail": NOT_AN_ID_DETAIL}) for name in answers}


def test_params_cannot_replace_the_image(server: tuple[str, Path], mammogram_ids: list[str],
                                         outside: dict[str, Path], bundle_dir: Path) -> None:
    """MONAI Label merges ``params`` into the request: an ``image`` there would replace the query's."""
    base, _ = server
    for params in (
        {"image": os.fspath(outside["existing"])},
        {"image": os.fspath(outside["missing"])},
        {"image": mammogram_ids[1]},
        {"model_filename": os.fspath(bundle_dir / "models" / "model.pt")},
        {"device": "cuda:7"},
    ):
        status, answer = _infer(base, mammogram_ids[0], params)
        assert (status, answer) == (400, {"detail": "this model takes no parameters: params must be {} "
                                                    "(name the image with ?image=<id>)"}), params


def test_unknown_id_is_a_client_error(server: tuple[str, Path]) -> None:
    """An unknown id, and a listed one whose file is a link out of the folder, get the same 404."""
    base, _ = server
    status, answer = _infer(base, "0123456789abcdef0123456789abcdef")
    assert status == 404
    assert "no image with this id" in answer["detail"]
    assert _infer(base, LINK_ID) == (status, answer)


def test_refused_datastore_image_gives_the_reason_not_the_path(server: tuple[str, Path], studies: Path) -> None:
    base, _ = server
    for image_id, reason in ((CT_ID, "modality 'CT' is not MG"), (CORRUPT_ID, "")):
        status, answer = _infer(base, image_id)
        assert status == 422, (image_id, answer)
        detail = answer["detail"]
        assert detail.startswith("the image cannot be scored: ") and reason in detail
        assert os.fspath(studies) not in detail and image_id not in detail


def test_uploads_are_off_by_default(server: tuple[str, Path], studies: Path, synthetic: list[Path]) -> None:
    base, _ = server
    before = _files(studies)
    status, answer = _upload(base, synthetic[0].read_bytes(), "upload.dcm", "uploaded")
    assert (status, answer) == (403, {"detail": "uploads are off: start the server with --conf allow_uploads "
                                                "true to accept them"})
    assert _files(studies) == before


@pytest.mark.parametrize("method, endpoint", [
    ("POST", "/train/"), ("POST", f"/train/{MODEL}?run_sync=true"), ("POST", "/scoring/"),
    ("POST", f"/batch/infer/{MODEL}"), ("POST", "/activelearning/random"), ("PUT", "/session/"),
    ("POST", f"/infer/wsi_v2/{MODEL}"), ("GET", "/logs/"), ("GET", f"/model/{MODEL}"),
    ("PUT", f"/model/{MODEL}"), ("DELETE", f"/model/{MODEL}"), ("GET", "/datastore/image?image={id}"),
    ("DELETE", "/datastore/image?id={id}"), ("PUT", "/datastore/label?image={id}"),
    ("PUT", "/datastore/image/info?image={id}"), ("GET", "/datastore/dataset"), ("POST", "/reload"),
    ("GET", "/ohif/"), ("GET", "/proxy/dicom/wado/x"),
])
def test_what_the_app_does_not_serve_is_refused(server: tuple[str, Path], studies: Path, mammogram_ids: list[str],
                                               method: str, endpoint: str) -> None:
    """Training, scoring, label saving, deletion, downloads (raw DICOM carries the headers) ... : 403."""
    base, _ = server
    before = _files(studies)
    status, answer = _call(method, base + endpoint.format(id=mammogram_ids[0]), b"" if method != "GET" else None,
                           "application/x-www-form-urlencoded", timeout=30)
    assert status == 403, answer
    assert answer["detail"].startswith("not offered by this server")
    assert _files(studies) == before


def test_hostile_uploads_stay_inside_the_studies_folder(upload_server: str, upload_studies: Path,
                                                       synthetic: list[Path], output_names: list[str]) -> None:
    """With ``--conf allow_uploads true``: any id / file name is stored as one file directly in the folder."""
    content = synthetic[0].read_bytes()
    escape_root = upload_studies.parent.parent
    hostile = [
        ("x.dcm", "../../escaped-id"),
        ("x.dcm", os.fspath(escape_root / "escaped-absolute")),
        ("x.dcm", "..\\..\\escaped-backslash"),
        ("../../escaped-name.dcm", None),
        ("x.dcm", ".."),
    ]
    stored = []
    for filename, image_id in hostile:
        status, answer = _upload(upload_server, content, filename, image_id)
        assert status == 200, (filename, image_id, answer)
        stored.append(answer["image"])
    assert len(set(stored)) == len(stored)
    assert _files(upload_studies) == {f"{image_id}.dcm" for image_id in stored}
    escaped = [p for p in escape_root.rglob("*") if p.is_file() and upload_studies not in p.parents]
    assert escaped == []

    # an upload is scored like any datastore image; it never replaces one, and must be a mammogram format
    status, answer = _infer(upload_server, stored[0])
    assert status == 200 and list(answer["scores"]) == output_names
    assert _upload(upload_server, content, "x.dcm", stored[0])[0] == 409
    assert _upload(upload_server, b"text", "notes.txt", "notes")[0] == 415
    assert _files(upload_studies) == {f"{image_id}.dcm" for image_id in stored}


def test_server_log_names_no_patient(servers: dict[str, Server], header_identifiers: set[str]) -> None:
    """Runs after the inferences above (file order), so the logs cover reading the DICOM headers."""
    for name, server in servers.items():
        text = server.log.read_text(encoding="utf-8", errors="replace")
        assert "Infer Request" in text, f"the {name} log should cover inference requests"
        assert not [value for value in header_identifiers if value in text], name
