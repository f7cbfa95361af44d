"""Every file of pydicom's own test corpus either loads as a valid image or raises
MammogramReadError: never another exception, never NaN. Runs on pydicom 2.4 and 3.x."""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pydicom
import pytest

from mammoclip_monai.data.reader import MammogramReadError, read_mammogram

# Walk the installed corpus ourselves: pydicom's get_testdata_files() may try to download.
CORPUS = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
FILES = sorted(
    os.path.relpath(os.path.join(folder, name), CORPUS)
    for folder, _, names in os.walk(CORPUS)
    for name in names
)


def corpus(name: str) -> str:
    path = os.path.join(CORPUS, name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not in this pydicom's corpus")
    return path


def header_shape(path: str) -> tuple[int, int] | None:
    """(Rows, Columns) when pydicom can tell, to check that nothing was transposed."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception:
        return None


def test_corpus_is_present():
    assert len(FILES) > 50


@pytest.mark.parametrize("name", FILES, ids=FILES)
def test_loads_or_raises_mammogram_read_error(name):
    path = os.path.join(CORPUS, name)
    try:
        image, meta = read_mammogram(path, allow_any_modality=True)
    except MammogramReadError as error:
        assert error.path == path and error.reason
        assert str(error) == f"{path}: {error.reason}"
        return
    assert isinstance(image, np.ndarray) and image.dtype == np.float32 and image.ndim == 2
    assert image.flags.c_contiguous
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert meta["spatial_shape"] == image.shape
    assert header_shape(path) == image.shape


@pytest.mark.parametrize("name", [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm", "image_dfl.dcm", "rtdose_1frame.dcm", "liver_1frame.dcm",
])
def test_these_load(name):
    image, meta = read_mammogram(corpus(name), allow_any_modality=True)
    assert image.shape == header_shape(corpus(name))
    assert image.max() > image.min()


def test_monochrome1_corpus_file_is_inverted():
    image, meta = read_mammogram(corpus("dicomdirtests/77654033/CR1/6154"), allow_any_modality=True)
    assert meta["photometric_interpretation"] == "MONOCHROME1" and meta["inverted"] is True


def test_compressed_twins_agree_with_the_native_file():
    native, _ = read_mammogram(corpus("MR_small.dcm"), allow_any_modality=True)
    for twin in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        np.testing.assert_allclose(read_mammogram(corpus(twin), allow_any_modality=True)[0], native, atol=1e-6)


@pytest.mark.parametrize("name, expected", [
    ("rtplan.dcm", "no pixel data"),
    ("test-SR.dcm", "no pixel data"),
    ("MR_truncated.dcm", "truncated"),
    ("SC_rgb_small_odd.dcm", "colour"),
    ("SC_rgb_rle.dcm", "colour"),
    ("SC_rgb_jpeg_dcmtk.dcm", "colour"),
    ("SC_rgb_rle_2frame.dcm", "colour"),
    ("examples_palette.dcm", "colour"),
    ("SC_ybr_full_422_uncompressed.dcm", "colour"),
    ("rtdose.dcm", "multi-frame"),
    ("README.txt", "not a DICOM or supported image file"),
    ("zipMR.gz", "not a DICOM or supported image file"),
])
def test_bad_files_give_the_expected_reason(name, expected):
    with pytest.raises(MammogramReadError) as info:
        read_mammogram(corpus(name), allow_any_modality=True)
    assert expected in info.value.reason


def test_every_sc_rgb_file_is_refused_as_colour():
    names = [name for name in FILES if os.path.basename(name).startswith("SC_rgb")]
    assert names
    for name in names:
        with pytest.raises(MammogramReadError) as info:
            read_mammogram(os.path.join(CORPUS, name), allow_any_modality=True)
        assert "colour" in info.value.reason, name


def test_non_mg_modality_is_named():
    with pytest.raises(MammogramReadError) as info:
        read_mammogram(corpus("CT_small.dcm"))
    assert "'CT'" in info.value.reason and "allow_any_modality" in info.value.reason


@pytest.mark.parametrize("name", ["badVR.dcm", "J2K_pixelrep_mismatch.dcm", "no_meta.dcm", "CT_small.dcm",
                                  # pydicom 3 logs these decoders' failures on pydicom.pixels.decoders.base
                                  "JPEG-lossy.dcm", "JPGExtended.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"])
def test_pydicom_warnings_and_logs_do_not_escape(name, caplog):
    """pydicom's warnings and log records (its child loggers' too) can quote header values: the
    reader keeps them in."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG, logger="pydicom"):
        warnings.simplefilter("always")
        try:
            read_mammogram(corpus(name), allow_any_modality=True)
        except MammogramReadError:
            pass
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")] == []
