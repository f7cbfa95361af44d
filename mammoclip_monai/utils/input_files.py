"""Reading configuring text files (JSON, CSV) so that every failure is one :class:`InvalidInputError` line.

A missing file, a folder given as a file, bytes that are not UTF-8 (the line and byte are named),
JSON that does not parse (line and column) and JSON objects with a repeated key (which ``json``
would silently collapse to the last value) all stop here, before any schema is checked.
Nothing here imports torch or another ``mammoclip_monai`` package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

__all__ = ["require_file", "unreadable", "read_text_file", "read_json_file", "describe_value"]


def require_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path if it is an existing file; a missing one or a folder is one line naming ``what``."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(path, f"no such file; expected {what}")
    if path.is_dir():
        raise InvalidInputError(path, f"is a folder; expected {what}")
    return path


def unreadable(path: str | os.PathLike[str], err: OSError, what: str) -> InvalidInputError:
    """The error for a file the operating system would not read (permissions, I/O)."""
    return InvalidInputError(path, f"cannot be read ({err.strerror or type(err).__name__}); expected {what}")


def read_text_file(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped); ``what`` names the expected file in errors."""
    path = require_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise unreadable(path, err, what) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InvalidInputError(
            path, f"byte 0x{data[err.start]:02x} (file offset {err.start}) is not UTF-8; save the file as UTF-8 text",
            where=f"line {line}, byte {column}") from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def read_json_file(path: str | os.PathLike[str], what: str) -> Any:
    """The parsed JSON of ``path``; invalid JSON, a repeated key or ``NaN`` is an :class:`InvalidInputError`."""
    text = read_text_file(path, what)
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as err:
        raise InvalidInputError(path, f"not valid JSON ({err.msg}); expected {what}",
                                where=f"line {err.lineno}, column {err.colno}") from None
    except _DuplicateKey as err:
        raise InvalidInputError(path, f"key {err.args[0]!r} appears twice in one JSON object; each name must be "
                                      "given once") from None
    except ValueError as err:  # NaN / Infinity
        raise InvalidInputError(path, f"not valid JSON ({err}); expected {what}") from None


def describe_value(value: Any) -> str:
    """A short description of a JSON value for an error message (short scalars shown, containers not)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        if not value.strip():
            return "an empty string"
        return f"the string {value!r}" if len(value) <= 40 else "a string"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}" if value else "an empty list"
    return type(value).__name__
