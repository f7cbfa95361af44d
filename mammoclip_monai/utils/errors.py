"""The project's error convention: which errors name a bad input, and the exit codes of every command.

Two kinds of bad input, two exception types, one message shape (``"<file>: <reason>"``):

- :class:`~mammoclip_monai.data.reader.MammogramReadError`: one image cannot be read. Per-input:
  a batch reports it and goes on.
- :class:`InvalidInputError`: a file that configures a run (prompt file, model directory, FActOR
  weights, a datalist CSV) is not what it must be. The run cannot start; the message names the
  file, where in it (key, row, column) and what was expected.

Both subclass ``ValueError``. Exit codes shared by ``mammoclip`` and bundle inference:
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["InvalidInputError", "EXIT_OK", "EXIT_FAILED_INPUTS", "EXIT_USAGE", "EXIT_INTERNAL"]

EXIT_OK = 0
"""Every input was processed."""
EXIT_FAILED_INPUTS = 1
"""Some inputs failed (each listed with its reason); the others were processed."""
EXIT_USAGE = 2
"""Nothing was done: a usage error, nothing to do (no such path, an empty folder), or an invalid
prompt / model / FActOR / CSV file."""
EXIT_INTERNAL = 3
"""An unexpected error (a bug): one line, and the traceback with ``--verbose``."""


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
