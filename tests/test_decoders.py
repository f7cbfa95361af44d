"""DICOM decoder choice (`mammoclip_monai.data.decoders`): the fastest installed backend per syntax,
forced backends, fallback on failure, nvImageCodec's CPU fallback, and the writer's syntaxes.

Images are tiny (48 x 40) so the file runs in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from mammoclip_monai.data import decoders
from mammoclip_monai.data.reader import MammogramReadError, read_mammogram
from mammoclip_monai.data.synthetic.dicom_writer import (
    TRANSFER_SYNTAXES,
    DicomUIDs,
    ImageEncoding,
    PatientIdentity,
    encode_pixels,
    make_uid,
    write_mammogram,
)

IDENTITY = PatientIdentity("Doe^Decoder^1", "MRN-DEC-1", "19600101", 60, "ACC-DEC-1", "20200101", "120000")
RNG = np.random.default_rng(11)
IMAGE = np.clip(RNG.random((48, 40)) ** 2 + np.linspace(0, 0.3, 40), 0, 1)  # noisy: no codec gets it free
try:  # python-gdcm (the dev extra) encodes JPEG lossless for the writer
    import gdcm  # noqa: F401
except ImportError:
    SKIPPED = {"jpeg_lossless"}
else:
    SKIPPED = set()
COMPRESSED = [name for name in TRANSFER_SYNTAXES if name not in SKIPPED | {"explicit"}]


def write(path, transfer: str, bits: int = 14, photometric: str = "MONOCHROME2"):
    uids = DicomUIDs(make_uid("s", path.name), make_uid("e", path.name), make_uid("i", path.name))
    write_mammogram(path, IMAGE, laterality="L", view="CC", spacing_mm=0.1, identity=IDENTITY, uids=uids,
                    encoding=ImageEncoding(bits_stored=bits, photometric=photometric, transfer=transfer))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {name: write(root / f"{name}.dcm", name) for name in TRANSFER_SYNTAXES if name not in SKIPPED}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(decoders.DECODER_ENV, raising=False)


def syntax_of(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


# ------------------------------------------------------------------------------- round trips

def test_writer_writes_each_syntax_losslessly(files):
    for name, path in files.items():
        ds = pydicom.dcmread(path)
        assert str(ds.file_meta.TransferSyntaxUID) == TRANSFER_SYNTAXES[name]
        assert np.array_equal(ds.pixel_array, encode_pixels(IMAGE, 14, "MONOCHROME2")), name


@pytest.mark.parametrize("transfer", COMPRESSED)
def test_each_syntax_reads_as_native_and_reports_the_fastest_decoder(files, transfer):
    native, native_meta = read_mammogram(files["explicit"])
    image, meta = read_mammogram(files[transfer])
    assert np.array_equal(image, native)
    assert native_meta["decoder"] == decoders.NATIVE
    assert meta["decoder"] == decoders.installed_backends(syntax_of(files[transfer]))[0]
    assert meta["decoder"] != decoders.PURE_PYTHON  # a compiled plugin is installed for every syntax


@pytest.mark.skipif(bool(SKIPPED), reason="python-gdcm not installed")
def test_gdcm_runs_only_when_named(files):
    syntax = syntax_of(files["jpeg2000"])
    assert "gdcm" not in decoders.installed_backends(syntax)
    assert decoders.backend_order(syntax, decoders.resolve_choice("gdcm")) == ("gdcm",)


def test_measured_order_puts_pure_python_last():
    rle = decoders.installed_backends(TRANSFER_SYNTAXES["rle"])
    assert rle[0] == "pylibjpeg-rle" and rle[-1] == decoders.PURE_PYTHON
    assert decoders.installed_backends(TRANSFER_SYNTAXES["jpeg2000"])[0] == "pylibjpeg-openjpeg"
    assert decoders.installed_backends(TRANSFER_SYNTAXES["explicit"]) == ()


@pytest.mark.parametrize("transfer", COMPRESSED)
def test_every_installed_backend_decodes_the_same_pixels(files, transfer):
    native, _ = read_mammogram(files["explicit"])
    backends = decoders.installed_backends(syntax_of(files[transfer]), forced_only=True)
    assert len(backends) >= 2  # a compiled plugin and GDCM (or pure Python) at least
    for name in backends:
        image, meta = read_mammogram(files[transfer], decoder=name)
        assert meta["decoder"] == name and np.array_equal(image, native), name


@pytest.mark.skipif(bool(SKIPPED), reason="python-gdcm not installed")
def test_environment_variable_forces_a_backend(files, monkeypatch):
    monkeypatch.setenv(decoders.DECODER_ENV, "gdcm")
    assert read_mammogram(files["jpeg2000"])[1]["decoder"] == "gdcm"
    monkeypatch.setenv(decoders.DECODER_ENV, "pydicom")  # alias of the pure-Python RLE decoder
    assert read_mammogram(files["rle"])[1]["decoder"] == decoders.PURE_PYTHON
    assert read_mammogram(files["explicit"])[1]["decoder"] == decoders.NATIVE  # nothing to decode


def test_ordered_list_and_argument_beats_environment(files, monkeypatch):
    monkeypatch.setenv(decoders.DECODER_ENV, "gdcm")
    assert read_mammogram(files["jpegls"], decoder="pylibjpeg-libjpeg, gdcm")[1]["decoder"] == "pylibjpeg-libjpeg"


@pytest.mark.parametrize("bad", ["fastest", "gdcm,nope", "pylibjpeg"])
def test_unknown_decoder_is_a_value_error_before_reading(tmp_path, monkeypatch, bad):
    missing = tmp_path / "not-there.dcm"
    with pytest.raises(ValueError, match="unknown decoder"):
        read_mammogram(missing, decoder=bad)
    monkeypatch.setenv(decoders.DECODER_ENV, bad)
    with pytest.raises(ValueError, match=decoders.DECODER_ENV):
        read_mammogram(missing)


def test_forced_backend_that_cannot_decode_the_syntax_is_refused(files):
    with pytest.raises(MammogramReadError) as err:
        read_mammogram(files["rle"], decoder="pyjpegls")
    assert "forced decoder (pyjpegls)" in err.value.reason and "pylibjpeg-rle" in err.value.reason


# ---------------------------------------------------------------------------------- fallback

def test_a_failing_backend_falls_back_to_the_next(files, monkeypatch):
    native, _ = read_mammogram(files["explicit"])
    cpu_decode = decoders._cpu_decode
    tried = []

    def first_one_breaks(ds, backend):
        tried.append(backend.name)
        if len(tried) == 1:
            raise RuntimeError("simulated plugin crash")
        return cpu_decode(ds, backend)

    monkeypatch.setattr(decoders, "_cpu_decode", first_one_breaks)
    image, meta = read_mammogram(files["jpeg2000"])
    order = decoders.installed_backends(syntax_of(files["jpeg2000"]))
    assert tried == list(order[:2]) and meta["decoder"] == order[1]
    assert np.array_equal(image, native)


def test_no_backend_decodes_garbage_one_line(tmp_path, files):
    path = tmp_path / "garbage.dcm"
    ds = pydicom.dcmread(files["jpeg2000"])
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a real codestream " * 4])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(MammogramReadError) as err:
        read_mammogram(path)
    reason = err.value.reason
    assert str(err.value) == f"{path}: {reason}" and "\n" not in reason
    assert reason.startswith("could not decode the 'JPEG 2000 Image Compression (Lossless Only)' pixel data")
    for name in decoders.installed_backends(syntax_of(path)):
        assert name in reason
    assert "gdcm" not in reason  # never automatic: this very codestream aborts python-gdcm 3.2.6
    assert "Doe" not in reason and "MRN" not in reason


def test_size_checks_refuse_a_bomb_before_any_backend(tmp_path, files, monkeypatch):
    calls = []
    monkeypatch.setattr(decoders, "_cpu_decode", lambda *args: calls.append(args))
    monkeypatch.setattr(decoders, "_nvimgcodec_decode", lambda *args: calls.append(args))
    path = tmp_path / "bomb.dcm"
    ds = pydicom.dcmread(files["jpeg2000"])
    ds.Rows = ds.Columns = 60000  # 3.6 G pixels declared, a few bytes of codestream
    ds.save_as(path, enforce_file_format=True)
    for choice in ("auto", "nvimgcodec", "gdcm"):
        with pytest.raises(MammogramReadError, match="max_pixels|more than"):
            read_mammogram(path, decoder=choice)
    assert calls == []


# ------------------------------------------------------------------------------ nvImageCodec

class _FakeImage:
    def __init__(self, array):
        self.array = array

    def cpu(self):
        return self.array


class _FakeGpuDecoder:
    """Stands in for nvimgcodec.Decoder: decodes with OpenJPEG, returns (H, W, 1) like the GPU."""

    def __init__(self):
        self.streams = []

    def decode(self, stream, params=None):
        import openjpeg

        self.streams.append(stream)
        return _FakeImage(openjpeg.decode(stream)[..., None].astype(np.uint16))


def test_nvimgcodec_path_decodes_the_codestream_when_a_device_exists(files, monkeypatch):
    fake = _FakeGpuDecoder()
    monkeypatch.setattr(decoders, "_nvimgcodec_decoder", lambda: (fake, None))
    native, _ = read_mammogram(files["explicit"])
    image, meta = read_mammogram(files["jpeg2000"], decoder="nvimgcodec")
    assert meta["decoder"] == decoders.NVIMGCODEC and np.array_equal(image, native)
    assert len(fake.streams) == 1 and fake.streams[0][:2] == b"\xff\x4f"  # the bare codestream
    assert read_mammogram(files["rle"], decoder="gpu")[1]["decoder"] == "pylibjpeg-rle"  # not an nvImageCodec syntax


def test_nvimgcodec_falls_back_to_the_cpu_without_a_device(files, monkeypatch):
    monkeypatch.setattr(decoders, "_GPU_STATE", {})
    native, _ = read_mammogram(files["explicit"])
    image, meta = read_mammogram(files["jpeg2000"], decoder="nvimgcodec")
    assert meta["decoder"] == "pylibjpeg-openjpeg" and np.array_equal(image, native)
    assert "error" in decoders._GPU_STATE or "decoder" in decoders._GPU_STATE  # tried once, result cached


def test_nvimgcodec_unavailable_device_is_one_reason(monkeypatch):
    nvimgcodec = pytest.importorskip("nvidia.nvimgcodec")
    try:
        nvimgcodec.Decoder()
    except RuntimeError:  # CUDA runtime failure: no device, the case under test
        pass
    else:
        pytest.skip("a CUDA device is present")
    monkeypatch.setattr(decoders, "_GPU_STATE", {})
    with pytest.raises(RuntimeError, match="nvImageCodec unavailable"):
        decoders._nvimgcodec_decoder()
    with pytest.raises(RuntimeError, match="nvImageCodec unavailable"):  # cached: not retried
        decoders._nvimgcodec_decoder()


def test_auto_never_uses_the_gpu(files, monkeypatch):
    monkeypatch.setattr(decoders, "_nvimgcodec_decode", lambda *args: pytest.fail("auto used the GPU"))
    assert decoders.resolve_choice() == (decoders.AUTO,)
    assert read_mammogram(files["jpeg2000"])[1]["decoder"] == "pylibjpeg-openjpeg"


# ------------------------------------------------------------------------------------ writer

def test_rle_bytes_are_pydicom_s_own_encoder(tmp_path, files):
    """Seeded datasets must not change with the install (GDCM's RLE segments differ)."""
    ds = pydicom.dcmread(files["explicit"])
    ds.compress(TRANSFER_SYNTAXES["rle"], encoding_plugin="pydicom", generate_instance_uid=False)
    assert bytes(pydicom.dcmread(files["rle"]).PixelData) == bytes(ds.PixelData)


def test_writer_refuses_an_unknown_transfer(tmp_path):
    with pytest.raises(ValueError, match="unknown transfer 'htj2k'"):
        write(tmp_path / "x.dcm", "htj2k")


def test_monochrome1_12_bit_jpeg_lossless_round_trip(tmp_path):
    explicit = read_mammogram(write(tmp_path / "e.dcm", "explicit", 12, "MONOCHROME1"))[0]
    for transfer in sorted({"jpeg_lossless", "jpegls", "jpeg2000"} - SKIPPED):
        image, meta = read_mammogram(write(tmp_path / f"{transfer}.dcm", transfer, 12, "MONOCHROME1"))
        assert np.array_equal(image, explicit) and meta["photometric_interpretation"] == "MONOCHROME1"
