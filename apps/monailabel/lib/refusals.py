"""What the server answers when it refuses a request, and the rules for image ids.

MONAI Label turns its own exceptions (``MONAILabelException`` and subclasses) into HTTP 500: no
handler maps them to a client error. FastAPI's ``HTTPException`` is the one type its endpoints
answer with the status it carries, so every refusal here is one.

The messages are fixed strings: none repeats what the client sent or names a file, so an answer
cannot tell the caller whether some path exists on the server.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from fastapi import HTTPException

NOT_AN_IMAGE_ID = (
    "image must be the id of an image in this server's datastore (GET /datastore/?output=all lists them), "
    "not a path"
)
UNKNOWN_IMAGE_ID = "no image with this id in the datastore (GET /datastore/?output=all lists them)"
UNKNOWN_MODEL = "no such model: GET /info/ lists the models this server serves"
NO_PARAMETERS = "this model takes no parameters: params must be {} (name the image with ?image=<id>)"
DATASTORE_IMAGES_ONLY = "this server scores datastore images only: send ?image=<id>, no file, label or session"
JSON_OUTPUT_ONLY = "this model answers JSON only: output must be json (or all)"
UPLOADS_OFF = "uploads are off: start the server with --conf allow_uploads true to accept them"
IMAGE_EXISTS = "an image with this id is already in the datastore: choose another id"
NOT_OFFERED = (
    "not offered by this server: it scores datastore images (POST /infer/<model>?image=<id>) "
    "and lists them (GET /info/, GET /datastore/)"
)

_ID_SEPARATORS = ("/", "\\", "\0")
_UNSAFE_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")
MAX_STORED_ID_LENGTH = 128
"""Uploaded ids are cut to this many characters: a file name stays far below the 255-byte limit."""


class Refused(HTTPException):
    """A request this server does not serve: the status and one fixed message, nothing the client sent."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code=status_code, detail=message)


def bad_request(message: str) -> Refused:
    """400: the request is malformed for this server (a path for an id, parameters, uploads)."""
    return Refused(400, message)


def not_found(message: str) -> Refused:
    """404: well-formed, but the datastore has no such image or the server no such model."""
    return Refused(404, message)


def forbidden(message: str = NOT_OFFERED) -> Refused:
    """403: a MONAI Label feature this server keeps closed (training, label saving, uploads when off ...)."""
    return Refused(403, message)


def conflict(message: str = IMAGE_EXISTS) -> Refused:
    """409: an upload would replace an image already in the datastore."""
    return Refused(409, message)


def unsupported_upload(extensions: Sequence[str]) -> Refused:
    """415: the upload's extension is not a mammogram format the datastore lists."""
    return Refused(415, f"uploads must be mammograms with one of the extensions {', '.join(extensions)}")


def unreadable_image(reason: str) -> Refused:
    """422: a datastore image the reader refused; ``reason`` is ``MammogramReadError.reason`` (no path)."""
    return Refused(422, f"the image cannot be scored: {reason}")


def is_image_id(value: object) -> bool:
    """Whether ``value`` can be a datastore id at all: a non-empty name, no separator, not ``.``/``..``.

    Decided on the string alone, before any file-system look-up, so the answer to a path is the
    same whether or not that path exists.
    """
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and not any(separator in value for separator in _ID_SEPARATORS)
    )


def contained_image_id(requested: str) -> str:
    """The id an upload is stored under: letters, digits, ``_`` and ``-`` only, so ``<id><ext>`` is
    always one file name directly inside the studies folder whatever the client asked for.

    Every other character (``/``, ``.``, ``\\``, spaces ...) becomes ``_``; an id with nothing left
    gets a random one. The client learns the stored id from the answer.
    """
    cleaned = _UNSAFE_ID_CHARACTERS.sub("_", requested)[:MAX_STORED_ID_LENGTH].strip("_")
    return cleaned or uuid.uuid4().hex
