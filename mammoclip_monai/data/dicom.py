"""DICOM decoding, the grey-scale pipeline of DICOM PS3.3 C.11, and allow-listed header parsing.

Use :func:`mammoclip_monai.data.reader.read_mammogram`; this module raises :class:`DicomRejected`
(a reason without a path) which the reader turns into ``MammogramReadError``.

Works with pydicom 2.4 (forced by MONAI Label) and 3.x: the few APIs that moved are feature-
detected. Imports numpy and pydicom only. Nothing from the header leaves this module except the
allow-listed metadata of ``docs/data_formats.md``; pydicom's own warnings and log records (which
may quote header values) are silenced while a file is read.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from mammoclip_monai.data.reader import NOT_SUPPORTED

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut as _pydicom_modality_lut
    from pydicom.pixels import get_decoder as _get_decoder
except ImportError:  # pydicom 2.4
    from pydicom.pixel_data_handlers.util import apply_modality_lut as _pydicom_modality_lut

    _get_decoder = None

__all__ = ["DicomRejected", "read_dicom", "greyscale", "modality_values", "header_metadata"]

NO_PIXEL_DATA = "no pixel data (not an image object, or a truncated file)"
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"

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


_pydicom_logger = logging.getLogger("pydicom")
if not any(isinstance(f, _DropWhileReading) for f in _pydicom_logger.filters):
    _pydicom_logger.addFilter(_DropWhileReading())


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records: they can quote header values (privacy rule).

    ``warnings.catch_warnings`` is process-global on Python < 3.14; DataLoader workers are
    processes, so this only matters for threaded readers, where a warning may slip through.
    """
    previous = getattr(_quiet_state, "active", False)
    _quiet_state.active = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _quiet_state.active = previous


# -------------------------------------------------------------------------------- entry point

def read_dicom(path: str, *, voi: str = "auto", window_index: int = 0,
               allow_any_modality: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one grey-scale DICOM image; return the [0, 1] image and the allow-listed header facts."""
    with _quiet_pydicom():
        ds = _read_dataset(path)
        geometry = _check_dataset(ds, allow_any_modality)
        pixels = _decode(ds, geometry)
        image, voi_used, inverted = greyscale(pixels, ds, voi=voi, window_index=window_index)
        header = header_metadata(ds)
    header.update(bits_stored=geometry.bits_stored, photometric_interpretation=geometry.photometric,
                  voi=voi_used, inverted=inverted)
    return image, header


def _read_dataset(path: str) -> Dataset:
    """Parse the file; files without the DICM preamble are retried with ``force=True``."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    except Exception as exc:  # pydicom parse errors, truncated headers
        raise DicomRejected(f"unreadable DICOM file ({type(exc).__name__})") from exc
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise DicomRejected(NOT_SUPPORTED) from exc
    # A forced read accepts almost anything, so demand an image before believing it.
    if _pixel_keyword(ds) is None:
        raise DicomRejected(NO_PIXEL_DATA if _looks_like_dicom(ds) else NOT_SUPPORTED)
    return ds


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

def _check_dataset(ds: Dataset, allow_any_modality: bool) -> _Geometry:
    """Refuse what is not one grey-scale frame of a supported modality, cheapest checks first."""
    keyword = _pixel_keyword(ds)
    if keyword is None:
        raise DicomRejected(NO_PIXEL_DATA)
    _check_modality(ds, allow_any_modality)
    rows, columns = _required_int(ds, "Rows"), _required_int(ds, "Columns")
    if rows <= 0 or columns <= 0:
        raise DicomRejected(f"image has a zero dimension (Rows {rows}, Columns {columns})")
    photometric = _check_grey(ds)
    _check_single_frame(ds)
    bits_allocated, bits_stored = _check_bits(ds)
    geometry = _Geometry(rows, columns, bits_allocated, bits_stored, photometric, keyword,
                         _transfer_syntax(ds, keyword))
    _check_decodable(ds, geometry)
    return geometry


def _check_modality(ds: Dataset, allow_any_modality: bool) -> None:
    """Only MG by default; the message names the modality so the caller knows what was refused."""
    modality = _text(ds, "Modality").upper()
    if modality != "MG" and not allow_any_modality:
        shown = repr(modality[:16]) if modality else "missing"
        raise DicomRejected(f"modality {shown} is not MG (pass allow_any_modality=True to read it)")


def _check_grey(ds: Dataset) -> str:
    """One sample per pixel and MONOCHROME1/2; a missing interpretation of 1 sample is MONOCHROME2."""
    samples = _optional_int(ds, "SamplesPerPixel")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if not photometric and samples in (None, 1):
        photometric = "MONOCHROME2"
        ds.PhotometricInterpretation = photometric
    if samples is None and photometric in MONOCHROME:
        samples = 1
        ds.SamplesPerPixel = 1
    if samples != 1 or photometric not in MONOCHROME:
        raise DicomRejected(
            f"colour image (PhotometricInterpretation {photometric[:16] or 'missing'}, "
            f"SamplesPerPixel {samples}) is not supported; a mammogram is grey-scale")
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
        ds.BitsStored = allocated
    if not 1 <= stored <= allocated:
        raise DicomRejected(f"invalid BitsStored {stored} (BitsAllocated {allocated})")
    if _optional_int(ds, "PixelRepresentation") is None:
        ds.PixelRepresentation = 0
    return allocated, stored


def _transfer_syntax(ds: Dataset, keyword: str) -> UID:
    """The file's transfer syntax; for files without one, the encoding pydicom read them with."""
    meta = getattr(ds, "file_meta", None)
    uid = _text(meta, "TransferSyntaxUID") if meta is not None else ""
    if uid:
        return UID(uid)
    if keyword == "PixelData" and _is_encapsulated(ds):
        raise DicomRejected("compressed pixel data without a transfer syntax")
    implicit, little = _original_encoding(ds)
    if little is None or implicit is None or (implicit and not little):
        raise DicomRejected("missing transfer syntax")
    uid = _IMPLICIT_LE if implicit else (_EXPLICIT_LE if little else _EXPLICIT_BE)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(uid)
    return UID(uid)


def _original_encoding(ds: Dataset) -> tuple[bool | None, bool | None]:
    """(implicit VR, little endian) as read: ``original_encoding`` in 3.x, ``read_*`` in 2.4."""
    encoding = getattr(ds, "original_encoding", None)
    if encoding is not None:
        return encoding[0], encoding[1]
    return getattr(ds, "read_implicit_vr", None), getattr(ds, "read_little_endian", None)


def _is_encapsulated(ds: Dataset) -> bool:
    """Encapsulated (compressed) pixel data starts with an Item tag."""
    value = ds.PixelData
    return isinstance(value, (bytes, bytearray)) and value[:4] in (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")


def _check_decodable(ds: Dataset, geometry: _Geometry) -> None:
    """Native data must be complete; compressed data needs an installed decoder."""
    syntax = geometry.transfer_syntax
    if not _known_transfer_syntax(syntax):
        raise DicomRejected(f"unsupported transfer syntax {str(syntax)[:64]}")
    if syntax.is_compressed:
        if not _decoder_available(syntax):
            raise DicomRejected(
                f"no decoder installed for transfer syntax {_syntax_name(syntax)!r}; "
                f"install one: pip install {_DECODER_HINTS.get(str(syntax), 'pylibjpeg')}")
        return
    value = ds[geometry.keyword].value
    expected = (geometry.rows * geometry.columns * geometry.bits_allocated + 7) // 8
    if isinstance(value, (bytes, bytearray)) and len(value) < expected:
        raise DicomRejected(f"truncated pixel data ({len(value)} of {expected} bytes)")


def _known_transfer_syntax(syntax: UID) -> bool:
    """pydicom knows how the syntax is encoded (private syntaxes are not)."""
    try:
        return bool(syntax.is_transfer_syntax)
    except Exception:
        return False


def _decoder_available(syntax: UID) -> bool:
    """pydicom 3: ``get_decoder(ts).is_available``; pydicom 2.4: any available handler that supports it."""
    if _get_decoder is not None:
        try:
            return bool(_get_decoder(syntax).is_available)
        except (NotImplementedError, ValueError, KeyError):
            return False
    for handler in getattr(pydicom.config, "pixel_data_handlers", []):
        try:
            if handler.supports_transfer_syntax(syntax) and handler.is_available():
                return True
        except Exception:
            continue
    return False


def _syntax_name(syntax: UID) -> str:
    """Human name of a transfer syntax (pydicom 2.4 lacks names for the newest ones)."""
    return str(getattr(syntax, "name", "") or syntax)


# ----------------------------------------------------------------------------------- decoding

def _decode(ds: Dataset, geometry: _Geometry) -> np.ndarray:
    """Stored values as a (Rows, Columns) array; every decoder failure becomes a reason."""
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise DicomRejected(_decode_failure(geometry.transfer_syntax, exc)) from exc
    if pixels.shape != (geometry.rows, geometry.columns):
        raise DicomRejected(
            f"decoded pixel data has shape {pixels.shape}, expected ({geometry.rows}, {geometry.columns})")
    return pixels


def _decode_failure(syntax: UID, exc: Exception) -> str:
    """Say what failed and, for compressed data, which decoder to try."""
    detail = " ".join(str(exc).split())[:240]
    if "less than expected" in detail or "truncat" in detail.lower():
        return f"truncated pixel data ({detail})"
    if syntax.is_compressed:
        hint = _DECODER_HINTS.get(str(syntax), "pylibjpeg")
        return (f"could not decode the {_syntax_name(syntax)!r} pixel data ({type(exc).__name__}: {detail}); "
                f"another decoder may help: pip install {hint}")
    return f"could not decode the pixel data ({type(exc).__name__}: {detail})"


# ------------------------------------------------------------------------ grey-scale pipeline

def greyscale(pixels: np.ndarray, ds: Dataset, *, voi: str = "auto", window_index: int = 0
              ) -> tuple[np.ndarray, str, bool]:
    """Stored values -> modality LUT -> VOI -> [0, 1] -> inversion (PS3.3 C.11), all in float32.

    Returns ``(image, voi_used, inverted)``. The inversion is folded into the VOI mapping (a
    descending ramp, a negated sigmoid, an inverted table), so it costs no pass over the image.
    An image the VOI leaves flat (window width <= 0, all values equal) is all zeros, not inverted.
    """
    invert = needs_inversion(ds)
    item = _voi_lut_item(ds, window_index) if voi in ("auto", "lut") else None
    if voi == "lut" and item is None:
        raise DicomRejected("voi='lut' but the file has no usable VOI LUT Sequence")
    with np.errstate(all="ignore"):
        if item is not None:
            image, flat = _voi_lut_pipeline(pixels, ds, item, invert)
            voi_used = "lut"
        else:
            values, nominal = modality_values(pixels, ds)
            image, voi_used, flat = _apply_voi(values, ds, voi, window_index, nominal, invert)
        if flat:
            return np.zeros(pixels.shape, dtype=np.float32), voi_used, False
        np.clip(image, 0.0, 1.0, out=image)
    return image, voi_used, invert


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
        return np.take(per_stored, pixels.view(unsigned)), False
    values, _ = modality_values(pixels, ds)
    return np.take(table, _lut_index(values, first, table.size)), False


def _lut_index(values: np.ndarray, first: int, entries: int) -> np.ndarray:
    """LUT indices: below the first mapped value -> 0, beyond the last entry -> the last."""
    values -= np.float32(first)
    np.clip(values, 0, entries - 1, out=values)
    return values.astype(np.intp)


def _voi_lut_table(item: Dataset, ds: Dataset, invert: bool) -> tuple[np.ndarray | None, int]:
    """(float32 table already in [0, 1] and inverted if asked, first mapped value); None if flat."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # PS3.3 C.11.2.1.1: 0 means 2**16 entries
    if first >= 2 ** 15 and _optional_int(ds, "PixelRepresentation") == 1:
        first -= 2 ** 16  # signed first-mapped value read through an unsigned VR
    data = _lut_data(item, entries, ds)
    entries = min(entries, data.size)
    if entries == 0:
        raise DicomRejected("empty VOI LUT")
    data = data[:entries]
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
