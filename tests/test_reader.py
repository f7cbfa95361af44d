"""read_mammogram on small hand-made DICOM, PNG and TIFF files: grey-scale pipeline, metadata,
every kind of bad input, size safety, quiet pydicom logging, and the privacy rule. Runs on
pydicom 2.4 and 3.x; only the LoadMammogramd pass-through test imports torch/MONAI."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from mammoclip_monai.data import dicom as dicom_module
from mammoclip_monai.data import reader as reader_module
from mammoclip_monai.data.reader import DEFAULT_MAX_PIXELS, MammogramReadError, image_hash, read_mammogram

PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
JPEG2000 = "1.2.840.10008.1.2.4.90"
JPEG_LS = "1.2.840.10008.1.2.4.80"
# Fictitious identifiers: none of them may ever reach metadata or an error message.
IDENTIFIERS = {
    "PatientName": "Fictitious^Patientname",
    "PatientID": "FAKEPID-0042",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "FAKEACC-777",
}
META_KEYS = {
    "filename_or_obj", "image_hash", "laterality", "view", "pixel_spacing", "spacing_source",
    "bits_stored", "photometric_interpretation", "voi", "inverted", "modality", "manufacturer",
    "spatial_shape", "decoder",
}
RNG = np.random.default_rng(7)
STORED = RNG.integers(0, 4096, size=(6, 5), dtype=np.uint16)  # 12-bit data, not square
STORED[0, 0], STORED[-1, -1] = 0, 4095


# ---------------------------------------------------------------------------------- helpers

def make_mg(path: Path, pixels: np.ndarray = STORED, *, syntax: str = ExplicitVRLittleEndian,
            bits_stored: int = 12, **tags) -> Path:
    """Write a small MG DICOM (uint16 pixels) with the given tags; a tag set to None is removed."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate = "20240105"
    ds.Modality = "MG"
    for keyword, value in IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    save(ds, path)
    return path


def save(ds: Dataset, path: Path) -> None:
    """Write a dataset with its file meta's transfer syntax, on pydicom 2.4 and 3.x alike."""
    syntax = ds.file_meta.TransferSyntaxUID
    if PYDICOM_3:
        ds.save_as(path, enforce_file_format=True)
        return
    ds.is_little_endian = syntax != ExplicitVRBigEndian
    ds.is_implicit_VR = syntax == ImplicitVRLittleEndian
    ds.save_as(path, write_like_original=False)


def item(**tags) -> Dataset:
    """A sequence item with the given tags."""
    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def read(path: Path, **kwargs):
    return read_mammogram(path, **kwargs)


def reason_of(path: Path, **kwargs) -> MammogramReadError:
    with pytest.raises(MammogramReadError) as info:
        read_mammogram(path, **kwargs)
    error = info.value
    assert str(error) == f"{error.path}: {error.reason}"
    assert error.path == str(path)
    assert_private(str(error))
    return error


def assert_private(text: str) -> None:
    for value in IDENTIFIERS.values():
        assert value not in text
        assert value.split("^")[0] not in text


def assert_image(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.dtype == np.float32 and image.shape == shape
    assert image.flags.c_contiguous and np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0


def rle_claiming(path: Path, rows: int, columns: int, pixels: np.ndarray = STORED) -> Path:
    """An RLE MG file of ``pixels`` whose header then claims ``rows`` x ``columns`` (a size bomb)."""
    make_mg(path, pixels)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.Rows, ds.Columns = rows, columns
    save(ds, path)
    return path


def explicit_le_bytes(ds: Dataset) -> bytes:
    """A data set encoded as Explicit VR Little Endian, without file meta."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def deflated_file(path: Path, body: bytes, *, stream: bytes | None = None) -> Path:
    """A Deflated Explicit VR Little Endian file: preamble, file meta, then ``stream`` (default:
    ``body`` deflated)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    if stream is None:
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        stream = packer.compress(body) + packer.flush()
    path.write_bytes(b"\x00" * 128 + b"DICM" + buffer.getvalue() + stream)
    return path


def deflate_bomb(path: Path, inflated_mib: int) -> Path:
    """A deflated MG header followed by a private OB element of ``inflated_mib`` MiB of zeros and no
    pixel data: about 1 KB per inflated MiB. Built from one flushed block repeated, so that even a
    1 GiB bomb takes milliseconds to make."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MG_FOR_PRESENTATION, generate_uid(), "MG"
    head = explicit_le_bytes(ds) + b"\x09\x00\x10\x00LO\x04\x00FUZZ"  # private creator (0009,0010)
    head += b"\x09\x00\x00\x10OB\x00\x00" + (inflated_mib << 20).to_bytes(4, "little")  # (0009,1000)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    assert again == block  # after a full flush the same input gives the same bytes
    return deflated_file(path, b"", stream=stream + block * inflated_mib + packer.flush())


def peak_traced_bytes(action) -> int:
    """The peak of Python-visible allocations (numpy's included) while ``action()`` runs."""
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def refuses(path: Path, **kwargs) -> str:
    """The reason ``read_mammogram`` gives for ``path`` (which it must refuse)."""
    return reason_of(path, **kwargs).reason


def linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR, output range [0, 1], in float64."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


# --------------------------------------------------------------------- basic read + metadata

def test_minimal_mg_reads_with_contract_metadata(tmp_path):
    path = make_mg(tmp_path / "a.dcm", Manufacturer="ACME")
    image, meta = read(path)
    assert_image(image, STORED.shape)
    assert set(meta) == META_KEYS
    expected = (STORED - STORED.min()) / (STORED.max() - STORED.min())
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert meta["voi"] == "minmax" and meta["inverted"] is False
    assert meta["modality"] == "MG" and meta["manufacturer"] == "ACME"
    assert meta["bits_stored"] == 12 and meta["photometric_interpretation"] == "MONOCHROME2"
    assert meta["spatial_shape"] == (6, 5) and all(type(v) is int for v in meta["spatial_shape"])
    assert meta["filename_or_obj"] == str(path)
    assert meta["laterality"] == "unknown" and meta["view"] == "unknown"
    assert meta["spacing_source"] == "unknown" and all(math.isnan(v) for v in meta["pixel_spacing"])
    assert_private(repr(meta))


def test_image_hash_is_the_content_hash_of_the_file(tmp_path, monkeypatch):
    path = make_mg(tmp_path / "a.dcm")
    _, meta = read(path)
    assert meta["image_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()[:16] == image_hash(path)
    copy = tmp_path / "elsewhere" / "b.dcm"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    assert read(copy)[1]["image_hash"] == meta["image_hash"]  # same bytes, another path
    monkeypatch.chdir(tmp_path)
    assert read(Path("a.dcm"))[1]["image_hash"] == meta["image_hash"]
    changed = bytearray(path.read_bytes())
    changed[-1] ^= 1  # one pixel byte
    (tmp_path / "c.dcm").write_bytes(bytes(changed))
    assert image_hash(tmp_path / "c.dcm") != meta["image_hash"]
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / "p.png")
    png = (tmp_path / "p.png").read_bytes()
    assert read(tmp_path / "p.png")[1]["image_hash"] == hashlib.sha256(png).hexdigest()[:16]


def test_image_hash_streams_files_larger_than_its_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(reader_module, "HASH_CHUNK_BYTES", 1000)
    data = np.random.default_rng(3).integers(0, 256, 4321, dtype=np.uint8).tobytes()
    (tmp_path / "blob.bin").write_bytes(data)
    assert image_hash(tmp_path / "blob.bin") == hashlib.sha256(data).hexdigest()[:16]


# ---------------------------------------------------------------------- photometric / inversion

@pytest.mark.parametrize("window", [None, "LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("shape_tag", [None, "INVERSE"])
def test_monochrome1_twin_equals_monochrome2(tmp_path, window, shape_tag):
    top = 4095
    center, width = 1800.0, 1500.0
    tags2, tags1 = {}, {}
    if window:
        # The same window expressed in each file's stored values: under x -> top - x a LINEAR
        # window [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] maps to centre top - c + 1.
        mirrored = top - center + (1 if window == "LINEAR" else 0)
        tags2 = dict(WindowCenter=center, WindowWidth=width, VOILUTFunction=window)
        tags1 = dict(WindowCenter=mirrored, WindowWidth=width, VOILUTFunction=window)
    mono2 = make_mg(tmp_path / "m2.dcm", STORED, **tags2)
    mono1 = make_mg(tmp_path / "m1.dcm", top - STORED, PhotometricInterpretation="MONOCHROME1",
                    PresentationLUTShape=shape_tag, **tags1)
    image2, meta2 = read(mono2)
    image1, meta1 = read(mono1)
    assert meta1["inverted"] is True and meta2["inverted"] is False
    assert meta1["photometric_interpretation"] == "MONOCHROME1"
    assert meta1["voi"] == meta2["voi"] == ("window" if window else "minmax")
    assert np.abs(image1 - image2).max() < 1e-6
    assert image2.std() > 0.1  # a real image, not a flat one


def test_inverse_presentation_lut_on_monochrome2_inverts(tmp_path):
    plain, _ = read(make_mg(tmp_path / "p.dcm"))
    inverse, meta = read(make_mg(tmp_path / "i.dcm", PresentationLUTShape="INVERSE"))
    assert meta["inverted"] is True
    np.testing.assert_allclose(inverse, 1.0 - plain, atol=1e-6)
    identity, meta = read(make_mg(tmp_path / "d.dcm", PresentationLUTShape="IDENTITY"))
    assert meta["inverted"] is False
    np.testing.assert_array_equal(identity, plain)


def test_monochrome1_with_inverse_inverts_once(tmp_path):
    plain, _ = read(make_mg(tmp_path / "p.dcm"))
    both, meta = read(make_mg(tmp_path / "b.dcm", PhotometricInterpretation="MONOCHROME1",
                              PresentationLUTShape="INVERSE"))
    assert meta["inverted"] is True
    np.testing.assert_allclose(both, 1.0 - plain, atol=1e-6)


# ------------------------------------------------------------------------------------ VOI

def test_window_linear_matches_dicom_formula(tmp_path):
    image, meta = read(make_mg(tmp_path / "w.dcm", WindowCenter=2000, WindowWidth=1001))
    assert meta["voi"] == "window"
    np.testing.assert_allclose(image, linear(STORED.astype(np.float64), 2000, 1001), atol=1e-6)
    # the formula's anchor points, by hand: c - 0.5 - (w-1)/2 -> 0, c - 0.5 + (w-1)/2 -> 1
    pixels = np.array([[1499, 1500, 2000, 2500, 2501]], dtype=np.uint16)
    image, _ = read(make_mg(tmp_path / "v.dcm", pixels, WindowCenter=2000.5, WindowWidth=1001))
    np.testing.assert_allclose(image, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)


def test_window_linear_exact_and_sigmoid(tmp_path):
    x = STORED.astype(np.float64)
    image, _ = read(make_mg(tmp_path / "e.dcm", WindowCenter=2048, WindowWidth=1024,
                            VOILUTFunction="LINEAR_EXACT"))
    np.testing.assert_allclose(image, np.clip((x - 2048) / 1024 + 0.5, 0, 1), atol=1e-6)
    image, _ = read(make_mg(tmp_path / "s.dcm", WindowCenter=2048, WindowWidth=1024,
                            VOILUTFunction="SIGMOID"))
    np.testing.assert_allclose(image, 1 / (1 + np.exp(-4 * (x - 2048) / 1024)), atol=1e-6)


def test_window_width_one_is_a_threshold_and_nonpositive_width_is_zeros(tmp_path):
    image, _ = read(make_mg(tmp_path / "t.dcm", WindowCenter=2048, WindowWidth=1))
    np.testing.assert_array_equal(image, (STORED > 2047.5).astype(np.float32))
    for width in (0, -10):
        image, meta = read(make_mg(tmp_path / f"z{width}.dcm", WindowCenter=2048, WindowWidth=width,
                                   PhotometricInterpretation="MONOCHROME1"))
        assert meta["voi"] == "window"
        assert_image(image, STORED.shape)
        assert not image.any()


def test_window_index_selects_and_falls_back(tmp_path):
    path = make_mg(tmp_path / "m.dcm", WindowCenter=[1000, 3000], WindowWidth=[500, 2000])
    x = STORED.astype(np.float64)
    first, _ = read(path)
    second, _ = read(path, window_index=1)
    beyond, _ = read(path, window_index=5)
    np.testing.assert_allclose(first, linear(x, 1000, 500), atol=1e-6)
    np.testing.assert_allclose(second, linear(x, 3000, 2000), atol=1e-6)
    np.testing.assert_array_equal(beyond, first)


def test_voi_choices(tmp_path):
    path = make_mg(tmp_path / "m.dcm", WindowCenter=1000, WindowWidth=500)
    x = STORED.astype(np.float64)
    image, meta = read(path, voi="minmax")
    assert meta["voi"] == "minmax"
    np.testing.assert_allclose(image, (x - x.min()) / (x.max() - x.min()), atol=1e-6)
    image, meta = read(path, voi="range")
    assert meta["voi"] == "range"
    np.testing.assert_allclose(image, x / 4095, atol=1e-6)
    image, meta = read(path, voi="window")
    assert meta["voi"] == "window"
    assert "VOI LUT" in reason_of(path, voi="lut").reason
    plain = make_mg(tmp_path / "p.dcm")
    assert "Window" in reason_of(plain, voi="window").reason
    with pytest.raises(ValueError):
        read_mammogram(plain, voi="bogus")
    with pytest.raises(ValueError):
        read_mammogram(plain, window_index=None)


def test_voi_range_for_signed_data(tmp_path):
    signed = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    path = make_mg(tmp_path / "s.dcm", signed.view(np.uint16), PixelRepresentation=1)
    image, _ = read(path, voi="range")
    np.testing.assert_allclose(image, (signed + 2048) / 4095, atol=1e-6)


def voi_lut(descriptor, data, *, ow: bool = False) -> Dataset:
    lut = Dataset()
    lut.add_new(0x00283002, "US", [int(v) for v in descriptor])  # LUTDescriptor
    if ow:
        lut.add_new(0x00283006, "OW", np.asarray(data, dtype="<u2").tobytes())  # LUTData
    else:
        lut.add_new(0x00283006, "US", [int(v) for v in data])
    return lut


@pytest.mark.parametrize("ow", [False, True])
def test_voi_lut_sequence_applied(tmp_path, ow):
    pixels = np.array([[0, 99, 100, 101, 102, 103, 4095]], dtype=np.uint16)
    lut = voi_lut([4, 100, 8], [10, 20, 200, 255], ow=ow)
    path = make_mg(tmp_path / "l.dcm", pixels, VOILUTSequence=Sequence([lut]),
                   WindowCenter=50, WindowWidth=10)
    image, meta = read(path)
    assert meta["voi"] == "lut"
    # below the first mapped value -> first entry; above the last -> last entry; / (2**8 - 1)
    expected = np.array([[10, 10, 10, 20, 200, 255, 255]]) / 255
    np.testing.assert_allclose(image, expected, atol=1e-6)
    windowed, meta = read(path, voi="window")
    assert meta["voi"] == "window"
    np.testing.assert_allclose(windowed, linear(pixels.astype(float), 50, 10), atol=1e-6)


def test_voi_lut_index_data_over_range_and_65536_entries(tmp_path):
    pixels = np.array([[0, 1, 2, 65535]], dtype=np.uint16)
    small = voi_lut([2, 0, 8], [0, 255])
    over = voi_lut([3, 0, 8], [0, 500, 1000])  # data exceed 2**8-1: divide by 1023
    path = make_mg(tmp_path / "l.dcm", pixels, bits_stored=16, VOILUTSequence=Sequence([small, over]))
    image, _ = read(path, window_index=1)
    np.testing.assert_allclose(image, np.array([[0, 500, 1000, 1000]]) / 1023, atol=1e-6)
    image, _ = read(path, window_index=9)
    np.testing.assert_allclose(image, [[0, 1, 1, 1]], atol=1e-6)
    full = voi_lut([0, 0, 16], np.arange(65536) // 2, ow=True)  # 0 entries means 65536
    image, _ = read(make_mg(tmp_path / "f.dcm", pixels, bits_stored=16, VOILUTSequence=Sequence([full])))
    np.testing.assert_allclose(image, (pixels // 2) / 65535, atol=1e-6)


def test_voi_lut_with_inverse_rescale_and_signed_first_value(tmp_path):
    pixels = np.array([[-200, -101, -100, -99, -98, 500]], dtype=np.int16)
    # modality values = stored - 1000; the LUT starts at -1100, written through the US VR
    lut = voi_lut([3, 65536 - 1100, 10], [0, 511, 1023])
    path = make_mg(tmp_path / "s.dcm", pixels.view(np.uint16), PixelRepresentation=1,
                   RescaleIntercept=-1000, VOILUTSequence=Sequence([lut]), PresentationLUTShape="INVERSE")
    image, meta = read(path)
    assert meta["voi"] == "lut" and meta["inverted"] is True
    expected = np.array([[0, 0, 0, 511, 1023, 1023]]) / 1023
    np.testing.assert_allclose(image, 1 - expected, atol=1e-6)


def test_voi_lut_with_empty_lut_data_is_a_clear_reason(tmp_path):
    lut = Dataset()
    lut.add_new(0x00283002, "US", [3, 0, 8])
    lut.add_new(0x00283006, "US", None)  # LUTData present but empty
    path = make_mg(tmp_path / "e.dcm", VOILUTSequence=Sequence([lut]))
    assert refuses(path) == "empty VOI LUT (LUTData has no entries)"
    empty_ow = voi_lut([3, 0, 8], [], ow=True)
    assert "empty VOI LUT" in refuses(make_mg(tmp_path / "o.dcm", VOILUTSequence=Sequence([empty_ow])))


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("entries", [[0, 0, 0], [7, 7, 7]])
def test_flat_voi_lut_gives_zeros_not_inverted(tmp_path, photometric, entries):
    """A VOI LUT whose entries are all equal is a flat VOI, like a window of width 0."""
    path = make_mg(tmp_path / "z.dcm", VOILUTSequence=Sequence([voi_lut([3, 0, 8], entries)]),
                   PhotometricInterpretation=photometric)
    image, meta = read(path)
    assert meta["voi"] == "lut" and meta["inverted"] is False
    assert_image(image, STORED.shape)
    assert not image.any()


def test_modality_lut_sequence(tmp_path):
    pixels = np.array([[0, 1, 2, 3, 4, 9]], dtype=np.uint16)
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4, 0, 16])
    lut.add_new(0x00283006, "US", [100, 200, 300, 400])
    lut.ModalityLUTType = "US"
    path = make_mg(tmp_path / "m.dcm", pixels, ModalityLUTSequence=Sequence([lut]))
    values = np.array([[100, 200, 300, 400, 400, 400]], dtype=float)
    np.testing.assert_allclose(read(path)[0], (values - 100) / 300, atol=1e-6)
    np.testing.assert_allclose(read(path, voi="range")[0], values / 65535, atol=1e-6)


def test_rescale_slope_intercept_is_applied_before_the_window(tmp_path):
    x = STORED.astype(np.float64) * 2 - 100
    path = make_mg(tmp_path / "r.dcm", RescaleSlope=2, RescaleIntercept=-100,
                   WindowCenter=4000, WindowWidth=3000)
    image, _ = read(path)
    np.testing.assert_allclose(image, linear(x, 4000, 3000), atol=1e-6)
    image, _ = read(path, voi="range")  # nominal 0..4095 through the rescale: -100..8090
    np.testing.assert_allclose(image, (x + 100) / 8190, atol=1e-6)


def test_flat_image_is_zeros_not_nan(tmp_path):
    flat = np.full((4, 3), 1234, dtype=np.uint16)
    for name, tags in (("a", {}), ("b", {"PhotometricInterpretation": "MONOCHROME1"})):
        image, meta = read(make_mg(tmp_path / f"{name}.dcm", flat, **tags))
        assert_image(image, (4, 3))
        assert not image.any() and meta["voi"] == "minmax"


def test_rle_file_equals_uncompressed_twin(tmp_path):
    plain = make_mg(tmp_path / "plain.dcm", WindowCenter=2000, WindowWidth=3000)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    save(ds, tmp_path / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read(tmp_path / "rle.dcm")[0], read(plain)[0])


def test_big_endian_and_implicit_twins(tmp_path):
    reference, _ = read(make_mg(tmp_path / "le.dcm"))
    implicit, _ = read(make_mg(tmp_path / "im.dcm", syntax=ImplicitVRLittleEndian))
    np.testing.assert_array_equal(implicit, reference)


def test_file_without_preamble_and_meta_is_read(tmp_path):
    source = make_mg(tmp_path / "full.dcm", syntax=ImplicitVRLittleEndian)
    data = source.read_bytes()
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(data[144 + group_length:])
    np.testing.assert_array_equal(read(bare)[0], read(source)[0])


# ---------------------------------------------------------------------------- header metadata

@pytest.mark.parametrize("tags, expected", [
    ({"ImageLaterality": "L"}, "L"),
    ({"ImageLaterality": "R", "Laterality": "L"}, "R"),
    ({"Laterality": "R"}, "R"),
    ({"ImageLaterality": "B"}, "unknown"),
    ({"ImageLaterality": "U", "SeriesDescription": "L CC"}, "unknown"),
    ({"SeriesDescription": "Screening L CC"}, "L"),
    ({"SeriesDescription": "RIGHT breast"}, "R"),
    ({"ProtocolName": "LMLO tomo"}, "L"),
    ({"ViewPosition": "RCC"}, "R"),
    ({"SeriesDescription": "R CC", "ProtocolName": "L CC"}, "unknown"),
    ({"SeriesDescription": "LAT chest"}, "unknown"),
    ({"SeriesDescription": "Bilateral screening"}, "unknown"),
    ({}, "unknown"),
])
def test_laterality_sources(tmp_path, tags, expected):
    assert read(make_mg(tmp_path / "a.dcm", **tags))[1]["laterality"] == expected


@pytest.mark.parametrize("group", ["SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"])
def test_frame_laterality(tmp_path, group):
    anatomy = item(FrameLaterality="L")
    functional = item(FrameAnatomySequence=Sequence([anatomy]))
    path = make_mg(tmp_path / "a.dcm", **{group: Sequence([functional])})
    assert read(path)[1]["laterality"] == "L"


def view_code(value: str, scheme: str, meaning: str) -> Sequence:
    return Sequence([item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)])


@pytest.mark.parametrize("tags, expected", [
    ({"ViewPosition": "CC"}, "CC"),
    ({"ViewPosition": "L MLO"}, "MLO"),
    ({"ViewPosition": "LMLO"}, "MLO"),
    ({"ViewPosition": "XCCL"}, "XCCL"),
    ({"ViewPosition": "XCC"}, "XCCL"),
    ({"ViewPosition": "LM"}, "LM"),
    ({"ViewPosition": "FB"}, "FB"),
    ({"ViewPosition": "AP"}, "unknown"),
    ({"ViewCodeSequence": view_code("399368009", "SCT", "medio-lateral oblique")}, "MLO"),
    ({"ViewCodeSequence": view_code("R-10242", "SRT", "cranio-caudal")}, "CC"),
    ({"ViewCodeSequence": view_code("X1", "99LOCAL", "Medio-lateral")}, "ML"),
    ({"ViewCodeSequence": view_code("X2", "99LOCAL", "latero-medial")}, "LM"),
    ({"ViewCodeSequence": view_code("X3", "99LOCAL", "exaggerated cranio-caudal")}, "XCCL"),
    ({"ViewCodeSequence": view_code("X4", "99LOCAL", "cranio-caudal exaggerated medially")}, "XCCM"),
    ({"ViewPosition": "MLO", "ViewCodeSequence": view_code("399162004", "SCT", "cranio-caudal")}, "MLO"),
    ({"PatientOrientation": ["P", "FL"]}, "MLO"),
    ({"PatientOrientation": ["A", "F"]}, "ML"),
    ({"PatientOrientation": ["A", "R"]}, "CC"),
    ({"PatientOrientation": ["A", "P"]}, "unknown"),
    ({}, "unknown"),
])
def test_view_sources(tmp_path, tags, expected):
    assert read(make_mg(tmp_path / "a.dcm", **tags))[1]["view"] == expected


@pytest.mark.parametrize("tags, spacing, source", [
    ({"PixelSpacing": [0.1, 0.085], "ImagerPixelSpacing": [0.2, 0.2]}, (0.1, 0.085), "PixelSpacing"),
    ({"ImagerPixelSpacing": [0.07, 0.065]}, (0.07, 0.065), "ImagerPixelSpacing"),
    ({"PixelSpacing": [0, 0.1], "ImagerPixelSpacing": [0.05, 0.05]}, (0.05, 0.05), "ImagerPixelSpacing"),
    ({}, (math.nan, math.nan), "unknown"),
])
def test_pixel_spacing_sources(tmp_path, tags, spacing, source):
    meta = read(make_mg(tmp_path / "a.dcm", **tags))[1]
    assert meta["spacing_source"] == source
    assert all(type(v) is float for v in meta["pixel_spacing"])
    np.testing.assert_allclose(meta["pixel_spacing"], spacing)


def test_empty_modality_is_unknown(tmp_path):
    meta = read(make_mg(tmp_path / "a.dcm", Modality=""), allow_any_modality=True)[1]
    assert meta["modality"] == "unknown" and meta["manufacturer"] == ""


# ------------------------------------------------------------------------------- bad input

def test_non_mg_modality_is_refused_by_default(tmp_path):
    path = make_mg(tmp_path / "ct.dcm", Modality="CT")
    assert "'CT'" in reason_of(path).reason
    image, meta = read(path, allow_any_modality=True)
    assert meta["modality"] == "CT"
    assert_image(image, STORED.shape)


def test_no_pixel_data(tmp_path):
    path = make_mg(tmp_path / "n.dcm", PixelData=None)
    assert "no pixel data" in reason_of(path).reason


def test_truncated_pixel_data(tmp_path):
    path = make_mg(tmp_path / "t.dcm")
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:-8]
    save(ds, path)
    assert "truncated" in reason_of(path).reason
    whole = make_mg(tmp_path / "w.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:-20])  # the file itself cut short
    assert "truncated" in reason_of(tmp_path / "cut.dcm").reason


def test_multi_frame(tmp_path):
    frames = np.concatenate([STORED, STORED])
    path = make_mg(tmp_path / "m.dcm", frames, NumberOfFrames=2, Rows=6)
    assert "multi-frame" in reason_of(path).reason
    single = make_mg(tmp_path / "s.dcm", NumberOfFrames=1)
    assert_image(read(single)[0], STORED.shape)


@pytest.mark.parametrize("photometric, samples", [("RGB", 3), ("YBR_FULL", 3), ("PALETTE COLOR", 1)])
def test_colour(tmp_path, photometric, samples):
    pixels = np.repeat(STORED, samples, axis=1)
    path = make_mg(tmp_path / "c.dcm", pixels, Columns=STORED.shape[1], SamplesPerPixel=samples,
                   PhotometricInterpretation=photometric, PlanarConfiguration=0 if samples == 3 else None)
    assert "colour" in reason_of(path).reason


def test_zero_dimension(tmp_path):
    path = make_mg(tmp_path / "z.dcm", Rows=0)
    assert "zero dimension" in reason_of(path).reason


def encapsulated(tmp_path: Path, syntax: str) -> Path:
    path = make_mg(tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\x00\x01garbage, not a codestream" * 3])
    ds["PixelData"].VR = "OB"
    save(ds, path)
    return path


def test_unavailable_decoder_names_the_package(tmp_path, monkeypatch):
    path = encapsulated(tmp_path, JPEG2000)
    monkeypatch.setattr(dicom_module, "_decoder_available", lambda syntax: False)
    reason = reason_of(path).reason
    assert "no decoder" in reason and "JPEG 2000" in reason and "pylibjpeg-openjpeg" in reason


def test_jpeg_ls_without_decoder_or_garbage_names_the_package(tmp_path):
    reason = reason_of(encapsulated(tmp_path, JPEG_LS)).reason
    assert "JPEG-LS" in reason and "pylibjpeg-libjpeg" in reason


def test_decoder_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(dicom_module, "_decoder_available", lambda syntax: True)
    reason = reason_of(encapsulated(tmp_path, JPEG2000)).reason
    assert "could not decode" in reason and "pylibjpeg" in reason


def test_non_finite_float_pixel_data(tmp_path):
    path = make_mg(tmp_path / "f.dcm")
    ds = pydicom.dcmread(path)
    values = STORED.astype(np.float32)
    values[1, 1] = np.nan
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.astype("<f4").tobytes()
    save(ds, path)
    assert "non-finite" in reason_of(path).reason


def test_not_dicom_missing_and_empty_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert reason_of(text).reason == "not a DICOM or supported image file"
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\x01" * 400)
    assert "not a DICOM" in reason_of(fake).reason
    assert "not found" in reason_of(tmp_path / "missing.dcm").reason
    (tmp_path / "empty.png").write_bytes(b"")
    assert "not a DICOM" in reason_of(tmp_path / "empty.png").reason
    assert "not a regular file" in reason_of(tmp_path).reason


def test_unexpected_errors_become_mammogram_read_errors(tmp_path, monkeypatch):
    def explode(ds):
        raise KeyError("boom")

    monkeypatch.setattr(dicom_module, "header_metadata", explode)
    error = reason_of(make_mg(tmp_path / "a.dcm"))
    assert isinstance(error.__cause__, KeyError) and "KeyError" in error.reason


def test_identifiers_never_leak(tmp_path):
    """The fictitious identifiers are in every file; no metadata or message may show them."""
    for name, tags in {
        "ok": {"SeriesDescription": "L CC", "ViewPosition": "CC"},
        "ct": {"Modality": "CT"},
        "colour": {"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3},
        "frames": {"NumberOfFrames": 3},
        "nopixels": {"PixelData": None},
    }.items():
        path = make_mg(tmp_path / f"{name}.dcm", **tags)
        try:
            _, meta = read(path)
            assert_private(repr(meta))
        except MammogramReadError as error:
            assert_private(str(error))
            assert_private(repr(error))


def test_error_pickles(tmp_path):
    import pickle

    error = MammogramReadError("/x/y.dcm", "no pixel data")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.reason, str(clone)) == (error.path, error.reason, "/x/y.dcm: no pixel data")
    assert isinstance(clone, ValueError)


# ------------------------------------------------------------------------------ size safety

def test_header_sizes_over_the_cap_are_refused_before_any_allocation(tmp_path):
    """The review's case: a small RLE file whose header claims 20000 x 20000 (0.8 GB) or 65535 x 65535."""
    for side in (20000, 65535):
        path = rle_claiming(tmp_path / f"rle{side}.dcm", side, side)
        assert path.stat().st_size < 4096
        reasons = []
        peak = peak_traced_bytes(lambda reasons=reasons, path=path: reasons.append(refuses(path)))
        assert peak < 8 << 20, f"{side}: {peak} bytes allocated"
        assert reasons[0] == (
            f"image too large: the header declares {side} x {side} = {side * side} pixels of 16-bit data "
            f"({side * side * 2} bytes), over the cap of {DEFAULT_MAX_PIXELS} pixels / "
            f"{2 * DEFAULT_MAX_PIXELS} bytes (max_pixels)")


def test_max_pixels_is_the_cap_in_pixels_and_twice_that_in_bytes(tmp_path):
    path = make_mg(tmp_path / "a.dcm")  # 6 x 5 pixels, 16-bit
    assert_image(read(path, max_pixels=30)[0], STORED.shape)
    assert "over the cap of 29 pixels / 58 bytes (max_pixels)" in refuses(path, max_pixels=29)
    for bad in (0, -1, True, 1.5, "30", None):
        with pytest.raises(ValueError, match="max_pixels"):
            read_mammogram(path, max_pixels=bad)


def test_native_data_are_checked_against_the_bytes_present(tmp_path):
    path = make_mg(tmp_path / "n.dcm", Rows=4000, Columns=4000)  # 60 bytes for 32 MB declared
    reasons = []
    assert peak_traced_bytes(lambda: reasons.append(refuses(path))) < 8 << 20
    assert reasons[0] == "truncated pixel data (60 of 32000000 bytes)"


def test_rle_data_that_cannot_expand_to_the_declared_size_are_refused(tmp_path):
    path = rle_claiming(tmp_path / "r.dcm", 2000, 2000)  # under the cap, but RLE expands at most 64x
    value_bytes = len(pydicom.dcmread(path).PixelData)
    assert refuses(path) == (
        f"implausible compressed pixel data: the header declares 2000 x 2000 pixels (8000000 bytes) but the "
        f"'RLE Lossless' data hold {value_bytes} bytes; more than 64:1 is not plausible")


@pytest.mark.parametrize("syntax, pillow_format, options", [
    (JPEG2000, "JPEG2000", {"no_jp2": True}),
    ("1.2.840.10008.1.2.4.50", "JPEG", {}),
])
def test_codestream_larger_than_the_header_is_refused_before_decoding(tmp_path, monkeypatch, syntax,
                                                                     pillow_format, options):
    """The decoder sizes its output from the codestream, not from Rows/Columns: check it first."""
    stream = io.BytesIO()
    Image.fromarray(np.zeros((64, 48), np.uint8)).save(stream, format=pillow_format, **options)
    path = make_mg(tmp_path / "c.dcm", np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([stream.getvalue()])
    ds["PixelData"].VR = "OB"
    save(ds, path)
    monkeypatch.setattr(dicom_module, "_decoder_available", lambda uid: True)
    decoded = []
    monkeypatch.setattr(dicom_module, "_decode", lambda *args: decoded.append(args))
    assert "codestream declares 64 x 48 x 1, more than the header's 8 x 8 x 1" in refuses(path)
    assert not decoded


def test_deflate_bomb_is_refused_after_a_bounded_inflate(tmp_path):
    path = deflate_bomb(tmp_path / "bomb.dcm", 64)  # 64 KB that inflate to 64 MiB
    assert path.stat().st_size < 100_000
    max_pixels = 1 << 20
    budget = 2 * max_pixels + dicom_module.DEFLATE_HEADER_ROOM
    reasons = []
    peak = peak_traced_bytes(lambda: reasons.append(refuses(path, max_pixels=max_pixels)))
    assert peak < budget + (4 << 20)
    assert reasons[0].startswith(f"deflated data set too large: its {path.stat().st_size - 132 - len(_meta_of(path))} "
                                 f"bytes inflate to more than {budget} bytes")


def _meta_of(path: Path) -> bytes:
    """The file meta group's bytes of a file written by ``deflated_file``."""
    data = path.read_bytes()
    group_length = int.from_bytes(data[140:144], "little")
    return data[132:144 + group_length]


def test_deflated_file_equals_its_native_twin_and_truncation_is_named(tmp_path):
    native = make_mg(tmp_path / "n.dcm", WindowCenter=2000, WindowWidth=3000)
    ds = pydicom.dcmread(native)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    save(ds, tmp_path / "d.dcm")
    image, meta = read(tmp_path / "d.dcm")
    np.testing.assert_array_equal(image, read(native)[0])
    assert meta["voi"] == "window"
    (tmp_path / "cut.dcm").write_bytes((tmp_path / "d.dcm").read_bytes()[:-40])
    assert refuses(tmp_path / "cut.dcm").startswith("truncated deflated data set")
    body = explicit_le_bytes(pydicom.dcmread(native))
    garbage = deflated_file(tmp_path / "g.dcm", b"", stream=b"\xff" * 64 + body[:32])
    assert refuses(garbage).startswith("corrupt deflated data set")


def test_raster_declared_size_is_checked_before_pillow_decodes(tmp_path):
    Image.fromarray(np.zeros((7, 4), np.uint8)).save(tmp_path / "small.png")
    assert_image(read(tmp_path / "small.png", max_pixels=28)[0], (7, 4))
    assert refuses(tmp_path / "small.png", max_pixels=27) == (
        "image too large: it declares 7 rows x 4 columns x 1 band(s) = 28 values, over the cap of 27 (max_pixels)")
    png = bytearray((tmp_path / "small.png").read_bytes())
    for side in (9000, 20000):  # under and over Pillow's own limit (2 x 89.5 M pixels)
        png[16:24] = side.to_bytes(4, "big") * 2  # IHDR width and height
        png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
        (tmp_path / f"claims{side}.png").write_bytes(bytes(png))
        assert "max_pixels" in refuses(tmp_path / f"claims{side}.png")


def test_load_mammogram_transforms_pass_max_pixels_through(tmp_path):
    from mammoclip_monai.data.transforms import LoadMammogram, LoadMammogramd

    path = str(make_mg(tmp_path / "a.dcm"))
    assert tuple(LoadMammogram(max_pixels=30)(path).shape) == (1, 6, 5)
    with pytest.raises(MammogramReadError, match="max_pixels"):
        LoadMammogramd(keys="image", max_pixels=29)({"image": path})


# ---------------------------------------------------------------------------- quiet pydicom

class _RootOutput:
    """A handler on the root logger, as ``logging.basicConfig()`` installs, collecting the text."""

    def __enter__(self) -> io.StringIO:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.root = logging.getLogger()
        self.level = self.root.level
        self.root.addHandler(self.handler)
        self.root.setLevel(logging.DEBUG)
        return self.stream

    def __exit__(self, *exc) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.level)


def test_decoder_errors_logged_by_pydicom_child_loggers_print_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(dicom_module, "_decoder_available", lambda syntax: True)
    path = encapsulated(tmp_path, JPEG2000)  # pydicom 3 logs the decoder's traceback on a child logger
    with _RootOutput() as output:
        assert "could not decode" in refuses(path)
        logging.getLogger("pydicom.pixels.decoders.base").error("outside a read")
    assert output.getvalue() == "outside a read\n"


def test_other_threads_pydicom_logging_is_untouched(tmp_path, monkeypatch):
    import threading

    decode = dicom_module._decode
    child = logging.getLogger("pydicom.pixels.utils")

    def decode_while_another_thread_logs(*args):
        other = threading.Thread(target=lambda: child.warning("from another thread"))
        other.start()
        other.join()
        child.warning("from the reading thread")
        return decode(*args)

    monkeypatch.setattr(dicom_module, "_decode", decode_while_another_thread_logs)
    with _RootOutput() as output:
        read(make_mg(tmp_path / "a.dcm"))
    assert output.getvalue() == "from another thread\n"


# ------------------------------------------------------------------------------ raster files

def test_png_8_and_16_bit_and_tiff_16_bit(tmp_path):
    grey8 = RNG.integers(0, 256, size=(7, 4), dtype=np.uint8)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    image, meta = read(tmp_path / "g8.png")
    assert_image(image, (7, 4))
    np.testing.assert_allclose(image, grey8 / 255, atol=1e-7)
    assert set(meta) == META_KEYS and meta["bits_stored"] == 8 and meta["voi"] == "range"
    assert meta["photometric_interpretation"] == "MONOCHROME2" and meta["inverted"] is False
    grey16 = RNG.integers(0, 65536, size=(7, 4), dtype=np.uint16)
    for name in ("g16.png", "g16.tif"):
        Image.fromarray(grey16).save(tmp_path / name)
        image, meta = read(tmp_path / name)
        assert_image(image, (7, 4))
        np.testing.assert_allclose(image, grey16 / 65535, atol=1e-7)
        assert meta["bits_stored"] == 16


def test_big_endian_16_bit_tiff_and_jpeg(tmp_path):
    grey16 = RNG.integers(0, 65536, size=(5, 6), dtype=np.uint16)
    Image.frombytes("I;16B", (6, 5), grey16.astype(">u2").tobytes()).save(tmp_path / "be.tiff")
    np.testing.assert_allclose(read(tmp_path / "be.tiff")[0], grey16 / 65535, atol=1e-7)
    flat = np.full((8, 8), 128, dtype=np.uint8)
    Image.fromarray(flat).save(tmp_path / "g.jpg", quality=100)
    image, meta = read(tmp_path / "g.jpg")
    assert_image(image, (8, 8)) and meta["bits_stored"] == 8
    np.testing.assert_allclose(image, 128 / 255, atol=2 / 255)


def test_pillow_int32_and_float_modes(tmp_path):
    grey = RNG.integers(0, 65536, size=(4, 6)).astype(np.int32)
    Image.fromarray(grey, mode="I").save(tmp_path / "i.tif")
    image, meta = read(tmp_path / "i.tif")
    np.testing.assert_allclose(image, grey / 65535, atol=1e-7)
    assert meta["bits_stored"] == 16
    Image.fromarray(grey * 4, mode="I").save(tmp_path / "big.tif")
    assert "0..65535" in reason_of(tmp_path / "big.tif").reason
    unit = RNG.random((4, 6)).astype(np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(read(tmp_path / "f.tif")[0], unit, atol=1e-7)
    unit[0, 0] = np.nan
    Image.fromarray(unit, mode="F").save(tmp_path / "nan.tif")
    assert "non-finite" in reason_of(tmp_path / "nan.tif").reason


def test_multi_page_tiff_is_refused(tmp_path):
    pages = [Image.fromarray(np.zeros((3, 3), np.uint8)), Image.fromarray(np.ones((3, 3), np.uint8))]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    assert "multi-frame" in reason_of(tmp_path / "m.tif").reason


def test_rgb_png_with_equal_channels_is_grey_and_colour_is_refused(tmp_path):
    grey = RNG.integers(0, 256, size=(5, 3), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    image, _ = read(tmp_path / "grey_rgb.png")
    np.testing.assert_allclose(image, grey / 255, atol=1e-7)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    Image.fromarray(rgba).save(tmp_path / "grey_rgba.png")
    np.testing.assert_allclose(read(tmp_path / "grey_rgba.png")[0], grey / 255, atol=1e-7)
    colour = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert "colour" in reason_of(tmp_path / "colour.png").reason


def test_corrupt_and_disguised_raster(tmp_path):
    grey = RNG.integers(0, 256, size=(40, 40), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "g.png").read_bytes()[:60])
    assert isinstance(reason_of(tmp_path / "cut.png"), MammogramReadError)
    Image.fromarray(grey).save(tmp_path / "g.gif")
    os.replace(tmp_path / "g.gif", tmp_path / "gif.png")  # GIF with a PNG name
    assert "not a DICOM" in reason_of(tmp_path / "gif.png").reason


def test_rle_data_holding_jpeg2000_marker_bytes_is_read(tmp_path):
    """RLE segments are arbitrary bytes: the JPEG 2000 start-of-codestream + SIZ bytes can occur in them
    (a 1024 x 832 file of the synthetic training set had them) and must not be parsed as a frame header."""
    high = np.array([0xFF, 0x4F, 0xFF, 0x51, *range(0xC0, 0x80, -1)], np.uint16)  # a literal run in the RLE
    pixels = np.tile(high << 8, (8, 1)) + np.arange(8, dtype=np.uint16)[:, None]
    path = make_mg(tmp_path / "rle.dcm", pixels, bits_stored=16)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    save(ds, path)
    assert b"\xff\x4f\xff\x51" in pydicom.dcmread(path).PixelData
    image, _ = read(path, voi="range")
    assert np.allclose(image, pixels / 65535.0, atol=1e-6)
