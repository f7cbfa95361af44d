"""The app's refusal rules without a server: id rules, the contained datastore, the route allow-list.

Fast checks of what the live test (``test_server.py``) cannot reach cheaply: every branch of the
id rules, a symbolic link in the studies folder, uploads onto an existing file or link.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi import HTTPException
from lib.datastore import ClosedLocalDatastore
from lib.refusals import contained_image_id, is_image_id
from lib.routes import ServedRoutes

PATTERNS = ["*.png", "*.dcm", "*.dicom", "*.nii.gz"]


@pytest.mark.parametrize("value, expected", [
    ("04e54e94bd96ef8ea42bf30d19604b4c", True), ("refused-ct", True), ("1.2.840.10008", True),
    ("..x", True), ("", False), (".", False), ("..", False), ("/etc/passwd", False), ("../x", False),
    ("x/..", False), ("a\\b", False), ("a\0b", False), (None, False), (["x"], False), (7, False),
])
def test_is_image_id(value: object, expected: bool) -> None:
    assert is_image_id(value) is expected


@pytest.mark.parametrize("requested, expected", [
    ("04e54e94bd96ef8ea42bf30d19604b4c", "04e54e94bd96ef8ea42bf30d19604b4c"), ("../../x", "x"),
    ("/tmp/a b/c", "tmp_a_b_c"), ("..\\..\\x", "x"), ("1.2.840", "1_2_840"), ("x.dcm", "x_dcm"),
])
def test_contained_image_id(requested: str, expected: str) -> None:
    assert contained_image_id(requested) == expected


@pytest.mark.parametrize("requested", ["", ".", "..", "../..", "/", "___", "\\"])
def test_contained_image_id_with_nothing_left_is_random(requested: str) -> None:
    first, second = contained_image_id(requested), contained_image_id(requested)
    assert first != second and len(first) == 32 and first.isalnum()


def test_contained_image_id_is_cut_to_a_file_name() -> None:
    assert len(contained_image_id("a" * 1000)) == 128


def _store(folder: Path, allow_uploads: bool = False) -> ClosedLocalDatastore:
    return ClosedLocalDatastore(os.fspath(folder), extensions=PATTERNS, allow_uploads=allow_uploads)


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """studies/ with one image and a link to a file outside it; a source file to upload."""
    studies, outside = tmp_path / "studies", tmp_path / "outside"
    studies.mkdir()
    outside.mkdir()
    (studies / "inside.png").write_bytes(b"inside")
    (outside / "secret.png").write_bytes(b"secret")
    (studies / "link.png").symlink_to(outside / "secret.png")
    source = tmp_path / "upload.dcm"
    source.write_bytes(b"upload")
    return {"studies": studies, "outside": outside, "source": source}


def test_ids_resolve_inside_the_folder_only(layout: dict[str, Path]) -> None:
    store = _store(layout["studies"])
    assert set(store.list_images()) == {"inside", "link"}  # MONAI Label lists the link
    assert store.get_image_uri("inside") == os.path.realpath(layout["studies"] / "inside.png")
    assert store.get_image_uri("link") == ""  # ... but it leads out of the folder
    for hostile in ("../outside/secret", "/etc/passwd", "..", "unknown"):
        assert store.get_image_uri(hostile) == ""
    assert "path" not in store.get_image_info("inside")


def test_uploads_are_refused_when_off(layout: dict[str, Path]) -> None:
    store = _store(layout["studies"])
    before = sorted(p.name for p in layout["studies"].iterdir())
    with pytest.raises(HTTPException) as refused:
        store.add_image("new", os.fspath(layout["source"]), {})
    assert refused.value.status_code == 403
    assert sorted(p.name for p in layout["studies"].iterdir()) == before
    assert "new" not in store.list_images()


def test_uploads_when_on_are_contained_and_never_replace(layout: dict[str, Path]) -> None:
    store = _store(layout["studies"], allow_uploads=True)
    stored = store.add_image("../outside/new", os.fspath(layout["source"]), {"note": "free-form"})
    assert stored == "outside_new"
    assert (layout["studies"] / "outside_new.dcm").read_bytes() == b"upload"
    assert sorted(p.name for p in layout["outside"].iterdir()) == ["secret.png"]
    assert store.get_image_uri(stored) and "note" not in store.get_image_info(stored)
    for taken in ("inside", "outside_new"):
        with pytest.raises(HTTPException) as refused:
            store.add_image(taken, os.fspath(layout["source"]), {})
        assert refused.value.status_code == 409
    # a link already in the folder is never written through, whatever the upload's extension
    (layout["studies"] / "trap.dcm").symlink_to(layout["outside"] / "secret.png")
    with pytest.raises(HTTPException) as refused:
        store.add_image("trap", os.fspath(layout["source"]), {})
    assert refused.value.status_code == 409
    assert (layout["outside"] / "secret.png").read_bytes() == b"secret"


def test_uploads_must_be_a_mammogram_format(layout: dict[str, Path], tmp_path: Path) -> None:
    store = _store(layout["studies"], allow_uploads=True)
    volume = tmp_path / "volume.nii.gz"  # listed by the datastore, not read by the project's reader
    volume.write_bytes(b"nifti")
    with pytest.raises(HTTPException) as refused:
        store.add_image("volume", os.fspath(volume), {})
    assert refused.value.status_code == 415


@pytest.mark.parametrize("call", [
    lambda s: s.save_label("inside", "x.png", "final", {}), lambda s: s.remove_label("inside", "final"),
    lambda s: s.remove_image("inside"), lambda s: s.update_image_info("inside", {"x": 1}),
    lambda s: s.update_label_info("inside", "final", {}), lambda s: s.get_dataset_archive(None),
])
def test_datastore_changes_are_refused(layout: dict[str, Path], call) -> None:
    store = _store(layout["studies"])
    with pytest.raises(HTTPException) as refused:
        call(store)
    assert refused.value.status_code == 403
    assert (layout["studies"] / "inside.png").exists()


@pytest.mark.parametrize("method, path, served", [
    ("GET", "/info/", "monai_label"), ("GET", "/info", "monai_label"), ("GET", "/datastore/", "monai_label"),
    ("GET", "/", "monai_label"), ("GET", "/docs", "monai_label"), ("GET", "/openapi.json", "monai_label"),
    ("POST", "/infer/mammoclip", "guarded"), ("POST", "/infer/mammoclip/", "guarded"),
    ("POST", "/info/", None), ("DELETE", "/datastore/", None), ("PUT", "/datastore/", None),
    ("GET", "/datastore/image", None), ("HEAD", "/datastore/image", None), ("PUT", "/datastore/image", None),
    ("POST", "/infer/wsi/mammoclip", None), ("POST", "/infer/wsi_v2/mammoclip", None),
    ("GET", "/infer/mammoclip", None), ("POST", "/train/", None), ("GET", "/logs/", None),
    ("GET", "/static/x.js", None), ("POST", "/reload", None), ("GET", "/something/new", None),
])
def test_route_allow_list(method: str, path: str, served: str | None) -> None:
    routes = ServedRoutes(object(), allow_uploads=False)
    expected = {"monai_label": routes.monai_label, "guarded": routes.guarded_infer, None: None}[served]
    assert routes.route(method, path) is expected


def test_the_upload_route_opens_with_the_option_only() -> None:
    closed, open_ = ServedRoutes(object(), allow_uploads=False), ServedRoutes(object(), allow_uploads=True)
    assert closed.route("PUT", "/datastore/image") is None
    assert closed.refusal("PUT", "/datastore/image").startswith("uploads are off")
    assert open_.route("PUT", "/datastore/image") is open_.monai_label
    assert open_.route("DELETE", "/datastore/image") is None


def test_app_options_are_checked_at_start_up() -> None:
    from main import MammoClipApp, conf_flag

    assert conf_flag({}, "allow_uploads") is False
    assert conf_flag({"allow_uploads": " TRUE "}, "allow_uploads") is True
    with pytest.raises(ValueError, match="allow_uploads must be true or false"):
        conf_flag({"allow_uploads": "yes please"}, "allow_uploads")
    with pytest.raises(ValueError, match="needs a local studies folder"):  # raised before any connection
        MammoClipApp("apps/monailabel", "http://127.0.0.1:9/dicom-web", {"allow_uploads": "true"})


def test_the_reader_error_is_found_behind_wrappers() -> None:
    from main import mammogram_read_error

    from mammoclip_monai.data.reader import MammogramReadError

    original = MammogramReadError("/studies/x.dcm", "modality 'CT' is not MG")
    try:
        try:
            raise original
        except MammogramReadError as error:
            raise RuntimeError("applying transform LoadMammogramd") from error
    except RuntimeError as wrapped:
        assert mammogram_read_error(wrapped) is original
    assert mammogram_read_error(RuntimeError("something else")) is None
