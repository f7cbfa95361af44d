"""The project's error convention: which errors name a bad input, and the exit codes of every command.

Two kinds of bad input, two exception types, one message shape (``"<file>: <reason>"``):

- :class:`MammogramReadError`: one image cannot be read. Per-input:
  a batch reports it and goes on.
- :class:`InvalidInputError`: a file that configures a run (prompt file, model directory, FActOR
  weights, a datalist CSV) is not what it must be. The run cannot start; the message names the
  file, where in it (key, row, column) and what was expected.

Both subclass ``ValueError``. :class:`UsageError` covers runs that cannot start as asked (nothing
to do, an output folder holding another run). Exit codes shared by ``mammoclip`` and bundle runs
(:func:`exit_code`): 0 all done, 1 some inputs failed, 2 nothing done (usage, no inputs, invalid
configuring file), 3 an internal error.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from types import TracebackType
from typing import Any

__all__ = ["MammogramReadError", "read_error", "NOT_SUPPORTED", "DEFAULT_MAX_PIXELS", "InvalidInputError", "UsageError",
           "NoInputsError", "InputsFailedError", "as_flag", "EXIT_OK",
           "EXIT_FAILED_INPUTS", "EXIT_USAGE", "EXIT_INTERNAL", "user_error", "exit_code", "one_line",
           "brief_errors", "format_traceback"]

EXIT_OK = 0
"""Every input was processed."""
EXIT_FAILED_INPUTS = 1
"""Some inputs failed (each listed with its reason); the others were processed."""
EXIT_USAGE = 2
"""Nothing was done: a usage error, nothing to do (no such path, an empty folder), or an invalid
prompt / model / FActOR / CSV file."""
EXIT_INTERNAL = 3
"""An unexpected error (a bug): one line, and the traceback with ``--verbose``."""


# -- reading one image ---------------------------------------------------------------------------

DEFAULT_MAX_PIXELS = 2**26
"""Default ``max_pixels``: 8192 x 8192 = 67,108,864 pixels. The largest real mammograms are well
inside (Fujifilm Amulet 4728 x 5928 = 28.0 M, digitised DDSM film up to about 7000 x 5000 = 35 M,
Hologic 3328 x 4096 = 13.6 M), and an image at the cap needs 256 MiB as float32, so a bad header
cannot make one read ask for gigabytes. Raise it per call for larger digitised film."""

NOT_SUPPORTED = "not a DICOM or supported image file"
"""The reason given for any file that is neither DICOM nor a PNG/JPEG/TIFF image."""


class MammogramReadError(ValueError):
    """A mammogram could not be read: names the file and the reason, never a header value.

    ``str(err) == f"{path}: {reason}"``. Subclasses ``ValueError`` so callers that already catch
    bad values keep working.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fsdecode(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the two-argument constructor working across processes (DataLoader workers).
        return (type(self), (self.path, self.reason))


def read_error(err: BaseException) -> MammogramReadError | None:
    """The reader's error behind ``err`` (MONAI wraps a transform's exception in a ``RuntimeError``), or ``None``."""
    seen: set[int] = set()
    while err is not None and not isinstance(err, MammogramReadError) and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err if isinstance(err, MammogramReadError) else None


# -- configuring files and usage ------------------------------------------------------------------


class InvalidInputError(ValueError):
    """A configuring input file is invalid: ``str(err) == "<path>: [<where>: ]<reason>"``.

    ``where`` locates the problem inside the file (``"key 'mass'"``, ``"row 7, column 'xmin'"``);
    ``reason`` says what was found and what was expected. Never put header values that could
    identify a patient into either.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, where: str | None = None) -> None:
        self.path = os.fsdecode(path)
        self.where = where
        self.reason = reason
        super().__init__(f"{self.path}: {where}: {reason}" if where else f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason, self.where))


class UsageError(Exception):
    """The run cannot do what it was asked: nothing to do, an output folder that holds another run."""


class NoInputsError(UsageError, FileNotFoundError):
    """No input to process: a path that does not exist, an empty folder or datalist (nothing was done)."""


class InputsFailedError(Exception):
    """Some inputs failed and the caller asked for that to be an error (``fail_on_errors``): exit 1."""


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def as_flag(value: Any, name: str) -> bool:
    """A yes/no setting as a bool, whatever form it arrives in; anything else is a :class:`UsageError`.

    ``python -m monai.bundle run ... --overwrite false`` hands the *string* ``"false"`` to the config
    (Fire parses only ``False`` as a bool), and ``bool("false")`` is ``True``: every flag a user can set
    goes through here so that ``false`` means false.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise UsageError(f"--{name} must be true or false, got {value!r}")


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes / contexts, outermost first (MONAI wraps a transform's error in RuntimeError)."""
    seen: list[BaseException] = []
    while err is not None and all(err is not other for other in seen):
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def user_error(err: BaseException) -> BaseException | None:
    """The error behind ``err`` that describes a bad input or a usage mistake, or ``None`` for a bug.

    """
    for item in _chain(err):
        if isinstance(item, (MammogramReadError, InvalidInputError, UsageError, InputsFailedError)):
            return item
    return None


def exit_code(err: BaseException) -> int:
    """The convention's exit code for an exception that ends a run."""
    found = user_error(err)
    if found is None:
        return EXIT_INTERNAL
    return EXIT_FAILED_INPUTS if isinstance(found, InputsFailedError) else EXIT_USAGE


def one_line(err: BaseException) -> str:
    """The message of ``err`` (or of the user error behind it) on one line."""
    found = user_error(err) or err
    text = " ".join(str(found).split())
    return text or type(found).__name__


def brief_errors(verbose: bool = False, prog: str = "mammoclip bundle") -> None:
    """Make an uncaught bad-input error end the process with one line and the convention's exit code.

    Meant for ``python -m monai.bundle run``, whose config parser wraps every error in several
    ``RuntimeError`` layers and prints a long traceback; bundle configs call it first in ``initialize``.
    Bugs (any other exception) keep Python's traceback. ``verbose=True`` keeps tracebacks for everything.
    """
    if as_flag(verbose, "verbose") or getattr(sys.excepthook, "_mammoclip_brief", False):
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
        if user_error(err) is None:
            previous(kind, err, tb)
            return
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code(err))  # the excepthook cannot choose the exit status otherwise

    hook._mammoclip_brief = True  # type: ignore[attr-defined]  # installed once per process
    sys.excepthook = hook


def format_traceback(err: BaseException) -> str:
    """The full traceback of ``err`` (for ``--verbose``)."""
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))
