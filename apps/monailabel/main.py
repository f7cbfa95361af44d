"""MONAI Label app serving the MammoCLIP bundle: per-finding scores for a mammogram.

Why an app of our own: MONAI Label's stock ``monaibundle`` app fetches bundles from the online
model zoo and treats them as segmentation. This one reads a local bundle directory and serves it as
one classification model. Training stays with the bundle (``python -m monai.bundle run ...``).

Options (``--conf KEY VALUE``):

- ``bundle_path``: the bundle directory (default: this repository's ``bundle/``).
- ``model_name``: the model's name in ``/info/`` and ``/infer/<model>`` (default ``mammoclip``).
- ``preload``: ``true`` builds the network when the server starts (default ``false``).
- ``allow_uploads``: ``true`` accepts ``PUT /datastore/image`` (default ``false``): stored under a
  cleaned id directly in the studies folder, never over an existing image.

Closed by default: an image is named by its datastore id and nothing else (no path, no uploaded
file, no ``params``); every MONAI Label endpoint this app does not need answers 403
(``lib/routes.py``); the datastore refuses label saving, deletion and metadata edits
(``lib/datastore.py``). Refusals are 4xx with fixed messages (``lib/refusals.py``).

Image ids are file names without extension and MONAI Label logs them: store studies under
non-identifying names (the synthetic generator's are hashes), never under patient names or IDs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lib.datastore import ClosedLocalDatastore
from lib.infers import MammoClipClassification
from lib.refusals import (
    NO_PARAMETERS,
    NOT_AN_IMAGE_ID,
    UNKNOWN_IMAGE_ID,
    UNKNOWN_MODEL,
    bad_request,
    is_image_id,
    not_found,
    unreadable_image,
)
from lib.routes import close_server
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from mammoclip_monai import __version__
from mammoclip_monai.data.reader import MammogramReadError

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
DEFAULT_MODEL_NAME = "mammoclip"
DICOM_PATTERNS = ("*.dcm", "*.dicom")
"""MONAI Label's local datastore lists no DICOM files by default; mammograms usually are."""
INFER_REQUEST_KEYS = {"model", "image"}
"""All an inference request may hold: MONAI Label merges ``params`` into the request, and keys such
as ``model_filename`` (load another checkpoint), ``device`` or ``save_label`` change the server."""


def conf_flag(conf: dict[str, str], key: str) -> bool:
    """A ``--conf KEY true|false`` option; anything else stops the server at start-up."""
    value = str(conf.get(key, "false")).strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"--conf {key} must be true or false, got {conf.get(key)!r}")
    return value == "true"


def mammogram_read_error(error: BaseException | None) -> MammogramReadError | None:
    """The reader's error behind ``error`` (itself, or along its cause/context chain), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, MammogramReadError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class MammoClipApp(MONAILabelApp):
    """One classification model read from a local bundle, served closed: datastore ids in, scores out."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_path = Path(conf.get("bundle_path") or DEFAULT_BUNDLE).expanduser().resolve()
        self.model_name = conf.get("model_name") or DEFAULT_MODEL_NAME
        self.allow_uploads = conf_flag(conf, "allow_uploads")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MammoCLIP",
            description="Zero-shot mammography findings (mass, calcification, density) from the MammoCLIP bundle",
            version=__version__,
        )

    def init_datastore(self) -> Datastore:
        """A local studies folder, closed (``lib/datastore.py``) and listing ``.dcm``/``.dicom`` too;
        remote stores are MONAI Label's (its endpoints that write to them stay closed by the routes)."""
        if self.studies.startswith(("http://", "https://")):
            if self.allow_uploads:
                raise ValueError("--conf allow_uploads true needs a local studies folder (uploads are contained there)")
            return super().init_datastore()
        patterns = list(settings.MONAI_LABEL_DATASTORE_FILE_EXT)
        patterns += [p for p in DICOM_PATTERNS if p not in patterns]
        return ClosedLocalDatastore(
            self.studies,
            extensions=patterns,
            allow_uploads=self.allow_uploads,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        """Fail at start-up, not at the first request, when the bundle is incomplete."""
        task = MammoClipClassification(os.fspath(self.bundle_path), self.conf)
        if not task.is_valid():
            raise RuntimeError(
                f"no usable bundle at {self.bundle_path}: it needs configs/inference.json, "
                "configs/metadata.json and models/model.pt (set it with --conf bundle_path DIR)"
            )
        logger.info(f"Serving bundle {self.bundle_path} as model '{self.model_name}': {task.output_names}")
        return {self.model_name: task}

    def init_trainers(self) -> dict[str, TrainTask]:
        """Training runs through the bundle's own configs, not through MONAI Label."""
        return {}

    def init_strategies(self) -> dict[str, Any]:
        """No active learning: nothing here is being labelled."""
        return {}

    def _load_sessions(self, load: bool = False) -> None:
        """No sessions: they hold uploaded images outside the datastore."""
        return None

    def model_file(self, model: str, validate: bool = True) -> None:
        """The bundle's weights are neither handed out nor replaced over HTTP (``/model/...``)."""
        return None

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Score one datastore image, named by its id; refuse everything else with a 4xx.

        MONAI Label's own ``infer`` reads ``request["image"]`` as a path whenever that path exists,
        so any readable file could be scored and the reader's reasons would say which paths exist.
        Here the id is checked on its own (no separator, not ``..``) and then looked up in the
        datastore only; paths, unknown ids and ids outside the studies folder all end before any
        file is opened. A datastore image the reader refuses answers 422 with the reader's reason
        (``MammogramReadError.reason``: never the path).
        """
        model = request.get("model")
        if model not in self._infers:
            raise not_found(UNKNOWN_MODEL)
        if set(request) - INFER_REQUEST_KEYS:
            raise bad_request(NO_PARAMETERS)
        image_id = request.get("image")
        if not is_image_id(image_id):
            raise bad_request(NOT_AN_IMAGE_ID)
        store = datastore if datastore is not None else self.datastore()
        path = store.get_image_uri(image_id)
        if not path or not os.path.exists(path):
            raise not_found(UNKNOWN_IMAGE_ID)
        try:
            # An existing path: MONAI Label uses it as is and saves no label.
            return super().infer({"model": model, "image": path}, store)
        except Exception as error:
            read_error = mammogram_read_error(error)
            if read_error is None:
                raise
            logger.info(f"Image {image_id} not scored: {read_error.reason}")
            raise unreadable_image(read_error.reason) from None

    def on_init_complete(self) -> None:
        """In the server only (MONAI Label calls this at start-up): close what the app does not serve."""
        super().on_init_complete()
        from monailabel.app import app as server  # the app ``start_server`` runs (``--uvicorn_app`` default)

        close_server(server, allow_uploads=self.allow_uploads)
        logger.info(
            f"Serving GET /info/, GET /datastore/ and POST /infer/{self.model_name} for datastore ids; "
            f"uploads {'on' if self.allow_uploads else 'off'}; every other MONAI Label endpoint answers 403"
        )
