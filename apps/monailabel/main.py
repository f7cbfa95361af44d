"""MONAI Label app serving the MammoCLIP bundle: per-finding scores for a mammogram.

Why an app of our own: MONAI Label's stock ``monaibundle`` app fetches bundles from the online
model zoo and treats them as segmentation. This one reads a local bundle directory and serves it as
one classification model. Training stays with the bundle (``python -m monai.bundle run ...``).

Options (``--conf KEY VALUE``):

- ``bundle_path``: the bundle directory (default: this repository's ``bundle/``).
- ``model_name``: the model's name in ``/info/`` and ``/infer/<model>`` (default ``mammoclip``).
- ``preload``: ``true`` builds the network when the server starts (default ``false``).

Image ids are file names without extension and MONAI Label logs them: store studies under
non-identifying names (the synthetic generator's are hashes), never under patient names or IDs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict

from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from mammoclip_monai import __version__

from lib.infers import MammoClipClassification

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
DEFAULT_MODEL_NAME = "mammoclip"
DICOM_PATTERNS = ("*.dcm", "*.dicom")
"""MONAI Label's local datastore lists no DICOM files by default; mammograms usually are."""


class MammoClipApp(MONAILabelApp):
    """One classification model read from a local bundle; no trainers."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        self.bundle_path = Path(conf.get("bundle_path") or DEFAULT_BUNDLE).expanduser().resolve()
        self.model_name = conf.get("model_name") or DEFAULT_MODEL_NAME
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MammoCLIP",
            description="Zero-shot mammography findings (mass, calcification, density) from the MammoCLIP bundle",
            version=__version__,
        )

    def init_datastore(self) -> Datastore:
        """A local studies folder also lists ``.dcm``/``.dicom`` files; remote stores are MONAI Label's."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        patterns = list(settings.MONAI_LABEL_DATASTORE_FILE_EXT)
        patterns += [p for p in DICOM_PATTERNS if p not in patterns]
        return LocalDatastore(
            self.studies,
            extensions=patterns,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        """Fail at start-up, not at the first request, when the bundle is incomplete."""
        task = MammoClipClassification(os.fspath(self.bundle_path), self.conf)
        if not task.is_valid():
            raise RuntimeError(
                f"no usable bundle at {self.bundle_path}: it needs configs/inference.json, "
                "configs/metadata.json and models/model.pt (set it with --conf bundle_path DIR)"
            )
        logger.info(f"Serving bundle {self.bundle_path} as model '{self.model_name}': {task.output_names}")
        return {self.model_name: task}

    def init_trainers(self) -> Dict[str, TrainTask]:
        """Training runs through the bundle's own configs, not through MONAI Label."""
        return {}
