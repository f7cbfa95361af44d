"""DICOM decoding, the grey-scale pipeline of DICOM PS3.3 C.11, and allow-listed header parsing.

Use :func:`mammoclip_monai.data.reader.read_mammogram`; this module raises :class:`DicomRejected`
(a reason without a path) which the reader turns into ``MammogramReadError``.

Works with pydicom 2.4 (forced by MONAI Label) and 3.x: the few APIs that moved are feature-
detected. Imports numpy and pydicom only. Nothing from the header leaves this module except the
allow-listed metadata of ``docs/data_formats.md``; pydicom's own warnings and log records (which
may quote header values) are silenced while a file is read.

Size safety: the header is parsed first, up to the pixel data, and the declared image is checked
against ``max_pixels``; only then is the pixel data read, checked against what its bytes can hold
(native: all of it present; encapsulated: a plausible compression ratio and a codestream that
declares no more than the header), and decoded. A deflated data set is inflated by this module
with a bounded output, never by pydicom's unbounded ``zlib.decompress``.
"""

from __future__ import annotations

import contextvars
import io
import logging
import math
import os
import re
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_partial, read_preamble
from pydicom.uid import UID

from mammoclip_monai.data import decoders as _decoders
from mammoclip_monai.utils.errors import DEFAULT_MAX_PIXELS, NOT_SUPPORTED

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut as _pydicom_modality_lut
except ImportError:  # pydicom 2.4
    from pydicom.pixel_data_handlers.util import apply_modality_lut as _pydicom_modality_lut

__all__ = ["DicomRejected", "read_dicom", "greyscale", "modality_values", "header_metadata",
           "BYTES_PER_CAPPED_PIXEL", "DEFLATE_HEADER_ROOM", "MAX_COMPRESSION_RATIO"]

NO_PIXEL_DATA = "no pixel data (not an image object, or a truncated file)"
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED_LE = "1.2.840.10008.1.2.1.99"
_RLE = "1.2.840.10008.1.2.5"

BYTES_PER_CAPPED_PIXEL = 2
"""The pixel data may hold at most this many bytes per ``max_pixels``: a 16-bit image (what every
mammography detector writes) at the cap. 8-bit data are capped by the pixel count, 32/64-bit data
by these bytes."""
DEFLATE_HEADER_ROOM = 16 << 20
"""Bytes a deflated data set may inflate to beyond its capped pixel data (attributes, overlays)."""
_INFLATE_STEP = 1 << 20
"""Inflate in steps of this size, so a deflate bomb is stopped at most this far past the budget."""

_JPEG_10918 = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
               "1.2.840.10008.1.2.4.70")
MAX_COMPRESSION_RATIO = {
    _RLE: 64,  # exact: a 2-byte PackBits replicate run gives at most 128 bytes
    **{uid: 1_000 for uid in _JPEG_10918},  # Huffman JPEG: >= ~6 bits per 8 x 8 block (measured <= 85:1 for 8-bit)
}
"""Declared pixel bytes per encapsulated byte that an encapsulated syntax can plausibly reach;
syntaxes not listed (JPEG-LS, JPEG 2000, HTJ2K, whose run / zero coding makes flat areas almost
free) get ``_OTHER_COMPRESSION_RATIO``. Measured figures are in docs/data_formats.md ("Reading")."""
_OTHER_COMPRESSION_RATIO = 10_000
_ITEM_TAG = b"\xfe\xff\x00\xe0"
# JPEG (ISO 10918 and 14495) start-of-frame markers: they carry the codestream's own frame size.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_J2K_SIZ = b"\xff\x4f\xff\x51"  # start of codestream + image and tile size marker
_JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                            "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
"""JPEG baseline / extended / lossless and JPEG-LS: the stream starts with SOI and has a SOF marker."""
_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                           "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
"""JPEG 2000 and HTJ2K: the codestream has a SIZ marker."""

_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.50": f"{_LIBJPEG} (or Pillow)",
    "1.2.840.10008.1.2.4.51": f"{_LIBJPEG} (or Pillow, 8-bit data only)",
    "1.2.840.10008.1.2.4.57": _LIBJPEG,
    "1.2.840.10008.1.2.4.70": _LIBJPEG,
    "1.2.840.10008.1.2.4.80": f"{_LIBJPEG} (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": f"{_LIBJPEG} (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": f"{_OPENJPEG} (or Pillow with JPEG 2000 support)",
    "1.2.840.10008.1.2.4.91": f"{_OPENJPEG} (or Pillow with JPEG 2000 support)",
    "1.2.840.10008.1.2.4.201": _OPENJPEG,
    "1.2.840.10008.1.2.4.202": _OPENJPEG,
    "1.2.840.10008.1.2.4.203": _OPENJPEG,
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}

# Views of CID 4014 by SNOMED CT and legacy SNOMED-RT code value.
_VIEW_CODES = {
    "399162004": "CC", "R-10242": "CC",
    "399368009": "MLO", "R-10226": "MLO",
    "399260004": "ML", "R-10224": "ML",
    "399352003": "LM", "R-10228": "LM",
    "399099002": "LMO", "R-10230": "LMO",
    "399196006": "FB", "R-10244": "FB",
    "399188001": "SIO", "R-102D0": "SIO",
    "441555000": "ISO", "R-40AAA": "ISO",
    "399192008": "XCCL", "R-1024A": "XCCL",
    "399101009": "XCCM", "R-1024B": "XCCM",
    "399161006": "CV", "R-102D2": "CV",
    "399011000": "AT", "R-102D1": "AT",
}
# CodeMeaning / free-text words, most specific first (compared with letters only, lower case).
_VIEW_WORDS = (
    ("superolateraltoinferomedial", "SIO"), ("inferomedialtosuperolateral", "ISO"),
    ("mediolateraloblique", "MLO"), ("lateromedialoblique", "LMO"),
    ("mediolateral", "ML"), ("lateromedial", "LM"),
    ("caudocranial", "FB"), ("frombelow", "FB"), ("craniocaudal", "CC"),
    ("axillarytail", "AT"), ("cleavage", "CV"),
)
_VIEW_TOKENS = frozenset({"CC", "MLO", "ML", "LM", "XCCL", "XCCM", "XCC", "FB", "SIO", "ISO",
                          "LMO", "AT", "CV", "TAN"})
_VIEW_ALIASES = {"XCC": "XCCL"}
# Views that may be glued to a side letter ("LCC", "RMLO"); AT is left out because "LAT" is "lateral".
_GLUED_VIEWS = _VIEW_TOKENS - {"AT"}
_SIDE_WORDS = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}  # not "RT": radiotherapy


class DicomRejected(Exception):
    """Why a DICOM file cannot be used, without its path and without any identifying value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Geometry:
    """The validated pixel-module facts the decoder and the pipeline rely on."""

    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    photometric: str
    keyword: str
    transfer_syntax: UID


# ------------------------------------------------------------------------------ quiet pydicom

_quiet_state = threading.local()


class _DropWhileReading(logging.Filter):
    """Drop pydicom log records emitted by a thread that is inside ``_quiet_pydicom``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet_state, "active", False)


_DROP_WHILE_READING = _DropWhileReading()
_filtered_logger_count = -1


def _filter_pydicom_loggers() -> None:
    """Put the filter on ``pydicom`` and on every ``pydicom.*`` logger that exists.

    A logger's filters only see records created on that logger, not those its children
    (``pydicom.pixels.decoders.base``, ...) pass up to the handlers, so each child needs it too.
    Loggers are never removed, so the (cheap) scan reruns only when new loggers have appeared.
    """
    global _filtered_logger_count
    registry = logging.Logger.manager.loggerDict
    if len(registry) == _filtered_logger_count:
        return
    for name, logger in list(registry.items()):
        if (isinstance(logger, logging.Logger) and (name == "pydicom" or name.startswith("pydicom."))
                and not any(isinstance(f, _DropWhileReading) for f in logger.filters)):
            logger.addFilter(_DROP_WHILE_READING)
    _filtered_logger_count = len(registry)


logging.getLogger("pydicom")
_filter_pydicom_loggers()


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records: they can quote header values (privacy rule).

    Log records are dropped for the reading thread only (a thread-local flag read by a filter on
    every pydicom logger), so other threads' pydicom logging is untouched. A logger that pydicom
    created in the middle of this read (none do in 2.4.4 or 3.0.2: all exist once pydicom.pixels
    is imported) is filtered from the next read on. ``warnings.catch_warnings`` is process-global
    on Python < 3.14; DataLoader workers are processes, so this only matters for threaded readers,
    where a warning may slip through.
    """
    _filter_pydicom_loggers()
    previous = getattr(_quiet_state, "active", False)
    _quiet_state.active = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _quiet_state.active = previous


# -------------------------------------------------------------------------------- entry point

def read_dicom(source: str | os.PathLike[str] | BinaryIO, *, voi: str = "auto", window_index: int = 0,
               allow_any_modality: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
               decoder: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one grey-scale DICOM image; return the [0, 1] image and the allow-listed header facts.

    ``source`` is a path or an open binary file (the reader passes the file it opened, so that it
    can hash the same file afterwards). Sizes are checked against ``max_pixels`` before the pixel
    data are read or decoded. ``decoder`` picks the pixel decoder (data/decoders.py; ``None``: the
    ``MAMMOCLIP_DICOM_DECODER`` environment variable, else ``"auto"``); the one that ran is the
    ``decoder`` fact.
    """
    choice = _decoders.resolve_choice(decoder)  # a bad value is a ValueError, before the file is read
    with _quiet_pydicom(), _binary_file(source) as handle:
        data = _DataSetSource.open(handle, max_pixels)
        header, keyword, forced = _read_header(data)
        _check_header(header, keyword, allow_any_modality, max_pixels)
        ds = _read_whole(data, forced)
        geometry = _check_dataset(ds, allow_any_modality, max_pixels)
        pixels, decoder_used = _decode(ds, geometry, choice)
        image, voi_used, inverted = greyscale(pixels, ds, voi=voi, window_index=window_index)
        header_facts = header_metadata(ds)
    header_facts.update(bits_stored=geometry.bits_stored, photometric_interpretation=geometry.photometric,
                        voi=voi_used, inverted=inverted, decoder=decoder_used)
    return image, header_facts


@contextmanager
def _binary_file(source: str | os.PathLike[str] | BinaryIO) -> Iterator[BinaryIO]:
    """The open file itself, or a path opened (and closed) here."""
    if hasattr(source, "read"):
        yield source  # type: ignore[misc]
        return
    try:
        handle = open(os.fspath(source), "rb")  # type: ignore[arg-type]
    except OSError as exc:
        raise DicomRejected(f"cannot open the file ({type(exc).__name__})") from exc
    with handle:
        yield handle


class _StopAtPixelData:
    """``stop_when`` for pydicom's parser: stop at the first pixel data element, remember which."""

    def __init__(self) -> None:
        self.keyword: str | None = None

    def __call__(self, tag: int, vr: str | None, length: int) -> bool:
        self.keyword = _PIXEL_TAGS.get(int(tag))
        return self.keyword is not None


def _outside_file_meta(tag: int, vr: str | None, length: int) -> bool:
    return int(tag) >> 16 != 2


class _ClampedReader:
    """A read-only view of an open file whose ``read(n)`` never asks for more than what is left.

    pydicom reads an element's value with ``read(length)`` using the length the file declares, and
    a buffered file allocates ``length`` bytes before reading: a corrupt 4 GB length costs 4 GB.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._size = handle.seek(0, os.SEEK_END)
        handle.seek(0)

    def read(self, size: int | None = -1) -> bytes:
        left = max(self._size - self._handle.tell(), 0)
        return self._handle.read(left if size is None or size < 0 else min(size, left))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


class _DataSetSource:
    """Where the data set is parsed from: the file, or (Deflated Explicit VR Little Endian) the
    data set this module inflated with a bounded output, parsed with the file's meta group."""

    def __init__(self, reader: _ClampedReader, inflated: bytes | None = None,
                 file_meta: FileMetaDataset | None = None, preamble: bytes | None = None) -> None:
        self.handle, self.inflated, self.file_meta, self.preamble = reader, inflated, file_meta, preamble

    @classmethod
    def open(cls, handle: BinaryIO, max_pixels: int) -> _DataSetSource:
        """Look at the file meta group; inflate a deflated data set within the size budget."""
        reader = _ClampedReader(handle)
        found = _deflated_file_meta(reader)
        if found is None:
            return cls(reader)
        file_meta, preamble, start = found
        budget = BYTES_PER_CAPPED_PIXEL * max_pixels + DEFLATE_HEADER_ROOM
        return cls(reader, _inflate(reader, start, budget, max_pixels), file_meta, preamble)

    def parse(self, *, force: bool, stop: _StopAtPixelData | None) -> Dataset:
        """Parse the data set (up to the pixel data when ``stop`` is given)."""
        if self.inflated is None:
            self.handle.seek(0)
            return read_partial(self.handle, stop_when=stop, force=force)
        ds = read_dataset(io.BytesIO(self.inflated), False, True, stop_when=stop)
        ds.file_meta = FileMetaDataset(self.file_meta)
        ds.preamble = self.preamble
        if not hasattr(ds, "original_encoding"):  # pydicom 2.4: its handlers read these
            ds.is_little_endian, ds.is_implicit_VR = True, False
        return ds


def _deflated_file_meta(handle: _ClampedReader) -> tuple[FileMetaDataset, bytes | None, int] | None:
    """(file meta, preamble, offset of the deflated stream) for a deflated file, else None.

    Read here because pydicom inflates such files in one unbounded ``zlib.decompress`` call.
    Anything unusual is left to the regular parse, which reports it.
    """
    try:
        handle.seek(0)
        preamble = read_preamble(handle, True)
        meta = read_dataset(handle, False, True, stop_when=_outside_file_meta)
        start = handle.tell()
        syntax = _text(meta, "TransferSyntaxUID")
    except Exception:
        return None
    if syntax != _DEFLATED_LE:
        return None
    return FileMetaDataset(meta), preamble, start


def _inflate(handle: _ClampedReader, start: int, budget: int, max_pixels: int) -> bytes:
    """The deflated data set, inflated step by step: refused once it passes ``budget`` bytes."""
    handle.seek(start)
    compressed = handle.read()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pieces: list[bytes] = []
    total, pending = 0, compressed
    try:
        while True:
            piece = inflater.decompress(pending, _INFLATE_STEP)
            total += len(piece)
            if total > budget:
                raise DicomRejected(
                    f"deflated data set too large: its {len(compressed)} bytes inflate to more than "
                    f"{budget} bytes, the cap for {max_pixels} pixels (max_pixels) "
                    f"of {8 * BYTES_PER_CAPPED_PIXEL}-bit data plus {DEFLATE_HEADER_ROOM} bytes")
            pieces.append(piece)
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and len(piece) < _INFLATE_STEP):
                break
    except zlib.error as exc:
        raise DicomRejected(f"corrupt deflated data set ({' '.join(str(exc).split())[:120]})") from exc
    if not inflater.eof:
        raise DicomRejected(f"truncated deflated data set ({len(compressed)} bytes end before the stream does)")
    del compressed
    return b"".join(pieces)


def _read_header(data: _DataSetSource) -> tuple[Dataset, str | None, bool]:
    """(header up to the pixel data, pixel data keyword or None, whether force was needed).

    Files without the DICM preamble are retried with ``force=True``; a forced read accepts
    almost anything, so it must have reached pixel data to be believed.
    """
    stop = _StopAtPixelData()
    try:
        return data.parse(force=False, stop=stop), stop.keyword, False
    except InvalidDicomError:
        pass
    except DicomRejected:
        raise
    except Exception as exc:  # pydicom parse errors, truncated headers
        raise DicomRejected(f"unreadable DICOM file ({type(exc).__name__})") from exc
    stop = _StopAtPixelData()
    try:
        ds = data.parse(force=True, stop=stop)
    except Exception as exc:
        raise DicomRejected(NOT_SUPPORTED) from exc
    if stop.keyword is None:
        raise DicomRejected(NO_PIXEL_DATA if _looks_like_dicom(ds) else NOT_SUPPORTED)
    return ds, stop.keyword, True


def _read_whole(data: _DataSetSource, forced: bool) -> Dataset:
    """The whole data set, pixel data included (its size was checked on the header)."""
    try:
        return data.parse(force=forced, stop=None)
    except Exception as exc:
        raise DicomRejected(f"unreadable DICOM file ({type(exc).__name__})") from exc


def _looks_like_dicom(ds: Dataset) -> bool:
    """A forced read of a real (preamble-less) DICOM object has its SOP identification."""
    try:
        return any(keyword in ds for keyword in ("SOPClassUID", "Modality"))
    except Exception:
        return False


def _pixel_keyword(ds: Dataset) -> str | None:
    """Which pixel data element the dataset carries, if any."""
    try:
        return next((keyword for keyword in _PIXEL_KEYWORDS if keyword in ds), None)
    except Exception:
        return None


# --------------------------------------------------------------------------------- validation

def _check_header(ds: Dataset, keyword: str | None, allow_any_modality: bool, max_pixels: int
                  ) -> tuple[int, int, str, int, int]:
    """Refuse what is not one grey-scale frame of a supported modality and of a size under the cap,
    cheapest checks first; needs no pixel bytes. Returns (rows, columns, photometric, bits
    allocated, bits stored)."""
    if keyword is None:
        raise DicomRejected(NO_PIXEL_DATA)
    _check_modality(ds, allow_any_modality)
    rows, columns = _required_int(ds, "Rows"), _required_int(ds, "Columns")
    if rows <= 0 or columns <= 0:
        raise DicomRejected(f"image has a zero dimension (Rows {rows}, Columns {columns})")
    photometric = _check_grey(ds)
    _check_single_frame(ds)
    bits_allocated, bits_stored = _check_bits(ds)
    _check_size(rows, columns, bits_allocated, max_pixels)
    return rows, columns, photometric, bits_allocated, bits_stored


def _check_dataset(ds: Dataset, allow_any_modality: bool, max_pixels: int) -> _Geometry:
    """The header checks again on the whole data set, then its pixel bytes and decodability."""
    keyword = _pixel_keyword(ds)
    rows, columns, photometric, bits_allocated, bits_stored = _check_header(
        ds, keyword, allow_any_modality, max_pixels)
    geometry = _Geometry(rows, columns, bits_allocated, bits_stored, photometric, keyword,
                         _transfer_syntax(ds, keyword))
    _check_decodable(ds, geometry)
    return geometry


def _check_size(rows: int, columns: int, bits_allocated: int, max_pixels: int) -> None:
    """Rows x Columns x SamplesPerPixel (1, checked before) x bytes per sample against the cap."""
    pixels = rows * columns
    stored = (pixels * bits_allocated + 7) // 8
    byte_cap = BYTES_PER_CAPPED_PIXEL * max_pixels
    if pixels > max_pixels or stored > byte_cap:
        raise DicomRejected(
            f"image too large: the header declares {rows} x {columns} = {pixels} pixels of "
            f"{bits_allocated}-bit data ({stored} bytes), over the cap of {max_pixels} pixels / "
            f"{byte_cap} bytes (max_pixels)")


def _check_modality(ds: Dataset, allow_any_modality: bool) -> None:
    """Only MG by default; the message names the modality so the caller knows what was refused."""
    modality = _text(ds, "Modality").upper()
    if modality != "MG" and not allow_any_modality:
        shown = repr(_shown(modality)) if modality else "missing"
        raise DicomRejected(f"modality {shown} is not MG (pass allow_any_modality=True to read it)")


def _check_grey(ds: Dataset) -> str:
    """One sample per pixel and MONOCHROME1/2; a missing interpretation of 1 sample is MONOCHROME2."""
    samples = _optional_int(ds, "SamplesPerPixel")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if not photometric and samples in (None, 1):
        photometric = "MONOCHROME2"
        _replace(ds, "PhotometricInterpretation", "CS", photometric)
    if samples is None and photometric in MONOCHROME:
        samples = 1
        _replace(ds, "SamplesPerPixel", "US", 1)
    if samples != 1 or photometric not in MONOCHROME:
        raise DicomRejected(
            f"colour image (PhotometricInterpretation {_shown(photometric) or 'missing'}, "
            f"SamplesPerPixel {samples}) is not supported; a mammogram is grey-scale")
    if _get(ds, "PhotometricInterpretation") != photometric:  # "monochrome2 ", or several values
        _replace(ds, "PhotometricInterpretation", "CS", photometric)  # the decoders want the defined term
    return photometric


def _check_single_frame(ds: Dataset) -> None:
    """Multi-frame objects (tomosynthesis, cine) are not a single mammogram."""
    raw = _first(_get(ds, "NumberOfFrames"))
    if raw is None or str(raw).strip() == "":
        return
    try:
        frames = int(str(raw).strip())
    except ValueError:
        raise DicomRejected("invalid NumberOfFrames") from None
    if frames > 1:
        raise DicomRejected(f"multi-frame image ({frames} frames) is not supported")
    if frames < 1:
        raise DicomRejected("image has a zero dimension (NumberOfFrames 0)")


def _check_bits(ds: Dataset) -> tuple[int, int]:
    """BitsAllocated is required; BitsStored and PixelRepresentation get their obvious defaults."""
    allocated = _required_int(ds, "BitsAllocated")
    if allocated not in (1, 8, 16, 32, 64):
        raise DicomRejected(f"unsupported BitsAllocated {allocated}")
    stored = _optional_int(ds, "BitsStored")
    if stored is None:
        stored = allocated
        _replace(ds, "BitsStored", "US", allocated)
    if not 1 <= stored <= allocated:
        raise DicomRejected(f"invalid BitsStored {stored} (BitsAllocated {allocated})")
    representation = _optional_int(ds, "PixelRepresentation")
    if representation is None:
        _replace(ds, "PixelRepresentation", "US", 0)
    elif representation not in (0, 1):
        raise DicomRejected(f"invalid PixelRepresentation {representation} (expected 0 or 1)")
    return allocated, stored


def _transfer_syntax(ds: Dataset, keyword: str) -> UID:
    """The file's transfer syntax; for files without one, the encoding pydicom read them with."""
    meta = getattr(ds, "file_meta", None)
    uid = _text(meta, "TransferSyntaxUID") if meta is not None else ""
    if uid:
        return UID(uid)
    if _is_encapsulated(ds, keyword):
        raise DicomRejected("compressed pixel data without a transfer syntax")
    implicit, little = _original_encoding(ds)
    if little is None or implicit is None or (implicit and not little):
        raise DicomRejected("missing transfer syntax")
    uid = _IMPLICIT_LE if implicit else (_EXPLICIT_LE if little else _EXPLICIT_BE)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    _replace(meta, "TransferSyntaxUID", "UI", UID(uid))
    return UID(uid)


def _original_encoding(ds: Dataset) -> tuple[bool | None, bool | None]:
    """(implicit VR, little endian) as read: ``original_encoding`` in 3.x, ``read_*`` in 2.4."""
    encoding = getattr(ds, "original_encoding", None)
    if encoding is not None:
        return encoding[0], encoding[1]
    return getattr(ds, "read_implicit_vr", None), getattr(ds, "read_little_endian", None)


def _is_encapsulated(ds: Dataset, keyword: str) -> bool:
    """Encapsulated (compressed) pixel data starts with an Item tag."""
    value = _pixel_value(ds, keyword) if keyword == "PixelData" else None
    return isinstance(value, (bytes, bytearray)) and value[:4] in (_ITEM_TAG, b"\xff\xfe\xe0\x00")


def _vr_of(ds: Dataset, keyword: str) -> str:
    try:
        return str(ds[keyword].VR)
    except Exception:
        return "?"


def _shown(text: str, limit: int = 16) -> str:
    """A header value as it may appear in a reason: short, printable ASCII, one line."""
    return re.sub(r"[^\x20-\x7e]", "?", text[:limit])


def _pixel_value(ds: Dataset, keyword: str) -> Any:
    """The pixel data element's value (raw bytes), None when it cannot be had."""
    try:
        return ds[keyword].value
    except Exception:
        return None


def _check_decodable(ds: Dataset, geometry: _Geometry) -> None:
    """Native data must be complete; compressed data needs an installed decoder and must be able
    to hold the declared image (plausible ratio, codestream no larger than the header)."""
    syntax = geometry.transfer_syntax
    if not _known_transfer_syntax(syntax):
        raise DicomRejected(f"unsupported transfer syntax {_shown(str(syntax), 64)}")
    value = _pixel_value(ds, geometry.keyword)
    expected = (geometry.rows * geometry.columns * geometry.bits_allocated + 7) // 8
    if value is None or (isinstance(value, (bytes, bytearray)) and not value):
        raise DicomRejected(f"truncated pixel data (0 of {expected} bytes)")
    if not isinstance(value, (bytes, bytearray)):
        raise DicomRejected(f"unreadable {geometry.keyword} (VR {_shown(str(_vr_of(ds, geometry.keyword)))}; "
                            f"pixel data are OB or OW)")
    if syntax.is_compressed:
        if not _decoder_available(syntax):
            raise DicomRejected(
                f"no decoder installed for transfer syntax {_syntax_name(syntax)!r}; "
                f"install one: pip install {_DECODER_HINTS.get(str(syntax), 'pylibjpeg')}")
        _check_encapsulated(value, syntax, geometry, expected)
        return
    if len(value) < expected:
        raise DicomRejected(f"truncated pixel data ({len(value)} of {expected} bytes)")


def _check_encapsulated(value: bytes, syntax: UID, geometry: _Geometry, expected: int) -> None:
    """What the fragments can hold: a compression ratio no codec reaches on a real image, and the
    codestream's own frame header (JPEG SOF, JPEG 2000 SIZ) no larger than Rows x Columns."""
    if not _is_encapsulated_value(value):
        raise DicomRejected(f"{_syntax_name(syntax)!r} pixel data is not encapsulated (no item tag)")
    ratio = MAX_COMPRESSION_RATIO.get(str(syntax), _OTHER_COMPRESSION_RATIO)
    if expected > ratio * len(value):
        raise DicomRejected(
            f"implausible compressed pixel data: the header declares {geometry.rows} x {geometry.columns} "
            f"pixels ({expected} bytes) but the {_syntax_name(syntax)!r} data hold {len(value)} bytes; "
            f"more than {ratio}:1 is not plausible")
    shape = _codestream_shape(_first_fragment(value), syntax)
    if shape is None:
        return
    rows, columns, components = shape
    if rows * columns * components > geometry.rows * geometry.columns:  # which is under the cap
        raise DicomRejected(
            f"the {_syntax_name(syntax)!r} codestream declares {rows} x {columns} x {components}, "
            f"more than the header's {geometry.rows} x {geometry.columns} x 1")


def _is_encapsulated_value(value: bytes) -> bool:
    return value[:4] == _ITEM_TAG


def _first_fragment(value: bytes) -> memoryview:
    """The first fragment after the Basic Offset Table item (empty when the items are broken)."""
    view = memoryview(value)
    if len(view) < 8 or bytes(view[:4]) != _ITEM_TAG:
        return view[:0]
    position = 8 + int.from_bytes(view[4:8], "little")
    if len(view) < position + 8 or bytes(view[position:position + 4]) != _ITEM_TAG:
        return view[:0]
    length = int.from_bytes(view[position + 4:position + 8], "little")
    return view[position + 8:position + 8 + length]


def _codestream_shape(fragment: memoryview, syntax: UID) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG / JPEG-LS SOF or JPEG 2000 SIZ marker; None when
    the fragment has none (RLE, or a codestream the decoder will refuse on its own).

    Only the syntax's own header is looked for: RLE segments are arbitrary bytes, in which the
    JPEG 2000 marker bytes occur by chance (a real file of the synthetic set had them).
    """
    name = str(syntax)
    if name not in _JPEG_SYNTAXES and name not in _J2K_SYNTAXES:
        return None
    data = bytes(fragment[:1 << 16])  # the frame header sits in the first bytes of the first fragment
    if name in _JPEG_SYNTAXES:
        return _jpeg_frame_shape(data) if data[:2] == b"\xff\xd8" else None
    at = data.find(_J2K_SIZ)  # at the start of a codestream, or after the boxes of a JP2 file
    if at < 0 or len(data) < at + 42:
        return None
    siz = at + 4  # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz
    width = int.from_bytes(data[siz + 4:siz + 8], "big") - int.from_bytes(data[siz + 12:siz + 16], "big")
    height = int.from_bytes(data[siz + 8:siz + 12], "big") - int.from_bytes(data[siz + 16:siz + 20], "big")
    components = int.from_bytes(data[siz + 36:siz + 38], "big")
    return (height, width, components) if height > 0 and width > 0 else None


def _jpeg_frame_shape(data: bytes) -> tuple[int, int, int] | None:
    """Walk the JPEG marker segments to the start-of-frame: (Y, X, Nf); None before a scan."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _SOF_MARKERS:
            segment = data[position + 4:position + 2 + length]
            if len(segment) < 6:
                return None
            rows = int.from_bytes(segment[1:3], "big")
            columns = int.from_bytes(segment[3:5], "big")
            return (rows, columns, segment[5]) if rows > 0 else None  # Y = 0: set later by a DNL marker
        if marker == 0xDA or length < 2:  # a scan before any frame header, or a broken segment
            return None
        position += 2 + length
    return None


def _known_transfer_syntax(syntax: UID) -> bool:
    """pydicom knows how the syntax is encoded (private syntaxes are not)."""
    try:
        return bool(syntax.is_transfer_syntax)
    except Exception:
        return False


def _decoder_available(syntax: UID) -> bool:
    """At least one CPU backend of data/decoders.py is installed for the syntax."""
    return bool(_decoders.installed_backends(str(syntax)))


def _syntax_name(syntax: UID) -> str:
    """Human name of a transfer syntax (pydicom 2.4 lacks names for the newest ones)."""
    return str(getattr(syntax, "name", "") or syntax)


# ----------------------------------------------------------------------------------- decoding

def _decode(ds: Dataset, geometry: _Geometry, choice: tuple[str, ...] = (_decoders.AUTO,)
            ) -> tuple[np.ndarray, str]:
    """Stored values as a (Rows, Columns) array and the decoder that ran ("native" for
    uncompressed data; for compressed data the first backend of data/decoders.py that succeeds);
    every failure becomes one reason."""
    syntax = geometry.transfer_syntax
    try:
        if syntax.is_compressed:
            pixels, used = _decoders.decode(ds, str(syntax), choice)
        else:
            pixels, used = np.asarray(ds.pixel_array), _decoders.NATIVE
    except _decoders.DecodeFailed as exc:
        raise DicomRejected(_decode_failure(syntax, exc)) from exc
    except Exception as exc:
        raise DicomRejected(_decode_failure(syntax, exc)) from exc
    if pixels.shape != (geometry.rows, geometry.columns):
        raise DicomRejected(
            f"decoded pixel data has shape {pixels.shape}, expected ({geometry.rows}, {geometry.columns})")
    return pixels, used


def _decode_failure(syntax: UID, exc: Exception) -> str:
    """Say what failed (for compressed data: each backend tried, and its error) and what may help."""
    if isinstance(exc, _decoders.DecodeFailed):
        detail = exc.reason
    else:
        detail = f"{type(exc).__name__}: " + _MEMORY_ADDRESS.sub("", " ".join(str(exc).split()))[:240]
    if "less than expected" in detail or "truncat" in detail.lower():
        return f"truncated pixel data ({detail})"
    if syntax.is_compressed:
        hint = _DECODER_HINTS.get(str(syntax), "pylibjpeg")
        return (f"could not decode the {_syntax_name(syntax)!r} pixel data with {detail}; "
                f"another decoder may help: pip install {hint}")
    return f"could not decode the pixel data ({detail})"


_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # "<_io.BytesIO object at 0x7f...>": the same every run


# ------------------------------------------------------------------------ grey-scale pipeline

_STORED_SINK: contextvars.ContextVar[list | None] = contextvars.ContextVar("mammoclip_stored_sink", default=None)


@contextmanager
def stored_values() -> Iterator[list]:
    """Within this context :func:`greyscale` tabulates instead of mapping (the fused chain's hook).

    For 8/16-bit integer pixels, ``greyscale`` appends ``(pixels, table, linear)`` to the yielded
    list and returns a 1 x 1 placeholder image with the right ``voi_used`` and ``inverted``:
    ``linear`` is :func:`greyscale_linear`'s ``(shift, scale)`` when the mapping is a clipped ramp
    (``table`` is then None), else ``table`` is :func:`greyscale_table`'s (indexed by the pixels'
    unsigned view, exactly what ``greyscale`` would give each stored value).
    The caller then maps only the pixels it needs (data/preprocess.py). Other pixel
    data are mapped as usual and nothing is appended. Per thread / task (a context variable).
    """
    sink: list = []
    token = _STORED_SINK.set(sink)
    try:
        yield sink
    finally:
        _STORED_SINK.reset(token)


def greyscale_table(pixels: np.ndarray, ds: Dataset, *, voi: str = "auto", window_index: int = 0
                    ) -> tuple[np.ndarray, str, bool] | None:
    """:func:`greyscale` of every stored value ``pixels`` can hold, as a float32 lookup table.

    Returns ``(table, voi_used, inverted)``, ``table[pixels.view(unsigned)]`` being the image
    ``greyscale(pixels, ds)`` would give, bit for bit; None for other than 8/16-bit native integer
    data. Min-max (the one mapping that depends on the image, not only on the value) is
    tabulated over the image's own stored range, which gives the same ends.
    """
    if pixels.dtype.kind not in "iu" or pixels.dtype.itemsize > 2 or not pixels.dtype.isnative or pixels.size == 0:
        return None
    unsigned = np.dtype(f"u{pixels.dtype.itemsize}")
    size = 2 ** (8 * unsigned.itemsize)
    by_image = voi == "minmax" or (voi == "auto" and _voi_lut_item(ds, window_index) is None
                                   and _window(ds, window_index) is None)
    if by_image:
        if _modality_lut_item(ds) is not None:
            return None  # a LUT sequence need not be monotone: min-max needs the values present
        domain = np.arange(int(pixels.min()), int(pixels.max()) + 1).astype(pixels.dtype)
    else:
        domain = np.arange(size, dtype=unsigned).view(pixels.dtype)
    values, voi_used, inverted = _greyscale(domain[None], ds, voi=voi, window_index=window_index)
    table = np.zeros(size, dtype=np.float32)
    table[domain.view(unsigned)] = values[0]
    return table, voi_used, inverted


def greyscale_linear(pixels: np.ndarray, ds: Dataset, *, voi: str = "auto", window_index: int = 0
                     ) -> tuple[float, float, str] | None:
    """``(shift, scale, voi_used)`` when :func:`greyscale` is ``clip((stored - shift) * scale, 0, 1)``.

    True of the common case (rescale slope/intercept, then a LINEAR / LINEAR_EXACT window,
    min-max or range, inverted or not); computing it that way differs from ``greyscale`` only by
    float32 rounding (a few units in the last place), and costs two arithmetic steps, not a gather.
    """
    if pixels.dtype.kind not in "iu" or pixels.dtype.itemsize > 2 or _modality_lut_item(ds) is not None:
        return None
    if voi == "lut" or (voi == "auto" and _voi_lut_item(ds, window_index) is not None):
        return None
    slope = _rescale_value(ds, "RescaleSlope", 1.0)
    intercept = _rescale_value(ds, "RescaleIntercept", 0.0)
    ends = _ramp_ends(pixels, ds, voi, window_index, slope, intercept)
    if ends is None:
        return None
    low, high, used = ends
    if not all(math.isfinite(end) and abs(end) < 3.0e38 for end in (low, high)) or not high > low or slope == 0:
        return None  # flat or out of float32: the table path decides
    # shifting first keeps float32 cancellation away from narrow windows far from zero
    if needs_inversion(ds):
        return (high - intercept) / slope, -slope / (high - low), used
    return (low - intercept) / slope, slope / (high - low), used


def _ramp_ends(pixels: np.ndarray, ds: Dataset, voi: str, index: int, slope: float, intercept: float
               ) -> tuple[float, float, str] | None:
    """(low, high, voi_used) of the linear ramp ``greyscale`` applies to integer pixels, or None."""
    nominal = _stored_range(ds, pixels)
    if nominal is None:
        return None
    window = _window(ds, index) if voi in ("auto", "window") else None
    if window is not None:
        center, width, function = window
        if function == "SIGMOID" or not width > 1:
            return None
        if function == "LINEAR_EXACT":
            return center - width / 2.0, center + width / 2.0, "window"
        half = (width - 1.0) / 2.0
        return center - 0.5 - half, center - 0.5 + half, "window"
    if voi == "window":
        return None  # let the generic path give its reason
    if voi == "range":
        ends = sorted((nominal[0] * slope + intercept, nominal[1] * slope + intercept))
        return ends[0], ends[1], "range"
    if pixels.size == 0:  # minmax (also "auto" without a window)
        return None
    values = _rescaled(np.asarray([pixels.min(), pixels.max()]), slope, intercept)
    return float(values.min()), float(values.max()), "minmax"


def greyscale(pixels: np.ndarray, ds: Dataset, *, voi: str = "auto", window_index: int = 0
              ) -> tuple[np.ndarray, str, bool]:
    """Stored values -> modality LUT -> VOI -> [0, 1] -> inversion (PS3.3 C.11), all in float32.

    Returns ``(image, voi_used, inverted)``. The inversion is folded into the VOI mapping (a
    descending ramp, a negated sigmoid, an inverted table), so it costs no pass over the image.
    An image the VOI leaves flat (window width <= 0, a VOI LUT whose entries are all equal, all
    values equal for min-max) is all zeros, not inverted. Inside :func:`stored_values`, 8/16-bit
    integer images are tabulated instead (see there).
    """
    sink = _STORED_SINK.get()
    if sink is not None and pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2 and pixels.dtype.isnative:
        linear = greyscale_linear(pixels, ds, voi=voi, window_index=window_index)
        if linear is not None:
            sink.append((pixels, None, linear[:2]))
            return np.zeros((1, 1), dtype=np.float32), linear[2], needs_inversion(ds)
        tabulated = greyscale_table(pixels, ds, voi=voi, window_index=window_index)
        if tabulated is not None:
            table, voi_used, inverted = tabulated
            sink.append((pixels, table, None))
            return np.zeros((1, 1), dtype=np.float32), voi_used, inverted
    return _greyscale(pixels, ds, voi=voi, window_index=window_index)


def _greyscale(pixels: np.ndarray, ds: Dataset, *, voi: str = "auto", window_index: int = 0
               ) -> tuple[np.ndarray, str, bool]:
    """The mapping itself (see :func:`greyscale`)."""
    invert = needs_inversion(ds)
    item = _voi_lut_item(ds, window_index) if voi in ("auto", "lut") else None
    if voi == "lut" and item is None:
        raise DicomRejected("voi='lut' but the file has no usable VOI LUT Sequence")
    with np.errstate(all="ignore"):
        fast = None if item is not None else _integer_ramp(pixels, ds, voi, window_index, invert)
        if item is not None:
            image, flat = _voi_lut_pipeline(pixels, ds, item, invert)
            voi_used = "lut"
        elif fast is not None:
            image, voi_used, flat = fast
        else:
            values, nominal = modality_values(pixels, ds)
            image, voi_used, flat = _apply_voi(values, ds, voi, window_index, nominal, invert)
        if flat:
            return np.zeros(pixels.shape, dtype=np.float32), voi_used, False
        np.clip(image, 0.0, 1.0, out=image)
    return image, voi_used, invert


def _integer_ramp(pixels: np.ndarray, ds: Dataset, voi: str, index: int, invert: bool
                  ) -> tuple[np.ndarray, str, bool] | None:
    """The common case in fewer passes: integer pixels, rescale (no LUT sequence), a linear ramp.

    Performs exactly the float32 operations of ``modality_values`` + ``_apply_voi`` in the same
    order (so the result is bit-identical), but converts while doing the first operation instead
    of in a pass of its own, and takes min-max from the integer pixels (cheap) instead of from the
    float32 values. Returns None when another path must decide (SIGMOID, thresholds, modality LUT
    sequences, float data, or ramps float32 cannot hold).
    """
    if pixels.dtype.kind not in "iu" or pixels.dtype.itemsize > 2 or _modality_lut_item(ds) is not None:
        return None
    slope = _rescale_value(ds, "RescaleSlope", 1.0)
    intercept = _rescale_value(ds, "RescaleIntercept", 0.0)
    ends = _ramp_ends(pixels, ds, voi, index, slope, intercept)
    if ends is None:
        return None
    low, high, used = ends
    if not all(math.isfinite(end) and abs(end) < 3.0e38 for end in (low, high)):
        return None  # the generic path refuses or computes it in float64
    if not high > low:
        return pixels, used, True  # flat: the caller returns zeros
    span = np.float32(high - low)
    if span == 0 or not np.isfinite(span):
        return None
    values = _rescaled(pixels, slope, intercept, shift=np.float32(high if invert else low))
    values /= -span if invert else span
    return values, used, False


def _rescaled(pixels: np.ndarray, slope: float, intercept: float, shift: np.float32 | None = None) -> np.ndarray:
    """float32(pixels) * slope + intercept - shift, the conversion fused into the first operation."""
    steps = [(np.multiply, np.float32(slope))] if slope != 1.0 else []
    if intercept != 0.0:
        steps.append((np.add, np.float32(intercept)))
    if shift is not None:
        steps.append((np.subtract, shift))
    if not steps:
        return pixels.astype(np.float32)
    (first, operand), rest = steps[0], steps[1:]
    values = first(pixels, operand, dtype=np.float32)
    for op, operand in rest:
        op(values, operand, out=values)
    return values


def needs_inversion(ds: Dataset) -> bool:
    """MONOCHROME1 or Presentation LUT Shape INVERSE (MG MONOCHROME1 files carry both: invert once)."""
    photometric = _text(ds, "PhotometricInterpretation").upper()
    return photometric == "MONOCHROME1" or _text(ds, "PresentationLUTShape").upper() == "INVERSE"


def modality_values(pixels: np.ndarray, ds: Dataset) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Apply the modality LUT (sequence, or rescale slope/intercept) in float32.

    Also returns the nominal range of the modality values (BitsStored pushed through the modality
    LUT), used by ``voi="range"``; None for floating-point pixel data.
    """
    nominal = _stored_range(ds, pixels)
    lut = _modality_lut_item(ds)
    if lut is not None:
        values = _lut_modality(pixels, ds)
        bits = int(lut.LUTDescriptor[2])
        nominal = None if nominal is None else (0.0, float(2 ** bits - 1))
    else:
        values, nominal = _rescale(pixels, ds, nominal)
    if pixels.dtype.kind == "f" and not np.isfinite(values).all():
        raise DicomRejected("non-finite values in floating-point pixel data")
    return values, nominal


def _stored_range(ds: Dataset, pixels: np.ndarray) -> tuple[float, float] | None:
    """0..2**bits-1, or -2**(bits-1)..2**(bits-1)-1 for signed data; None for float data."""
    if pixels.dtype.kind == "f":
        return None
    bits = _optional_int(ds, "BitsStored") or pixels.dtype.itemsize * 8
    if _optional_int(ds, "PixelRepresentation") == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2 ** bits - 1)


def _modality_lut_item(ds: Dataset) -> Dataset | None:
    """The first Modality LUT Sequence item, when it is usable."""
    sequence = _get(ds, "ModalityLUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    if "LUTDescriptor" not in item or "LUTData" not in item:
        return None
    return item


def _lut_modality(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Rare in MG: let pydicom apply the Modality LUT Sequence, then work in float32."""
    try:
        mapped = _pydicom_modality_lut(pixels, ds)
    except Exception as exc:
        raise DicomRejected(f"invalid Modality LUT Sequence ({type(exc).__name__})") from exc
    return np.array(mapped, dtype=np.float32, copy=True)


def _rescale(pixels: np.ndarray, ds: Dataset, nominal: tuple[float, float] | None
             ) -> tuple[np.ndarray, tuple[float, float] | None]:
    """value = stored * RescaleSlope + RescaleIntercept, done in place on a float32 copy."""
    slope = _rescale_value(ds, "RescaleSlope", 1.0)
    intercept = _rescale_value(ds, "RescaleIntercept", 0.0)
    values = pixels.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    if nominal is not None:
        ends = sorted((nominal[0] * slope + intercept, nominal[1] * slope + intercept))
        if not all(math.isfinite(end) and abs(end) < 3.0e38 for end in ends):
            raise DicomRejected("RescaleSlope/RescaleIntercept overflow single precision")
        nominal = (ends[0], ends[1])
    return values, nominal


def _rescale_value(ds: Dataset, keyword: str, default: float) -> float:
    """A finite rescale value; present but unusable is a reason, not a silent default."""
    raw = _first(_get(ds, keyword))
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise DicomRejected(f"invalid {keyword}") from None
    if not math.isfinite(value):
        raise DicomRejected(f"invalid {keyword}")
    return value


def _apply_voi(values: np.ndarray, ds: Dataset, mode: str, index: int,
               nominal: tuple[float, float] | None, invert: bool) -> tuple[np.ndarray, str, bool]:
    """Window, range or min-max (the VOI LUT has its own path); returns (image, used, flat)."""
    if mode in ("auto", "window"):
        window = _window(ds, index)
        if window is not None:
            image, flat = apply_window(values, *window, invert=invert)
            return image, "window", flat
        if mode == "window":
            raise DicomRejected("voi='window' but the file has no usable WindowCenter/WindowWidth")
    if mode == "range":
        if nominal is None:
            raise DicomRejected("voi='range' needs integer pixel data")
        image, flat = _ramp(values, nominal[0], nominal[1], invert)
        return image, "range", flat
    image, flat = _ramp(values, float(values.min()), float(values.max()), invert)
    return image, "minmax", flat


# ------------------------------------------------------------------------------ VOI functions

def _voi_lut_item(ds: Dataset, index: int) -> Dataset | None:
    """The VOI LUT Sequence item ``index`` (the first when it does not exist), if usable."""
    sequence = _get(ds, "VOILUTSequence")
    if not sequence:
        return None
    item = sequence[index] if 0 <= index < len(sequence) else sequence[0]
    descriptor = _get(item, "LUTDescriptor")
    if descriptor is None or "LUTData" not in item:
        return None
    try:
        if len([int(v) for v in descriptor]) != 3:
            return None
    except (TypeError, ValueError):
        return None
    return item


def _voi_lut_pipeline(pixels: np.ndarray, ds: Dataset, item: Dataset, invert: bool
                      ) -> tuple[np.ndarray, bool]:
    """Modality LUT + VOI LUT as one gather.

    For 8/16-bit integer data the whole mapping is tabulated per stored value (at most 65536
    entries) and the image is gathered once; other data go through float32 modality values.
    """
    table, first = _voi_lut_table(item, ds, invert)
    if table is None:
        return pixels, True
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
        unsigned = np.dtype(f"u{pixels.dtype.itemsize}")
        domain = np.arange(2 ** (8 * unsigned.itemsize), dtype=unsigned).view(pixels.dtype)
        per_stored = np.take(table, _lut_index(modality_values(domain, ds)[0], first, table.size))
        return np.take(per_stored, pixels.view(unsigned), mode="clip"), False  # in range: faster than 'raise'
    values, _ = modality_values(pixels, ds)
    return np.take(table, _lut_index(values, first, table.size)), False


def _lut_index(values: np.ndarray, first: int, entries: int) -> np.ndarray:
    """LUT indices: below the first mapped value -> 0, beyond the last entry -> the last."""
    values -= np.float32(first)
    np.clip(values, 0, entries - 1, out=values)
    return values.astype(np.intp)


def _voi_lut_table(item: Dataset, ds: Dataset, invert: bool) -> tuple[np.ndarray | None, int]:
    """(float32 table already in [0, 1] and inverted if asked, first mapped value); None if flat.

    A table whose entries are all equal maps every value to one grey: that is a flat VOI, like a
    window of width 0, so the image becomes zeros (not, on MONOCHROME1, ones).
    """
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # PS3.3 C.11.2.1.1: 0 means 2**16 entries
    if first >= 2 ** 15 and _optional_int(ds, "PixelRepresentation") == 1:
        first -= 2 ** 16  # signed first-mapped value read through an unsigned VR
    data = _lut_data(item, entries, ds)
    entries = min(entries, data.size)
    if entries == 0:
        raise DicomRejected("empty VOI LUT (LUTData has no entries)")
    data = data[:entries]
    if int(data.min()) == int(data.max()):
        return None, first
    top = _lut_top(bits, int(data.max()))
    if top <= 0:
        return None, first
    table = data.astype(np.float64) / top
    if invert:
        table = 1.0 - table
    return table.astype(np.float32), first


def _lut_top(bits: int, peak: int) -> int:
    """2**bits - 1, or the next power of two minus 1 when the data exceed it."""
    top = 2 ** bits - 1 if 1 <= bits <= 32 else 0
    if peak > top:
        top = 2 ** peak.bit_length() - 1
    return top


def _lut_data(item: Dataset, entries: int, ds: Dataset) -> np.ndarray:
    """LUTData as integers: a list (US), a single value, or raw bytes (OW) in the file's byte order."""
    raw = item.LUTData
    if raw is None:  # present but empty
        return np.zeros(0, dtype=np.int64)
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) == entries:  # 8-bit entries packed one per byte
            return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
        order = "<" if _little_endian(ds) else ">"
        return np.frombuffer(raw[: len(raw) // 2 * 2], dtype=f"{order}u2").astype(np.int64)
    if isinstance(raw, (int, float)):
        return np.asarray([raw], dtype=np.int64)
    return np.asarray(list(raw), dtype=np.int64)


def _little_endian(ds: Dataset) -> bool:
    """Byte order of OW values: big endian only for Explicit VR Big Endian files."""
    meta = getattr(ds, "file_meta", None)
    return _text(meta, "TransferSyntaxUID") != _EXPLICIT_BE if meta is not None else True


def _window(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    """(center, width, VOI LUT function) of window ``index`` (the first when it does not exist)."""
    centers, widths = _floats(ds, "WindowCenter"), _floats(ds, "WindowWidth")
    if not centers or not widths:
        return None
    center = centers[index] if 0 <= index < len(centers) else centers[0]
    width = widths[index] if 0 <= index < len(widths) else widths[0]
    if not all(math.isfinite(v) and abs(v) < 1.0e30 for v in (center, width)):
        return None
    function = _text(ds, "VOILUTFunction").upper() or "LINEAR"
    return center, width, function


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR",
                 *, invert: bool = False) -> tuple[np.ndarray, bool]:
    """Window float32 ``values`` in place towards [0, 1] (unclipped); returns (image, flat).

    LINEAR (the default, also for unknown functions) is the ramp clip((x - (c - 0.5)) / (w - 1)
    + 0.5), i.e. from c - 0.5 - (w-1)/2 to c - 0.5 + (w-1)/2; LINEAR_EXACT the ramp (x - c) / w
    + 0.5; SIGMOID 1 / (1 + exp(-4 (x - c) / w)). A width <= 0 is flat; a LINEAR width <= 1 is
    a threshold at c - 0.5 (PS3.3 C.11.2.1.2). ``invert`` returns 1 - y at no extra cost.
    """
    if not width > 0:
        return values, True
    if function == "SIGMOID":
        return _sigmoid(values, center, width, invert), False
    if function == "LINEAR_EXACT":
        return _ramp(values, center - width / 2.0, center + width / 2.0, invert)
    if width <= 1:
        return _threshold(values, center - 0.5, invert), False
    half = (width - 1.0) / 2.0
    return _ramp(values, center - 0.5 - half, center - 0.5 + half, invert)


def _ramp(values: np.ndarray, low: float, high: float, invert: bool) -> tuple[np.ndarray, bool]:
    """(x - low) / (high - low) in place, or (x - high) / (low - high) = 1 - that when inverting.

    Two passes; values are left unclipped. An empty ramp is flat, one too narrow for float32 a
    threshold, one too wide for float32 is computed in float64.
    """
    if not high > low:
        return values, True
    span = np.float32(high - low)
    if span == 0:
        return _threshold(values, low, invert), False
    if not np.isfinite(span):
        ramp = (values.astype(np.float64) - low) / (high - low)
        return (1.0 - ramp if invert else ramp).astype(np.float32), False
    if invert:
        values -= np.float32(high)
        values /= -span
    else:
        values -= np.float32(low)
        values /= span
    return values, False


def _sigmoid(values: np.ndarray, center: float, width: float, invert: bool) -> np.ndarray:
    """1 / (1 + exp(-4 (x - c) / w)) in place; inverted by flipping the exponent's sign."""
    quarter = np.float32(width / 4.0)
    if quarter == 0:
        return _threshold(values, center, invert)
    values -= np.float32(center)
    values /= quarter if invert else -quarter
    np.exp(values, out=values)  # overflow to inf gives exactly 0 below
    values += np.float32(1.0)
    np.reciprocal(values, out=values)
    return values


def _threshold(values: np.ndarray, level: float, invert: bool) -> np.ndarray:
    """1 above ``level`` and 0 at or below it (or the reverse): a window of (almost) zero width."""
    above = np.greater(values, np.float32(level))
    return (~above if invert else above).astype(np.float32)


# ---------------------------------------------------------------------------- header metadata

def header_metadata(ds: Dataset) -> dict[str, Any]:
    """The allow-listed header facts of the contract; nothing else is ever copied from the header."""
    spacing, source = pixel_spacing(ds)
    return {
        "laterality": laterality(ds),
        "view": view_position(ds),
        "pixel_spacing": spacing,
        "spacing_source": source,
        "modality": _text(ds, "Modality") or "unknown",
        "manufacturer": _text(ds, "Manufacturer"),
    }


def laterality(ds: Dataset) -> str:
    """"L"/"R" from the first laterality tag present, else unambiguous text; never from pixels.

    A present tag that is neither L nor R ("B", "U") gives "unknown" rather than a weaker source.
    """
    for value in (_text(ds, "ImageLaterality"), _text(ds, "Laterality"), _frame_laterality(ds)):
        if value:
            return value.upper() if value.upper() in ("L", "R") else "unknown"
    sides: set[str] = set()
    for keyword in ("SeriesDescription", "ProtocolName", "ViewPosition"):
        sides |= _sides_in_text(_text(ds, keyword))
    return sides.pop() if len(sides) == 1 else "unknown"


def _frame_laterality(ds: Dataset) -> str:
    """FrameLaterality of enhanced objects, shared functional groups first."""
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = _get(ds, keyword)
        if not groups:
            continue
        anatomy = _get(groups[0], "FrameAnatomySequence")
        if anatomy:
            value = _text(anatomy[0], "FrameLaterality")
            if value:
                return value
    return ""


def _sides_in_text(text: str) -> set[str]:
    """Sides named by whole tokens: "L", "RIGHT", or a side glued to a view ("LCC", "RMLO")."""
    sides = set()
    for token in re.split(r"[^A-Z0-9]+", text.upper()):
        if token in _SIDE_WORDS:
            sides.add(_SIDE_WORDS[token])
        elif len(token) > 2 and token[0] in "LR" and token[1:] in _GLUED_VIEWS:
            sides.add(token[0])
    return sides


def view_position(ds: Dataset) -> str:
    """ViewPosition, then ViewCodeSequence, then PatientOrientation, else "unknown"."""
    return (_view_from_text(_text(ds, "ViewPosition")) or _view_from_codes(ds)
            or _view_from_orientation(ds) or "unknown")


def _view_from_text(text: str) -> str | None:
    """Normalise "CC", "L MLO", "RCC", "XCC", "medio-lateral oblique" ... to a view code."""
    for token in re.split(r"[^A-Z0-9]+", text.upper()):
        if token in _VIEW_TOKENS:
            return _VIEW_ALIASES.get(token, token)
        if len(token) > 2 and token[0] in "LR" and token[1:] in _GLUED_VIEWS:
            return _VIEW_ALIASES.get(token[1:], token[1:])
    return _view_from_words(text)


def _view_from_words(text: str) -> str | None:
    """Words of a CodeMeaning ("cranio-caudal exaggerated laterally") to a view code."""
    compact = re.sub(r"[^a-z]", "", text.lower())
    if not compact:
        return None
    if "exaggerated" in compact:
        return "XCCM" if "medial" in compact else "XCCL"
    return next((view for needle, view in _VIEW_WORDS if needle in compact), None)


def _view_from_codes(ds: Dataset) -> str | None:
    """ViewCodeSequence: by SNOMED CT / SNOMED-RT code value, else by its meaning."""
    sequence = _get(ds, "ViewCodeSequence")
    if not sequence:
        return None
    item = sequence[0]
    code = _text(item, "CodeValue").upper()
    return _VIEW_CODES.get(code) or _view_from_words(_text(item, "CodeMeaning"))


def _view_from_orientation(ds: Dataset) -> str | None:
    """PatientOrientation column direction: F/H with L/R is MLO, F/H alone ML, L/R alone CC."""
    raw = _get(ds, "PatientOrientation")
    if raw is None:
        return None
    parts = [str(v) for v in raw] if isinstance(raw, (list, tuple)) or _is_multi(raw) else str(raw).split("\\")
    if len(parts) < 2:
        return None
    column = parts[1].strip().upper()
    has_foot_head = any(c in column for c in "FH")
    has_side = any(c in column for c in "LR")
    if has_foot_head and has_side:
        return "MLO"
    if has_foot_head and set(column) <= set("FH"):
        return "ML"
    if has_side and not has_foot_head:
        return "CC"
    return None


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float], str]:
    """(row, column) spacing in mm from PixelSpacing, then ImagerPixelSpacing; NaNs when unknown."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _floats(ds, keyword)
        if len(values) >= 2 and all(math.isfinite(v) and v > 0 for v in values[:2]):
            return (values[0], values[1]), keyword
    return (math.nan, math.nan), "unknown"


# -------------------------------------------------------------------------- safe tag access

def _replace(ds: Dataset, keyword: str, vr: str, value: Any) -> None:
    """Set a default or normalised value as a new element of the right VR: the file's element may
    carry a wrong one (a sequence, say) that the value cannot be assigned to."""
    ds.add_new(tag_for_keyword(keyword), vr, value)


def _get(ds: Any, keyword: str) -> Any:
    """``ds.get(keyword)`` that never raises (badly encoded values convert lazily)."""
    if ds is None:
        return None
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _is_multi(value: Any) -> bool:
    """pydicom MultiValue (a list-like that is not a str)."""
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__") and hasattr(value, "__getitem__")


def _first(value: Any) -> Any:
    """The first item of a multi-valued element (or the value itself)."""
    if _is_multi(value):
        return value[0] if len(value) else None
    return value


def _text(ds: Any, keyword: str) -> str:
    """A tag's (first) value as stripped text; "" when absent or unreadable."""
    value = _first(_get(ds, keyword))
    if value is None:
        return ""
    try:
        return str(value).strip()
    except Exception:
        return ""


def _floats(ds: Any, keyword: str) -> list[float]:
    """All values of a numeric (DS/FD/...) element as floats; [] when absent or invalid."""
    value = _get(ds, keyword)
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    items = list(value) if _is_multi(value) else [value]
    try:
        return [float(item) for item in items]
    except (TypeError, ValueError):
        return []


def _optional_int(ds: Any, keyword: str) -> int | None:
    """A tag's value as an int, None when absent or not an integer."""
    value = _first(_get(ds, keyword))
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _required_int(ds: Any, keyword: str) -> int:
    """A tag's value as an int; absent or invalid is a reason."""
    value = _optional_int(ds, keyword)
    if value is None:
        raise DicomRejected(f"missing or invalid {keyword}")
    return value
