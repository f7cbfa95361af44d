"""Read one mammogram (DICOM, PNG, JPEG or TIFF) into a display-ready grey-scale array.

The public entry point is :func:`read_mammogram`; every problem with the input file surfaces as a
:class:`MammogramReadError` that names the file and the reason and nothing else (no header value
that could identify a patient). The conventions (orientation, intensity range, metadata keys) are
those of ``docs/data_formats.md``.

Every file is opened once: its magic bytes, its parse and, after a successful read, the content
hash in the metadata all come from the same open file. A declared image size is checked against
``max_pixels`` before anything of that size is allocated (``docs/data_formats.md``, "Reading").

Only numpy and Pillow are imported here; pydicom is imported when a DICOM file is read, so PNG
datasets work in environments without it. Neither module imports torch or MONAI.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from typing import Any, BinaryIO

import numpy as np

from ..utils.errors import DEFAULT_MAX_PIXELS, NOT_SUPPORTED, MammogramReadError, read_error

__all__ = ["DEFAULT_MAX_PIXELS", "VOI_MODES", "MammogramReadError", "image_hash", "read_error", "read_mammogram"]

HASH_CHUNK_BYTES = 1 << 20
"""``image_hash`` reads the file in pieces of this size: constant memory whatever the file size."""

VOI_MODES = ("auto", "lut", "window", "minmax", "range")
"""Accepted values of ``voi``: how stored DICOM values are mapped to ``[0, 1]``."""

_DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic", ""})
_RASTER_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
_RASTER_FORMATS = ["PNG", "JPEG", "TIFF"]
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def image_hash(path: str | os.PathLike[str]) -> str:
    """The file's content hash: the first 16 hex digits of SHA-256 of all its bytes, as stored.

    Names an image without naming anyone, and is the same for a copy of the file anywhere (a cache
    key); one changed byte changes it. Read in ``HASH_CHUNK_BYTES`` pieces (constant memory).
    ``read_mammogram`` puts the same value into ``meta["image_hash"]`` from the file it read.
    """
    with open(os.fspath(path), "rb") as handle:
        return _content_hash(handle)


def _content_hash(handle: BinaryIO) -> str:
    """SHA-256 of every byte of an open binary file, from its start; 16 hex digits."""
    handle.seek(0)
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buffer)
    while True:
        count = handle.readinto(buffer)
        if not count:
            break
        digest.update(view[:count])
    return digest.hexdigest()[:16]


def read_mammogram(
    path: str | os.PathLike[str],
    *,
    voi: str = "auto",
    window_index: int = 0,
    allow_any_modality: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decoder: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a mammogram as a C-contiguous float32 ``(H, W)`` array in ``[0, 1]`` plus metadata.

    Higher values are brighter whatever the photometric interpretation; rows are DICOM Rows as a
    viewer shows them (nothing is transposed). ``voi`` picks how DICOM values map to ``[0, 1]``
    (``"auto"``: VOI LUT, else window, else min-max; or force ``"lut"``, ``"window"``,
    ``"minmax"``, ``"range"``); ``window_index`` selects among several windows or VOI LUTs (an
    index that does not exist falls back to the first). Non-MG DICOM files are refused unless
    ``allow_any_modality``. An image that declares more than ``max_pixels`` pixels (rows x
    columns x samples; DICOM pixel data also at most 2 bytes per capped pixel), or more than its
    bytes can hold, is refused before it is decoded, so a corrupt or hostile header cannot exhaust
    memory (default :data:`DEFAULT_MAX_PIXELS`; docs/data_formats.md, "Reading"). ``decoder``
    picks the DICOM pixel decoder (``"auto"``, ``"nvimgcodec"``, or backend names:
    data/decoders.py; ``None``: the ``MAMMOCLIP_DICOM_DECODER`` environment variable, else
    ``"auto"``); the metadata's ``decoder`` says which one ran.

    Raises:
        MammogramReadError: for any problem with the file (never another exception type).
        ValueError: for an invalid ``voi``, ``window_index``, ``max_pixels`` or ``decoder`` (a
            caller bug, raised before the file is read).
    """
    _check_arguments(voi, window_index, max_pixels)
    _check_decoder(decoder)
    name = os.fsdecode(path)
    try:
        image, header, digest = _dispatch(name, voi=voi, window_index=int(window_index),
                                          allow_any_modality=bool(allow_any_modality),
                                          max_pixels=int(max_pixels), decoder=decoder)
        image = _finalise(image)
        meta = _assemble_meta(name, image, header, digest)
    except MammogramReadError:
        raise
    except Exception as exc:  # final guard: callers only ever see MammogramReadError
        raise MammogramReadError(name, f"unexpected error while reading ({type(exc).__name__})") from exc
    return image, meta


def _check_arguments(voi: str, window_index: int, max_pixels: int) -> None:
    """Reject invalid options early: they are programming errors, not bad files."""
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    if isinstance(window_index, bool) or not isinstance(window_index, (int, np.integer)):
        raise ValueError(f"window_index must be an int, got {window_index!r}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")


def _check_decoder(decoder: str | None) -> None:
    """Validate a requested DICOM decoder (argument or environment) before any file is read;
    pydicom is imported only when one is requested."""
    if decoder is None and not os.environ.get("MAMMOCLIP_DICOM_DECODER"):
        return
    try:
        from mammoclip_monai.data.decoders import resolve_choice
    except ImportError:  # no pydicom: DICOM files are refused with their own reason
        return
    resolve_choice(decoder)


def _dispatch(path: str, *, voi: str, window_index: int, allow_any_modality: bool, max_pixels: int,
              decoder: str | None = None) -> tuple[np.ndarray, dict[str, Any], str]:
    """Open the file once: decide its format from its magic bytes (then its extension), read it,
    and hash the same open file's bytes (only after a successful read: refusals cost no hash)."""
    if not os.path.exists(path):
        raise MammogramReadError(path, "file not found")
    if not os.path.isfile(path):
        raise MammogramReadError(path, "not a regular file")
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise MammogramReadError(path, f"cannot open the file ({type(exc).__name__})") from exc
    with handle:
        kind = _sniff(path, _read_head(path, handle))
        if kind == "dicom":
            image, header = _read_dicom(path, handle, voi=voi, window_index=window_index,
                                        allow_any_modality=allow_any_modality, max_pixels=max_pixels,
                                        decoder=decoder)
        elif kind == "raster":
            image, header = read_raster(path, handle, max_pixels=max_pixels)
        else:
            raise MammogramReadError(path, NOT_SUPPORTED)
        try:
            digest = _content_hash(handle)
        except OSError as exc:
            raise MammogramReadError(path, f"cannot read the file ({type(exc).__name__})") from exc
    return image, header, digest


def _read_head(path: str, handle: BinaryIO) -> bytes:
    """The first 132 bytes (DICOM preamble and magic), the handle left at the start."""
    try:
        head = handle.read(132)
        handle.seek(0)
    except OSError as exc:
        raise MammogramReadError(path, f"cannot read the file ({type(exc).__name__})") from exc
    return head


def _sniff(path: str, head: bytes) -> str | None:
    """Return "dicom", "raster" or None; magic bytes win over the extension."""
    if not head:
        raise MammogramReadError(path, f"{NOT_SUPPORTED} (empty file)")
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_SIGNATURE) or head.startswith(b"\xff\xd8\xff") or head[:4] in _TIFF_SIGNATURES:
        return "raster"
    extension = os.path.splitext(path)[1].lower()
    # UID-style names ("1.2.840....7") end in a numeric "extension": those are DICOM candidates too.
    if extension in _DICOM_EXTENSIONS or extension[1:].isdigit():
        return "dicom"
    if extension in _RASTER_EXTENSIONS:
        return "raster"
    return None


def _read_dicom(path: str, handle: BinaryIO, *, voi: str, window_index: int, allow_any_modality: bool,
                max_pixels: int, decoder: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Delegate to the DICOM module, turning its rejections into MammogramReadError."""
    try:
        from mammoclip_monai.data import dicom
    except ImportError as exc:  # pydicom missing: say what to install
        raise MammogramReadError(path, "reading DICOM needs pydicom (pip install pydicom)") from exc
    try:
        return dicom.read_dicom(handle, voi=voi, window_index=window_index,
                                allow_any_modality=allow_any_modality, max_pixels=max_pixels,
                                decoder=decoder)
    except dicom.DicomRejected as exc:
        raise MammogramReadError(path, exc.reason) from exc.__cause__


# ----------------------------------------------------------------------------------- raster files

def read_raster(path: str, handle: BinaryIO | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an 8/16-bit grey PNG, JPEG or TIFF, dividing by the range of its pixel type.

    ``handle`` is the open file (``path`` names it in messages; opened here when None). The size
    the file declares is checked against ``max_pixels`` before Pillow decodes anything.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns from 2**28 / 3 pixels on: our cap decides, its warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle if handle is not None else path, formats=_RASTER_FORMATS) as img:
                if int(getattr(img, "n_frames", 1)) > 1:
                    raise MammogramReadError(path, f"multi-frame image ({img.n_frames} frames) is not supported")
                _check_raster_size(path, img, max_pixels)
                img.load()
                image, bits = _raster_to_grey(path, img)
    except MammogramReadError:
        raise
    except UnidentifiedImageError as exc:
        raise MammogramReadError(path, NOT_SUPPORTED) from exc
    except Image.DecompressionBombError as exc:
        # Pillow refuses more than 2 * PIL.Image.MAX_IMAGE_PIXELS at open, before our check can run.
        raise MammogramReadError(
            path, f"image declares more than {2 * int(Image.MAX_IMAGE_PIXELS or 0)} pixels, Pillow's own limit "
                  f"(PIL.Image.MAX_IMAGE_PIXELS); the reader's cap is {max_pixels} (max_pixels)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MammogramReadError(path, f"truncated or corrupt image file ({type(exc).__name__})") from exc
    header = {
        "laterality": "unknown", "view": "unknown",
        "pixel_spacing": (math.nan, math.nan), "spacing_source": "unknown",
        "bits_stored": bits, "photometric_interpretation": "MONOCHROME2",
        "voi": "range", "inverted": False, "modality": "unknown", "manufacturer": "",
        "decoder": "pillow",
    }
    return image, header


def _check_raster_size(path: str, img: Any, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` values (pixels x bands)."""
    width, height = (int(v) for v in img.size)
    bands = len(img.getbands())
    declared = width * height * bands
    if declared > max_pixels:
        raise MammogramReadError(
            path, f"image too large: it declares {height} rows x {width} columns x {bands} band(s) = "
                  f"{declared} values, over the cap of {max_pixels} (max_pixels)")


def _raster_to_grey(path: str, img: Any) -> tuple[np.ndarray, int]:
    """Return (float32 image in [0, 1], bits) for a loaded Pillow image; colour is an error."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.float32), 8
    if mode.startswith("I;16"):
        return _scale_integer(path, np.asarray(img), 65535.0), 16
    if mode == "I":
        return _scale_int32(path, np.asarray(img)), 16
    if mode == "F":
        return _scale_float(path, np.asarray(img, dtype=np.float32)), 16
    if mode == "L":
        return _scale_integer(path, np.asarray(img), 255.0), 8
    if mode in ("LA", "La"):
        return _scale_integer(path, np.asarray(img.getchannel("L")), 255.0), 8
    return _scale_integer(path, _grey_from_colour(path, img), 255.0), 8


def _grey_from_colour(path: str, img: Any) -> np.ndarray:
    """Accept an RGB(A)/palette image only when its three colour channels are identical."""
    try:
        rgb = np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise MammogramReadError(path, f"unsupported image mode {img.mode!r}") from exc
    red = rgb[..., 0]
    if not (np.array_equal(red, rgb[..., 1]) and np.array_equal(red, rgb[..., 2])):
        raise MammogramReadError(path, f"colour image (mode {img.mode}) is not supported; a mammogram is grey-scale")
    return red


def _scale_integer(path: str, pixels: np.ndarray, top: float) -> np.ndarray:
    """Unsigned integer pixels divided by their type's maximum."""
    if pixels.dtype.kind not in "ub":
        raise MammogramReadError(path, f"unsupported pixel type {pixels.dtype}")
    image = pixels.astype(np.float32)
    image /= np.float32(top)
    return image


def _scale_int32(path: str, pixels: np.ndarray) -> np.ndarray:
    """Pillow's 32-bit mode "I" usually holds 16-bit data: accept it only within 0..65535."""
    if pixels.size and (int(pixels.min()) < 0 or int(pixels.max()) > 65535):
        raise MammogramReadError(path, "32-bit integer image with values outside 0..65535 is not supported")
    image = pixels.astype(np.float32)
    image /= np.float32(65535.0)
    return image


def _scale_float(path: str, pixels: np.ndarray) -> np.ndarray:
    """Float images: [0, 1] is kept, [0, 65535] is taken as 16-bit data; anything else is refused."""
    if not np.isfinite(pixels).all():
        raise MammogramReadError(path, "non-finite values in a floating-point image")
    low = float(pixels.min()) if pixels.size else 0.0
    high = float(pixels.max()) if pixels.size else 0.0
    if low < 0.0 or high > 65535.0:
        raise MammogramReadError(path, "floating-point image with values outside 0..65535 is not supported")
    image = np.array(pixels, dtype=np.float32, copy=True)
    if high > 1.0:
        image /= np.float32(65535.0)
    return image


# ------------------------------------------------------------------------------------ common tail

def _finalise(image: np.ndarray) -> np.ndarray:
    """C-contiguous float32, non-empty. Both readers already produce [0, 1]: no extra pass here."""
    if image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"internal: expected a non-empty 2-D image, got shape {image.shape}")
    return np.ascontiguousarray(image, dtype=np.float32)


def _assemble_meta(path: str, image: np.ndarray, header: dict[str, Any], digest: str) -> dict[str, Any]:
    """The contract's metadata: exactly these keys, in this order, copied from an allow-list."""
    return {
        "filename_or_obj": path,
        "image_hash": digest,
        "laterality": str(header["laterality"]),
        "view": str(header["view"]),
        "pixel_spacing": (float(header["pixel_spacing"][0]), float(header["pixel_spacing"][1])),
        "spacing_source": str(header["spacing_source"]),
        "bits_stored": int(header["bits_stored"]),
        "photometric_interpretation": str(header["photometric_interpretation"]),
        "voi": str(header["voi"]),
        "inverted": bool(header["inverted"]),
        "modality": str(header["modality"]),
        "manufacturer": str(header["manufacturer"]),
        "spatial_shape": (int(image.shape[0]), int(image.shape[1])),
        "decoder": str(header.get("decoder", "unknown")),
    }
