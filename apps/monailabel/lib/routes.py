"""Which of MONAI Label's HTTP endpoints this server answers, applied when the server starts.

MONAI Label's FastAPI app registers every endpoint of an annotation server (training, scoring,
batch and WSI inference, active learning, sessions, label and image upload and deletion, model
download and replacement, the server log, the OHIF viewer, a DICOMweb proxy). Several start work
or write files before any app hook is called (training, scoring and batch inference spawn a
process; uploads are written to a temporary file first), so the app cannot refuse them from its
hooks alone. :func:`close_server` puts an allow-list in front of MONAI Label's router:

- ``GET /info/``, ``GET /datastore/`` (the listing), the API documentation (``/``, ``/docs``,
  ``/openapi.json``) and, when MONAI Label's authentication is on, its ``/auth/`` endpoints go
  to MONAI Label as they are;
- ``POST /infer/<model>`` goes to :func:`infer_datastore_image`: MONAI Label's endpoint restricted
  to the one request this model answers (a datastore id, no parameters, no uploaded file);
- ``PUT /datastore/image`` goes to MONAI Label only when the app runs with
  ``--conf allow_uploads true`` (the datastore then contains what it stores);
- everything else answers 403 (:data:`~lib.refusals.NOT_OFFERED`) before a byte of the body is read.

The allow-list matches method and path on the raw request, so it does not depend on how FastAPI
organises routes internally, and an endpoint a later MONAI Label adds is closed too. Nothing in
MONAI Label's sources changes: the running server's router is wrapped.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, File, Form, UploadFile
from monailabel.config import settings
from monailabel.endpoints.infer import ResultType, run_inference
from monailabel.endpoints.user.auth import RBAC, User
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from .refusals import (
    DATASTORE_IMAGES_ONLY,
    JSON_OUTPUT_ONLY,
    NO_PARAMETERS,
    NOT_AN_IMAGE_ID,
    NOT_OFFERED,
    UPLOADS_OFF,
    bad_request,
    forbidden,
)

INFER_PATH = "/infer/{model}"
UPLOAD_ROUTE = "/datastore/image"
LISTING_ROUTES = {"/info", "/datastore"}
"""Answered by MONAI Label for GET (paths without MONAI_LABEL_API_STR and without the trailing /)."""
DOCUMENTATION_ROUTES = {"", "/docs", "/openapi.json", "/favicon.ico"}
AUTH_PREFIX = "/auth/"


async def infer_datastore_image(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile | None = File(None),
    label: UploadFile | None = File(None),
    output: ResultType | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    """MONAI Label's ``POST /infer/{model}`` for a datastore image and nothing else.

    Refused before MONAI Label sees the request: an uploaded file, label or session (MONAI Label
    would read those from temporary paths, left behind when the request fails), ``params`` with any
    key (``image`` would replace the query's image, ``model_filename`` would load another
    checkpoint, ``device`` / ``logging`` would change the server), and image outputs (a score has
    none). The image id itself is checked by ``MammoClipApp.infer``. Declared ``async`` as MONAI
    Label's endpoint is, so inferences still run one at a time.
    """
    if session_id or file is not None or label is not None:
        raise bad_request(DATASTORE_IMAGES_ONLY)
    if not image:
        raise bad_request(NOT_AN_IMAGE_ID)
    if _has_parameters(params):
        raise bad_request(NO_PARAMETERS)
    if output not in (None, ResultType.json, ResultType.all):
        raise bad_request(JSON_OUTPUT_ONLY)
    return run_inference(background_tasks, model, image, "", "{}", None, None, output)


def _has_parameters(params: str) -> bool:
    """True unless ``params`` is empty or the JSON object ``{}``; invalid JSON counts as parameters."""
    if not params or not params.strip():
        return False
    try:
        return json.loads(params) != {}
    except ValueError:
        return True


def close_server(server: FastAPI, *, allow_uploads: bool) -> None:
    """Put the allow-list of the module docstring in front of ``server``'s router.

    Called once, in the server's start-up (``MammoClipApp.on_init_complete``), before the first
    request. The wrapper sits inside FastAPI's exception handling, so a refusal is the usual
    ``{"detail": ...}`` JSON with its status and passes through the CORS middleware like any answer.
    The OpenAPI schema (``/openapi.json``, ``/docs``) is cut to the served endpoints.
    """
    router = server.router
    if isinstance(router.middleware_stack, ServedRoutes):
        return
    served = ServedRoutes(router.middleware_stack, allow_uploads=allow_uploads)
    router.middleware_stack = served
    schema = server.openapi()
    paths = {}
    for path, operations in schema.get("paths", {}).items():
        kept = {method: operation for method, operation in operations.items()
                if served.route(method.upper(), path) is not None}
        if kept:
            paths[path] = kept
    schema["paths"] = paths


class ServedRoutes:
    """ASGI wrapper: the requests this server serves reach MONAI Label (or the guarded infer); for
    the rest it raises a 403 that FastAPI's exception middleware answers."""

    def __init__(self, monai_label: ASGIApp, *, allow_uploads: bool) -> None:
        self.monai_label = monai_label
        self.allow_uploads = allow_uploads
        self.prefix = settings.MONAI_LABEL_API_STR.rstrip("/")
        self.guarded_infer = APIRouter()
        self.guarded_infer.add_api_route(self.prefix + INFER_PATH, infer_datastore_image, methods=["POST"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.monai_label(scope, receive, send)
            return
        path = scope.get("path", "")
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path):]
        app = self.route(scope.get("method", ""), path)
        if app is not None:
            await app(scope, receive, send)
        elif scope["type"] == "websocket":
            await WebSocketClose()(scope, receive, send)
        else:
            raise forbidden(self.refusal(scope.get("method", ""), path))

    def route(self, method: str, path: str) -> ASGIApp | None:
        """Where a request for ``method path`` goes, or None when it is refused."""
        route = self._route(path)
        if route is None:
            return None
        if route in DOCUMENTATION_ROUTES and method in ("GET", "HEAD"):
            return self.monai_label
        if route in LISTING_ROUTES and method == "GET":
            return self.monai_label
        if (route + "/").startswith(AUTH_PREFIX):
            return self.monai_label
        if method == "POST" and route.startswith("/infer/") and route.count("/") == 2:
            return self.guarded_infer
        if method == "PUT" and route == UPLOAD_ROUTE and self.allow_uploads:
            return self.monai_label
        return None

    def refusal(self, method: str, path: str) -> str:
        """Why ``method path`` is refused: uploads while they are off, else not offered."""
        return UPLOADS_OFF if method == "PUT" and self._route(path) == UPLOAD_ROUTE else NOT_OFFERED

    def _route(self, path: str) -> str | None:
        """``path`` without MONAI_LABEL_API_STR and trailing ``/`` (MONAI Label redirects ``/info``
        to ``/info/``), or None outside the API prefix."""
        if self.prefix:
            if not path.startswith(self.prefix):
                return None
            path = path[len(self.prefix):]
        return path.rstrip("/")
