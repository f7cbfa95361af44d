"""Which DICOM pixel decoder runs: the fastest installed backend per transfer syntax, with fallback.

pydicom decodes compressed pixel data through plugins. Left to itself it takes the first plugin
that imports, whatever its speed, and for RLE that can be its own pure-Python decoder. This module
fixes the order from measurements (``scripts/benchmark_decoders.py``, docs/benchmarks.md,
"Decoders"): for each transfer syntax an ordered list of backends, the compiled ones first and
pure Python last. A backend that raises hands over to the next; if every one fails, the reason
names each backend and its error on one line.

``decoder`` (the reader argument, or the ``MAMMOCLIP_DICOM_DECODER`` environment variable) picks:

* ``"auto"`` (default): the measured order, CPU only (identical results on every machine, and no
  CUDA context in forked DataLoader workers);
* a backend name (``"gdcm"``, ``"pylibjpeg-openjpeg"``, ...) or a comma-separated list of names:
  only those, in that order (for benchmarks and bug reports; a syntax none of them decodes is
  refused, naming them). GDCM runs only when named: it can abort the process on a corrupt
  codestream (see ``_FORCED_ONLY``);
* ``"nvimgcodec"``: nvImageCodec on the GPU first for JPEG 2000, HTJ2K and JPEG, then the
  ``"auto"`` order on any failure (no CUDA device, package missing, a codestream it refuses).

Imports numpy and pydicom only; nvImageCodec is imported on first use when it is requested.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

try:  # pydicom >= 3
    from pydicom.pixels import get_decoder as _get_decoder
    from pydicom.pixels import pixel_array as _pixel_array
except ImportError:  # pragma: no cover - pydicom 2.4
    _get_decoder = None
    _pixel_array = None

__all__ = ["AUTO", "BACKENDS", "DECODER_ENV", "NATIVE", "NVIMGCODEC", "PURE_PYTHON", "DecodeFailed",
           "backend_order", "decode", "installed_backends", "resolve_choice"]

DECODER_ENV = "MAMMOCLIP_DICOM_DECODER"
"""Environment variable that forces a decoder choice (same values as the reader's ``decoder``)."""
AUTO = "auto"
NATIVE = "native"
"""The ``decoder`` reported for uncompressed pixel data (no codec: the bytes are the pixels)."""
PURE_PYTHON = "pydicom (pure Python)"
"""The ``decoder`` reported when pydicom's own RLE decoder ran (~20x slower than pylibjpeg-rle)."""
NVIMGCODEC = "nvimgcodec"


@dataclass(frozen=True)
class Backend:
    """One decoder: the name reported in the metadata and how pydicom 3 / 2.4 call it."""

    name: str
    plugin: str  # pydicom 3 ``decoding_plugin``
    handler: str  # pydicom 2.4 pixel data handler module (``pydicom.pixel_data_handlers.<handler>``)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("pylibjpeg-rle", "pylibjpeg", "pylibjpeg_handler"),
    Backend("pylibjpeg-libjpeg", "pylibjpeg", "pylibjpeg_handler"),
    Backend("pylibjpeg-openjpeg", "pylibjpeg", "pylibjpeg_handler"),
    Backend("pyjpegls", "pyjpegls", "jpeg_ls_handler"),
    Backend("gdcm", "gdcm", "gdcm_handler"),
    Backend("pillow", "pillow", "pillow_handler"),
    Backend(PURE_PYTHON, "pydicom", "rle_handler"),
)}
"""Every CPU backend by reported name. pydicom's one "pylibjpeg" plugin dispatches by syntax to
pylibjpeg-rle, -libjpeg or -openjpeg; the name reported is the package that ran."""
_NAMES = {**{name.lower(): name for name in BACKENDS}, "pydicom": PURE_PYTHON, AUTO: AUTO,
          NVIMGCODEC: NVIMGCODEC, "gpu": NVIMGCODEC}
"""Accepted spellings (any case) -> canonical name."""

_RLE = ("1.2.840.10008.1.2.5",)
_JPEG_LOSSY = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_JPEG_LOSSLESS = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_J2K = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_HTJ2K = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")

# The measured order (docs/benchmarks.md, "Decoders"): fastest first, pure Python last.
_ORDER: dict[str, tuple[str, ...]] = {
    **{uid: ("pylibjpeg-rle", PURE_PYTHON) for uid in _RLE},
    **{uid: ("pylibjpeg-libjpeg", "pillow") for uid in _JPEG_LOSSY},
    **{uid: ("pylibjpeg-libjpeg",) for uid in _JPEG_LOSSLESS},
    **{uid: ("pyjpegls", "pylibjpeg-libjpeg") for uid in _JPEG_LS},
    **{uid: ("pylibjpeg-openjpeg", "pillow") for uid in _J2K},
    **{uid: ("pylibjpeg-openjpeg",) for uid in _HTJ2K},
}
_FORCED_ONLY = ("gdcm",)
"""Backends used only when named. GDCM (python-gdcm 3.2.6) aborts the whole process (an uncaught
C++ exception: ``terminate called``) on a JPEG 2000 codestream with a valid SIZ marker and garbage
after it, so it can never be an automatic fallback for files of unknown quality."""
_PYLIBJPEG_PACKAGE = {**{uid: "pylibjpeg-rle" for uid in _RLE},
                      **{uid: "pylibjpeg-libjpeg" for uid in _JPEG_LOSSY + _JPEG_LOSSLESS + _JPEG_LS},
                      **{uid: "pylibjpeg-openjpeg" for uid in _J2K + _HTJ2K}}
_NVIMGCODEC_SYNTAXES = frozenset(_J2K + _HTJ2K + _JPEG_LOSSY)
"""What nvImageCodec decodes from a DICOM codestream (nvJPEG2000, nvJPEG; not lossless JPEG)."""
_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class DecodeFailed(Exception):
    """No backend could decode the pixel data: ``reason`` is one line naming each backend's error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------------ choice

def resolve_choice(decoder: str | None = None) -> tuple[str, ...]:
    """The validated choice as a tuple of names: ``("auto",)``, ``("nvimgcodec", "auto")`` or the
    forced backends. ``None`` reads :data:`DECODER_ENV` (unset or empty: ``"auto"``).

    Raises:
        ValueError: an unknown name (a configuration error, not a bad file); TypeError: not a string.
    """
    source = "decoder"
    if decoder is None:
        decoder, source = os.environ.get(DECODER_ENV, "") or AUTO, DECODER_ENV
    if not isinstance(decoder, str):
        raise TypeError(f"{source} must be a string, got {decoder!r}")
    names = [part.strip() for part in decoder.split(",") if part.strip()] or [AUTO]
    out: list[str] = []
    for part in names:
        name = _NAMES.get(part.lower(), part)
        if name != AUTO and name != NVIMGCODEC and name not in BACKENDS:
            raise ValueError(f"{source}={decoder!r}: unknown decoder {part!r}; expected "
                             f"{AUTO!r}, {NVIMGCODEC!r} or a comma-separated list of {sorted(BACKENDS)}")
        if name not in out:
            out.append(name)
    if out == [NVIMGCODEC]:
        out.append(AUTO)  # the GPU path always falls back to the CPU
    return tuple(out)


def installed_backends(syntax: str, *, forced_only: bool = False) -> tuple[str, ...]:
    """The CPU backends, in the measured order, whose pydicom plugin is available for ``syntax``
    (with ``forced_only``: also those used only when named, such as GDCM)."""
    plugins = _available_plugins(UID(syntax))
    names = []
    candidates = _ORDER.get(str(syntax), ()) + (_FORCED_ONLY if forced_only and str(syntax) in _ORDER else ())
    for name in candidates:
        backend = BACKENDS[name]
        if backend.plugin == "pylibjpeg" and _PYLIBJPEG_PACKAGE.get(str(syntax)) != name:
            continue
        if backend.plugin in plugins:
            names.append(name)
    return tuple(names)


def backend_order(syntax: str, choice: Sequence[str] = (AUTO,)) -> tuple[str, ...]:
    """The backends to try for ``syntax``, in order, for a resolved ``choice``.

    A forced CPU backend that cannot decode the syntax is left out (``decode`` then says so);
    ``auto`` expands to the installed backends in the measured order.
    """
    installed = installed_backends(syntax)
    named = installed_backends(syntax, forced_only=True)
    order: list[str] = []
    for name in choice:
        if name == AUTO:
            order.extend(n for n in installed if n not in order)
        elif name == NVIMGCODEC:
            if str(syntax) in _NVIMGCODEC_SYNTAXES:
                order.append(NVIMGCODEC)
        elif name in named and name not in order:
            order.append(name)
    return tuple(order)


# ---------------------------------------------------------------------------------- decoding

def decode(ds: Dataset, syntax: str, choice: Sequence[str] = (AUTO,)) -> tuple[np.ndarray, str]:
    """Decode compressed pixel data: ``(stored values, backend name)``.

    Each backend of :func:`backend_order` is tried in turn; a failure passes to the next.

    Raises:
        DecodeFailed: no backend applies, or all failed (one line, each backend's error).
    """
    order = backend_order(syntax, choice)
    if not order:
        raise DecodeFailed(_nothing_applies(syntax, choice))
    failures = []
    for name in order:
        try:
            pixels = _nvimgcodec_decode(ds) if name == NVIMGCODEC else _cpu_decode(ds, BACKENDS[name])
            return np.asarray(pixels), name
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - any backend error, a Rust panic too: try the next
            failures.append((name, exc))  # (pylibjpeg-rle's PanicException is not an Exception)
    raise DecodeFailed("; ".join(f"{name} ({type(exc).__name__}: {_detail(exc)})" for name, exc in failures))


def _nothing_applies(syntax: str, choice: Sequence[str]) -> str:
    installed = installed_backends(syntax, forced_only=True)
    forced = ", ".join(n for n in choice if n != AUTO)
    return (f"the forced decoder ({forced}) cannot decode this transfer syntax "
            f"(installed for it: {', '.join(installed) or 'none'})")


def _detail(exc: BaseException) -> str:
    return _MEMORY_ADDRESS.sub("", " ".join(str(exc).split()))[:160]


def _cpu_decode(ds: Dataset, backend: Backend) -> np.ndarray:
    """One pydicom plugin, by name (pydicom 3), or one pixel data handler (pydicom 2.4)."""
    if _pixel_array is not None:
        if backend.name == "pylibjpeg-rle":
            with _silent_stderr():
                return _pixel_array(ds, decoding_plugin=backend.plugin)
        return _pixel_array(ds, decoding_plugin=backend.plugin)
    return _decode_with_handler(ds, backend.handler)  # pragma: no cover - pydicom 2.4


_STDERR_LOCK = threading.Lock()


@contextmanager
def _silent_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for one call.

    pylibjpeg-rle 2.2 (Rust) panics on some corrupt RLE segments instead of raising; the panic is
    caught (the next backend runs), but Rust's panic hook has already printed its message (and a
    backtrace under RUST_BACKTRACE) to stderr. While the call runs, stderr writes of other threads
    of this process are dropped too (DataLoader workers are processes: each has its own).
    """
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        yield
        return
    with _STDERR_LOCK:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, 2)
            finally:
                os.close(null)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _decode_with_handler(ds: Dataset, handler: str) -> np.ndarray:  # pragma: no cover - pydicom 2.4
    """pydicom 2.4: run exactly one handler (``convert_pixel_data(name)`` would not fall back)."""
    import importlib

    module = importlib.import_module(f"pydicom.pixel_data_handlers.{handler}")
    syntax = ds.file_meta.TransferSyntaxUID
    if not (module.is_available() and module.supports_transfer_syntax(syntax)):
        raise RuntimeError(f"the pydicom 2.4 handler {handler} cannot decode this syntax here")
    return _reshaped(ds, module.get_pixeldata(ds))


def _reshaped(ds: Dataset, flat: np.ndarray) -> np.ndarray:  # pragma: no cover - pydicom 2.4
    from pydicom.pixel_data_handlers.util import reshape_pixel_array

    return np.asarray(reshape_pixel_array(ds, flat))


def _available_plugins(syntax: UID) -> frozenset[str]:
    """pydicom plugin names available for ``syntax`` (pydicom 2.4: handler names mapped back)."""
    if _get_decoder is not None:
        try:
            return frozenset(_get_decoder(syntax).available_plugins)
        except (NotImplementedError, ValueError, KeyError):
            return frozenset()
    found = set()  # pragma: no cover - pydicom 2.4
    for backend in BACKENDS.values():
        try:
            import importlib

            module = importlib.import_module(f"pydicom.pixel_data_handlers.{backend.handler}")
            if module.is_available() and module.supports_transfer_syntax(syntax):
                found.add(backend.plugin)
        except Exception:  # noqa: BLE001, S112 - a handler that fails to import is not available
            continue
    return frozenset(found)


# ------------------------------------------------------------------------------ nvImageCodec

_GPU_LOCK = threading.Lock()
_GPU_STATE: dict[str, Any] = {}


def _nvimgcodec_decoder() -> Any:
    """One nvImageCodec decoder per process, made on first use; the reason it cannot be, cached."""
    with _GPU_LOCK:
        if "decoder" in _GPU_STATE:
            return _GPU_STATE["decoder"]
        if "error" in _GPU_STATE:
            raise RuntimeError(_GPU_STATE["error"])
        try:
            from nvidia import nvimgcodec  # optional: pip install mammoclip-monai[gpu]

            decoder = nvimgcodec.Decoder()  # raises without a CUDA device
            params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.UNCHANGED, allow_any_depth=True)
        except Exception as exc:  # no CUDA device, missing libraries: the CPU decodes
            _GPU_STATE["error"] = f"nvImageCodec unavailable: {type(exc).__name__}: {_detail(exc)}"
            raise RuntimeError(_GPU_STATE["error"]) from exc
        _GPU_STATE["decoder"] = (decoder, params)
        return _GPU_STATE["decoder"]


def _nvimgcodec_decode(ds: Dataset, decoder_factory: Callable[[], Any] | None = None) -> np.ndarray:
    """Decode the single frame's codestream on the GPU, copy it to the host, type it as pydicom
    would (``(Rows, Columns)``, unsigned or signed by PixelRepresentation)."""
    decoder, params = (decoder_factory or _nvimgcodec_decoder)()
    stream = _single_frame(ds)
    image = decoder.decode(stream, params=params)
    if image is None:
        raise RuntimeError("nvImageCodec could not decode the codestream")
    host = np.asarray(image.cpu())
    rows, columns = int(ds.Rows), int(ds.Columns)
    if host.size != rows * columns:
        raise RuntimeError(f"nvImageCodec returned shape {host.shape}, expected ({rows}, {columns})")
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    bits = int(ds.BitsAllocated)
    dtype = np.dtype(f"{'i' if signed else 'u'}{max(1, bits // 8)}")
    pixels = host.reshape(rows, columns)
    if pixels.dtype != dtype:
        pixels = pixels.view(dtype) if pixels.dtype.itemsize == dtype.itemsize else pixels.astype(dtype)
    return pixels


def _single_frame(ds: Dataset) -> bytes:
    """The one frame's codestream (the reader has already refused multi-frame images)."""
    if hasattr(pydicom.encaps, "generate_frames"):
        frames = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    else:  # pragma: no cover - pydicom 2.4
        frames = pydicom.encaps.generate_pixel_data_frame(ds.PixelData, 1)
    return bytes(next(iter(frames)))
