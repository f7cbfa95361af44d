"""Seeded fuzzing of read_mammogram under a memory cap: a few hundred mutations of small synthetic
MG DICOM files (8/16-bit, MONOCHROME1/2, native, RLE, deflated) in their declared sizes, bit
depths, frames, transfer syntax, VOI / modality LUTs, windows, rescale, tags and VRs, bytes,
truncation and deflate streams, plus the review's size bombs.

Every file must load as a finite float32 image in [0, 1] or raise ``MammogramReadError`` with a
reason of its own (never "unexpected error", never a MemoryError underneath), within a per-file
time limit, and print nothing (``logging.basicConfig(level=DEBUG)`` and every warning shown).

The cases run in a child process (this file run as a script) whose address space is capped with
``RLIMIT_AS`` a few hundred MiB above its baseline, so that the pytest process is not capped. Case
``i`` is generated from ``numpy.random.default_rng([seed, i])`` alone; a failure names the case,
its mutations and the seed, and one case re-runs in the foreground with::

    python tests/test_reader_fuzz.py --seed SEED --only INDEX [--save case.dcm]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import RLELossless

from mammoclip_monai.data.reader import MammogramReadError, read_mammogram
from mammoclip_monai.data.synthetic.dicom_writer import (
    DicomUIDs,
    ImageEncoding,
    PatientIdentity,
    make_uid,
    write_mammogram,
)

SEED = 20240612
CASES = 360
"""Random mutations per run (the fixed cases come on top)."""
FILE_TIMEOUT_S = 10.0
"""Per-file limit: a normal read of these files takes milliseconds."""
RUN_TIMEOUT_S = 150.0
"""The whole child process (it measures about 10 s on 2 shared cores)."""
MEMORY_HEADROOM = 400 << 20
"""RLIMIT_AS above the child's address space once numpy, pydicom and the reader are imported."""

PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3
SHAPE = (40, 32)
IDENTITY = PatientIdentity(name="Fuzz^Patient^0001", patient_id="FUZZ-PID-1", birth_date="19500101", age=74,
                           accession="FUZZACC1", study_date="20240105", study_time="101010")

EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
TRANSFER_SYNTAXES = [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED, str(RLELossless),
                     "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                     "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.3.4.5", "", "garbage"]
NUMBER_TEXT = ["abc", "", "nan", "inf", "-inf", "1e300", "-1e300", "0", "-5", "1", "0.5", "2048", "4095.5",
               "1e-300", "65536", "-32768", "1\\2", " 7 "]


# ---------------------------------------------------------------------------------- base files

@dataclass(frozen=True)
class Base:
    """One small, valid MG file to mutate."""

    bits: int  # 8 or 16 allocated
    photometric: str
    transfer: str  # "native" | "rle" | "deflate"
    voi: str  # "none" | "window" | "lut"

    @property
    def name(self) -> str:
        return f"{self.bits}bit-{self.photometric}-{self.transfer}-{self.voi}"


BASES = [Base(bits, photometric, transfer, voi)
         for bits in (8, 16) for photometric in ("MONOCHROME1", "MONOCHROME2")
         for transfer in ("native", "rle", "deflate") for voi in ("none", "window", "lut")]


def base_image(rng: np.random.Generator) -> np.ndarray:
    """A smooth [0, 1] image with a dark background corner, like a breast on black."""
    y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1]] / np.array(SHAPE, dtype=float)[:, None, None]
    image = 0.6 * np.exp(-((x - 0.1) ** 2 + (y - 0.5) ** 2) * 4) + 0.05 * rng.random(SHAPE)
    image[x + y > 1.5] = 0.0
    return np.clip(image, 0.0, 1.0)


def base_dataset(base: Base, rng: np.random.Generator, folder: Path) -> Dataset:
    """The base file, written by the synthetic MG writer (16-bit) and re-encoded with pydicom."""
    path = folder / "base.dcm"
    encoding = ImageEncoding(bits_stored=12, photometric=base.photometric, transfer="explicit", voi=base.voi,
                             window=(0.05, 0.9), lut_gamma=0.8)
    uids = DicomUIDs(make_uid("fuzz", "study"), make_uid("fuzz", "series"), make_uid("fuzz", rng.integers(1 << 30)))
    write_mammogram(path, base_image(rng), laterality="L", view="CC", spacing_mm=0.1, identity=IDENTITY,
                    uids=uids, encoding=encoding)
    ds = pydicom.dcmread(path)
    pixels = np.frombuffer(ds.PixelData, dtype="<u2").reshape(SHAPE)
    if base.bits == 8:
        pixels = (pixels >> 4).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB"
        if base.voi == "window":
            ds.WindowCenter, ds.WindowWidth = "128", "200"
        elif base.voi == "lut":
            lut = ds.VOILUTSequence[0]
            lut.LUTDescriptor = [256, 0, 16]
            lut["LUTData"].value = np.linspace(0, 65535, 256).astype("<u2").tobytes()
    if base.transfer == "rle":
        ds.compress(RLELossless, pixels, **({"generate_instance_uid": False} if PYDICOM_3 else {}))
    elif base.transfer == "deflate":
        ds.file_meta.TransferSyntaxUID = DEFLATED
    return ds


def encode(ds: Dataset, *, body_syntax: str | None = None) -> bytes:
    """Preamble, file meta (whatever transfer syntax it names) and the body encoded as
    ``body_syntax`` (default: the named one; deflated when it is the deflated syntax)."""
    meta = ds.file_meta
    named = str(meta.get("TransferSyntaxUID", ""))
    body_syntax = body_syntax or (named if named in (IMPLICIT_LE, DEFLATED) else EXPLICIT_LE)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, body_syntax == IMPLICIT_LE
    write_dataset(buffer, ds)
    body = buffer.getvalue()
    if body_syntax == DEFLATED:
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = packer.compress(body) + packer.flush()
    meta_buffer = DicomBytesIO()
    meta_buffer.is_little_endian, meta_buffer.is_implicit_VR = True, False
    write_file_meta_info(meta_buffer, meta, enforce_standard=bool(named.strip("\x00 ")))  # else no group length
    return b"\x00" * 128 + b"DICM" + meta_buffer.getvalue() + body


# ------------------------------------------------------------------------------------ mutations

@dataclass
class Case:
    """A generated file and how it was made."""

    index: int
    name: str
    data: bytes
    expect: str | None = None  # a reason the reader must give (the review's bombs)
    steps: list[str] = field(default_factory=list)


def pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UT"})


def put(ds: Dataset, keyword: str, vr: str, value) -> None:
    """Set ``keyword`` with an explicit VR (a wrong one on purpose, sometimes). Text goes in as raw
    bytes, so that values pydicom would refuse to build ("abc" as DS) reach the file as written."""
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    if isinstance(value, bytes) or (vr in TEXT_VRS and isinstance(value, str)):
        raw = value.encode("latin-1") if isinstance(value, str) else value
        raw += (b" " if vr in TEXT_VRS and vr != "UI" else b"\x00") * (len(raw) % 2)
        ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
    else:
        ds.add_new(tag, vr, value)


def m_rows_columns(rng, ds, base):
    keyword = pick(rng, ["Rows", "Columns"])
    original = SHAPE[keyword == "Columns"]
    value = pick(rng, [0, 1, 2, original - 1, original + 1, original * 2, original * 64, 4096, 20000, 65535,
                       70000, 2 ** 31])
    put(ds, keyword, "US" if value < 65536 else "UL", value)
    return f"{keyword}={value}"


def m_bits(rng, ds, base):
    keyword = pick(rng, ["BitsAllocated", "BitsStored", "HighBit"])
    value = pick(rng, [0, 1, 7, 8, 12, 15, 16, 17, 24, 32, 64, 255, 65535])
    put(ds, keyword, "US", value)
    return f"{keyword}={value}"


def m_samples(rng, ds, base):
    value = pick(rng, [0, 2, 3, 4, 65535])
    put(ds, "SamplesPerPixel", "US", value)
    if rng.random() < 0.5:
        put(ds, "PlanarConfiguration", "US", int(rng.integers(0, 3)))
    return f"SamplesPerPixel={value}"


def m_frames(rng, ds, base):
    value = pick(rng, ["0", "1", "2", "3", "-1", "abc", "", "1.5", "99999999999", "2\\3"])
    put(ds, "NumberOfFrames", "IS", value)
    return f"NumberOfFrames={value!r}"


def m_pixel_representation(rng, ds, base):
    value = pick(rng, [0, 1, 2, 65535])
    put(ds, "PixelRepresentation", "US", value)
    return f"PixelRepresentation={value}"


def m_photometric(rng, ds, base):
    value = pick(rng, ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "", "MONOCHROME3",
                       "monochrome2", "MONOCHROME2\\MONOCHROME1"])
    put(ds, "PhotometricInterpretation", "CS", value)
    if rng.random() < 0.3:
        put(ds, "PresentationLUTShape", "CS", pick(rng, ["INVERSE", "IDENTITY", "", "BOGUS"]))
    return f"PhotometricInterpretation={value!r}"


def m_window(rng, ds, base):
    count = int(rng.integers(1, 4))
    centers = "\\".join(pick(rng, NUMBER_TEXT) for _ in range(count))
    widths = "\\".join(pick(rng, NUMBER_TEXT) for _ in range(int(rng.integers(1, 4))))
    put(ds, "WindowCenter", "DS", centers)
    put(ds, "WindowWidth", "DS", widths)
    if rng.random() < 0.5:
        put(ds, "VOILUTFunction", "CS", pick(rng, ["LINEAR", "LINEAR_EXACT", "SIGMOID", "BOGUS", ""]))
    return f"Window={centers!r}/{widths!r}"


def m_rescale(rng, ds, base):
    slope, intercept = pick(rng, NUMBER_TEXT), pick(rng, NUMBER_TEXT)
    put(ds, "RescaleSlope", "DS", slope)
    put(ds, "RescaleIntercept", "DS", intercept)
    return f"Rescale={slope!r}/{intercept!r}"


def lut_item(rng) -> tuple[Dataset, str]:
    """A LUT item with a random descriptor (values, count of values, VR) and random data (length,
    VR, values, sometimes all equal, sometimes absent or empty)."""
    entries = pick(rng, [0, 1, 2, 3, 255, 256, 4096, 65535])
    first = pick(rng, [0, 1, 100, 2048, 32768, 65535])
    bits = pick(rng, [0, 1, 8, 12, 16, 17, 32, 255])
    item = Dataset()
    descriptor = [entries, first, bits] if rng.random() < 0.85 else [entries, first][: int(rng.integers(0, 3))]
    descriptor_vr = "SS" if rng.random() < 0.2 and max(descriptor, default=0) < 32768 else "US"
    if rng.random() < 0.9:
        item.add_new(0x00283002, descriptor_vr, descriptor)
    length = pick(rng, [0, 1, max(entries - 1, 0), entries, entries + 5, 7])
    top = min(2 ** min(bits, 16) - 1, 65535) if bits else 255
    values = rng.integers(0, top + 1, size=min(length, 70000)).astype(np.uint16)
    if rng.random() < 0.1 and values.size:
        values[:] = values[0]
    kind = pick(rng, ["US", "OW", "OW-odd", "none", "absent"])
    if kind == "US":
        item.add_new(0x00283006, "US", [int(v) for v in values])
    elif kind == "OW":
        item.add_new(0x00283006, "OW", values.astype("<u2").tobytes())
    elif kind == "OW-odd":
        item.add_new(0x00283006, "OW", values.astype("<u2").tobytes() + b"\x07")
    elif kind == "none":
        item.add_new(0x00283006, "US", None)
    return item, f"LUT {descriptor_vr}{descriptor} data {kind} x{length}"


def m_voi_lut(rng, ds, base):
    items, notes = zip(*(lut_item(rng) for _ in range(int(rng.integers(1, 3)))))
    ds.VOILUTSequence = Sequence(list(items))
    return "VOILUTSequence " + "; ".join(notes)


def m_modality_lut(rng, ds, base):
    item, note = lut_item(rng)
    if rng.random() < 0.8:
        item.ModalityLUTType = pick(rng, ["US", "OD", "", "HU"])
    ds.ModalityLUTSequence = Sequence([item])
    return "ModalityLUTSequence " + note


def m_delete(rng, ds, base):
    keyword = pick(rng, ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                         "PhotometricInterpretation", "SamplesPerPixel", "PixelData", "Modality", "SOPClassUID",
                         "TransferSyntaxUID", "VOILUTSequence", "WindowWidth"])
    if keyword == "TransferSyntaxUID":
        if keyword in ds.file_meta:
            del ds.file_meta.TransferSyntaxUID
    elif keyword in ds:
        delattr(ds, keyword)
    return f"delete {keyword}"


def m_wrong_vr(rng, ds, base):
    keyword = pick(rng, ["Rows", "Columns", "BitsAllocated", "PixelRepresentation", "WindowCenter",
                         "RescaleSlope", "PhotometricInterpretation", "Modality", "ImagerPixelSpacing"])
    vr, value = pick(rng, [("LO", "abc"), ("FD", 1e300), ("DS", "nan"), ("SQ", Sequence([])), ("UN", b"\xff" * 3),
                           ("SS", -7), ("UL", 4_000_000_000), ("OB", b"\x00\x01"), ("CS", "")])
    put(ds, keyword, vr, value)
    return f"{keyword} as {vr} {value!r}"[:80]


def pixel_bytes(ds: Dataset) -> bytes | None:
    """The PixelData value as bytes, whatever an earlier mutation did to its VR (None: not bytes)."""
    if "PixelData" not in ds:
        return None
    element = ds.get_item("PixelData")
    value = element.value if element.is_raw else ds.PixelData
    return bytes(value) if isinstance(value, (bytes, bytearray)) else None


def set_pixel_bytes(ds: Dataset, value: bytes) -> None:
    """Replace the PixelData value, keeping whatever VR an earlier mutation gave it."""
    element = ds.get_item("PixelData")
    if element.is_raw:
        put(ds, "PixelData", element.VR, value)
    else:
        ds.PixelData = value


def m_pixel_data(rng, ds, base):
    value = pixel_bytes(ds)
    if value is None:
        return "PixelData absent or not bytes: unchanged"
    choice = pick(rng, ["shorter", "longer", "empty", "odd", "as-US", "as-UN", "float"])
    if choice == "shorter":
        set_pixel_bytes(ds, value[: int(rng.integers(0, max(len(value), 1)))])
    elif choice == "longer":
        set_pixel_bytes(ds, value + bytes(rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8)))
    elif choice == "empty":
        set_pixel_bytes(ds, b"")
    elif choice == "odd":
        set_pixel_bytes(ds, value + b"\x00")
    elif choice in ("as-US", "as-UN"):
        put(ds, "PixelData", choice[3:], bytes(value))
    else:  # the pixels as 32-bit floats (with NaN or inf sometimes)
        floats = rng.random(SHAPE, dtype=np.float32) * pick(rng, [1.0, 4095.0, 1e38])
        if rng.random() < 0.3:
            floats.flat[int(rng.integers(floats.size))] = pick(rng, [np.nan, np.inf])
        del ds.PixelData
        ds.BitsAllocated = 32
        ds.add_new(0x7FE00008, "OF", floats.astype("<f4").tobytes())
    if "PixelData" in ds and not ds.get_item("PixelData").is_raw:
        element = ds["PixelData"]  # undefined length only for what is still encapsulated (pydicom insists)
        element.is_undefined_length = element.VR == "OB" and bytes(element.value[:4]) == b"\xfe\xff\x00\xe0"
    return f"PixelData {choice}"


def m_rle_header(rng, ds, base):
    if pixel_bytes(ds) is None or base.transfer != "rle":
        return m_pixel_data(rng, ds, base)
    value = bytearray(pixel_bytes(ds))
    if len(value) < 16 + 64 or value[:4] != b"\xfe\xff\x00\xe0":
        return m_pixel_data(rng, ds, base)
    start = 8 + int.from_bytes(value[4:8], "little") + 8  # after the offset table and the fragment's item
    field = int(rng.integers(0, 16))
    number = pick(rng, [0, 1, 2, 3, 15, 16, 255, 2 ** 32 - 1, int(rng.integers(0, len(value)))])
    value[start + 4 * field:start + 4 * field + 4] = number.to_bytes(4, "little")
    set_pixel_bytes(ds, bytes(value))
    return f"RLE header word {field} = {number}"


def m_transfer_syntax(rng, ds, base):
    value = pick(rng, TRANSFER_SYNTAXES)
    raw = value.encode() + b"\x00" * (len(value) % 2)
    ds.file_meta[Tag(0x00020010)] = RawDataElement(Tag(0x00020010), "UI", len(raw), raw, 0, False, True)
    return f"TransferSyntaxUID={value!r}"


def m_modality(rng, ds, base):
    value = pick(rng, ["", "CT", "mg", "MG\\CT", "MG "])
    put(ds, "Modality", "CS", value)
    return f"Modality={value!r}"


DATASET_MUTATIONS: dict[str, Callable] = {
    "rows_columns": m_rows_columns, "bits": m_bits, "samples": m_samples, "frames": m_frames,
    "pixel_representation": m_pixel_representation, "photometric": m_photometric, "window": m_window,
    "rescale": m_rescale, "voi_lut": m_voi_lut, "modality_lut": m_modality_lut, "delete": m_delete,
    "wrong_vr": m_wrong_vr, "pixel_data": m_pixel_data, "rle_header": m_rle_header,
    "transfer_syntax": m_transfer_syntax, "modality": m_modality,
}


def b_truncate(rng, data: bytes) -> tuple[bytes, str]:
    at = int(rng.integers(0, len(data)))
    return data[:at], f"truncate at {at} of {len(data)}"


def b_flip(rng, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    count = int(rng.integers(1, 9))
    start = pick(rng, [0, 132, len(data) // 2])  # anywhere, after the preamble, or in the back half
    for at in rng.integers(start, len(data), count):
        out[at] ^= 1 << int(rng.integers(8))
    return bytes(out), f"flip {count} bits from {start}"


def b_splice(rng, data: bytes) -> tuple[bytes, str]:
    at = int(rng.integers(132, len(data)))
    junk = bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    if rng.random() < 0.5:
        return data[:at] + junk + data[at:], f"insert {len(junk)} bytes at {at}"
    return data[:at] + data[at + len(junk):], f"remove {len(junk)} bytes at {at}"


def b_append(rng, data: bytes) -> tuple[bytes, str]:
    junk = bytes(rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8))
    return data + junk, f"append {len(junk)} bytes"


VALUE_MUTATIONS = ["window", "rescale", "voi_lut", "modality_lut", "photometric", "pixel_representation"]
"""Mutations that leave the file decodable, so that the grey-scale pipeline sees them."""

BYTE_MUTATIONS: dict[str, Callable] = {"truncate": b_truncate, "flip": b_flip, "splice": b_splice,
                                       "append": b_append}


def random_case(seed: int, index: int, folder: Path) -> Case:
    """Case ``index``: a base and one to three data set mutations (two cases in five only those
    that keep it decodable), sometimes a byte mutation on top."""
    rng = np.random.default_rng([seed, index])
    base = pick(rng, BASES)
    ds = base_dataset(base, rng, folder)
    steps = [base.name]
    values_only = rng.random() < 0.4
    names = VALUE_MUTATIONS if values_only else list(DATASET_MUTATIONS)
    for _ in range(int(rng.integers(1, 4))):
        steps.append(DATASET_MUTATIONS[pick(rng, names)](rng, ds, base))
    data = encode(ds)
    if not values_only and rng.random() < 0.3:
        data, note = BYTE_MUTATIONS[pick(rng, list(BYTE_MUTATIONS))](rng, data)
        steps.append(note)
    return Case(index, steps[1].split("=")[0].split(" ")[0], data, steps=steps)


def rle_bomb(side: int, folder: Path) -> bytes:
    """The review's first case: a small RLE MG file whose header declares side x side."""
    ds = base_dataset(Base(16, "MONOCHROME2", "rle", "none"), np.random.default_rng(0), folder)
    ds.Rows = ds.Columns = side
    return encode(ds)


def deflate_bomb(inflated_mib: int, folder: Path) -> bytes:
    """The review's second case: about 1 MB that inflates to ``inflated_mib`` MiB (a private OB
    element of zeros, no pixel data), made from one fully flushed deflate block repeated."""
    ds = base_dataset(Base(16, "MONOCHROME2", "native", "none"), np.random.default_rng(0), folder)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DEFLATED
    header = encode(ds, body_syntax=EXPLICIT_LE)
    meta_end = 132 + 12 + int.from_bytes(header[140:144], "little")
    body = header[meta_end:] + b"\x09\x00\x10\x00LO\x04\x00FUZZ"
    body += b"\x09\x00\x00\x10OB\x00\x00" + (inflated_mib << 20).to_bytes(4, "little")
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = packer.compress(body) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    return header[:meta_end] + stream + block * inflated_mib + packer.flush()


def fixed_cases(folder: Path) -> list[Case]:
    """The review's measured size cases, which must be refused by the size checks."""
    return [
        Case(-1, "review_rle_20000", rle_bomb(20000, folder), expect="image too large", steps=["RLE 20000 x 20000"]),
        Case(-2, "review_rle_65535", rle_bomb(65535, folder), expect="image too large", steps=["RLE 65535 x 65535"]),
        Case(-3, "review_deflate_1GiB", deflate_bomb(1024, folder), expect="deflated data set too large",
             steps=["deflate 1 MB -> 1 GiB"]),
    ]


def make_cases(seed: int, count: int, folder: Path, only: int | None = None) -> list[Case]:
    """Generate (with pydicom's value validation off: garbage is the point) every case's bytes."""
    modes = (pydicom.config.settings.reading_validation_mode, pydicom.config.settings.writing_validation_mode)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if only is not None:
                fixed = {case.index: case for case in fixed_cases(folder)} if only < 0 else {}
                return [fixed[only] if only < 0 else random_case(seed, only, folder)]
            return fixed_cases(folder) + [random_case(seed, index, folder) for index in range(count)]
    finally:
        pydicom.config.settings.reading_validation_mode, pydicom.config.settings.writing_validation_mode = modes


# ------------------------------------------------------------------------------------- checking

class CaseTimeout(BaseException):
    """One file took longer than FILE_TIMEOUT_S (a BaseException: no ``except Exception`` hides it)."""


def _on_alarm(signum, frame):
    raise CaseTimeout()


def causes(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def check(case: Case, path: Path) -> tuple[str, str]:
    """("ok" | "refused" | "FAIL", detail) for one file."""
    signal.setitimer(signal.ITIMER_REAL, FILE_TIMEOUT_S)
    try:
        image, meta = read_mammogram(path)
    except MammogramReadError as error:
        signal.setitimer(signal.ITIMER_REAL, 0)
        memory = [type(e).__name__ for e in causes(error) if isinstance(e, MemoryError)]
        if memory:
            return "FAIL", f"ran out of memory under the cap: {error.reason}"
        if error.reason.startswith("unexpected error"):
            return "FAIL", f"{error.reason}: {causes(error)[-1]!r}"[:300]
        if error.path != str(path) or str(error) != f"{path}: {error.reason}":
            return "FAIL", f"malformed error {str(error)!r}"
        if case.expect and case.expect not in error.reason:
            return "FAIL", f"expected {case.expect!r}, got {error.reason!r}"
        return "refused", error.reason
    except CaseTimeout:
        return "FAIL", f"no result after {FILE_TIMEOUT_S} s"
    except BaseException as error:  # anything but MammogramReadError is a defect
        signal.setitimer(signal.ITIMER_REAL, 0)
        return "FAIL", f"raised {type(error).__name__}: {error}"[:300]
    signal.setitimer(signal.ITIMER_REAL, 0)
    problems = []
    if not (isinstance(image, np.ndarray) and image.dtype == np.float32 and image.ndim == 2):
        problems.append(f"not a 2-D float32 array: {getattr(image, 'dtype', type(image))}")
    elif not np.isfinite(image).all():
        problems.append("non-finite values")
    elif image.size and (image.min() < 0.0 or image.max() > 1.0):
        problems.append(f"values outside [0, 1]: {image.min()}..{image.max()}")
    elif tuple(meta["spatial_shape"]) != image.shape:
        problems.append(f"spatial_shape {meta['spatial_shape']} != {image.shape}")
    if case.expect:
        problems.append(f"expected {case.expect!r}, but it loaded")
    return ("FAIL", "; ".join(problems)) if problems else ("ok", f"{image.shape}")


def address_space_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def worker(seed: int, count: int, folder: Path, only: int | None) -> int:
    """Generate the cases, cap memory, show every log record and warning, read each file."""
    cases = make_cases(seed, count, folder, only)
    paths = []
    for case in cases:
        path = folder / f"case{case.index}.dcm"
        path.write_bytes(case.data)
        paths.append(path)
        case.data = b""
    logging.basicConfig(level=logging.DEBUG)
    warnings.simplefilter("always")
    signal.signal(signal.SIGALRM, _on_alarm)
    cap = address_space_bytes() + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    print(json.dumps({"event": "start", "seed": seed, "cases": len(cases), "cap_mib": cap >> 20}), flush=True)
    counts = {"ok": 0, "refused": 0, "FAIL": 0}
    for case, path in zip(cases, paths):
        print(json.dumps({"event": "case", "index": case.index, "steps": case.steps}), flush=True)
        started = time.perf_counter()
        outcome, detail = check(case, path)
        counts[outcome] += 1
        print(json.dumps({"event": outcome, "index": case.index, "steps": case.steps, "detail": detail,
                          "seconds": round(time.perf_counter() - started, 3)}), flush=True)
    print(json.dumps({"event": "done", **counts}), flush=True)
    return 1 if counts["FAIL"] else 0


# ------------------------------------------------------------------------------------- the test

def describe(record: dict, seed: int) -> str:
    return (f"case {record['index']} (seed {seed}): {' + '.join(record['steps'])}\n"
            f"    -> {record.get('detail', '')}\n"
            f"    reproduce: python tests/test_reader_fuzz.py --seed {seed} --only {record['index']}")


def test_every_mutated_file_loads_or_is_refused_within_memory_and_time(tmp_path):
    started = time.perf_counter()
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, __file__, "--worker", str(tmp_path), "--seed", str(SEED), "--count", str(CASES)]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
        stdout, stderr, returncode = run.stdout, run.stderr, run.returncode
    except subprocess.TimeoutExpired as expired:
        stdout = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        stderr = (expired.stderr or b"").decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
        returncode = None
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    failures = [describe(r, SEED) for r in records if r["event"] == "FAIL"]
    done = [r for r in records if r["event"] == "done"]
    if not done:  # crashed, killed or hung: the last case that started is the culprit
        started_cases = [r for r in records if r["event"] == "case"]
        last = describe(started_cases[-1], SEED) if started_cases else "before the first case"
        failures.append(f"the worker stopped (exit {returncode}) during {last}\n{stderr[-2000:]}")
    assert not failures, f"{len(failures)} fuzz failure(s):\n" + "\n".join(failures)
    assert stderr == "", f"the reader printed (logging/warnings) while reading:\n{stderr[-3000:]}"
    assert done[0]["ok"] > 20 and done[0]["refused"] > 20, done[0]  # the mutations exercise both outcomes
    assert done[0]["ok"] + done[0]["refused"] == CASES + len(fixed_cases(tmp_path))
    assert time.perf_counter() - started < 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--count", type=int, default=CASES)
    parser.add_argument("--only", type=int, help="run one case (negative: a fixed review case) in the foreground")
    parser.add_argument("--save", metavar="FILE", help="with --only: also keep the generated file")
    parser.add_argument("--worker", metavar="DIR", help="the child process of the test: write cases to DIR")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.seed, args.count, Path(args.worker), None)
    if args.only is None:
        parser.error("pass --only INDEX (the test runs every case)")
    with tempfile.TemporaryDirectory() as folder:
        case = make_cases(args.seed, args.count, Path(folder), args.only)[0]
        path = Path(args.save) if args.save else Path(folder) / "case.dcm"
        path.write_bytes(case.data)
        print(" + ".join(case.steps))
        signal.signal(signal.SIGALRM, _on_alarm)
        outcome, detail = check(case, path)  # the same verdict as in the test
        print(outcome, detail)
        if outcome == "FAIL":
            read_mammogram(path)  # show the traceback behind it
    return 1 if outcome == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
