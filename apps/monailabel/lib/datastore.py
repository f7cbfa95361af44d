"""The studies folder as this server exposes it: images found by id only, inside the folder only.

MONAI Label's ``LocalDatastore`` is written for annotation: clients upload images and labels,
edit metadata and delete studies, and several answers carry absolute paths. This subclass keeps
what a scoring server needs (list the images, find one by id) and closes the rest:

- an id resolves to a file directly inside the studies folder or to nothing (a symbolic link that
  leads out of the folder resolves to nothing);
- uploads are refused unless the app was started with ``--conf allow_uploads true``; then the
  stored name is built from a cleaned id (:func:`~lib.refusals.contained_image_id`) and a reader
  extension, and an existing image is never overwritten;
- label saving, deletion, metadata edits and the dataset archive are refused;
- answers name files relative to the folder, never by absolute path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from monailabel.datastore.local import LocalDatastore

from .refusals import UPLOADS_OFF, conflict, contained_image_id, forbidden, is_image_id, unsupported_upload

logger = logging.getLogger(__name__)

UPLOAD_EXTENSIONS = (".dcm", ".dicom", ".png", ".jpg", ".tif")
"""Extensions an upload may have: formats the project's reader reads that the datastore also lists."""


class ClosedLocalDatastore(LocalDatastore):
    """A local studies folder that only answers for its own images (see the module docstring)."""

    def __init__(self, datastore_path: str, *, extensions: Sequence[str], allow_uploads: bool = False,
                 auto_reload: bool = False, read_only: bool = False) -> None:
        self.allow_uploads = allow_uploads
        super().__init__(datastore_path, extensions=list(extensions), auto_reload=auto_reload, read_only=read_only)
        self._folder = os.path.realpath(self._datastore.image_path())
        listed = {pattern.lstrip("*") for pattern in self._extensions}
        self.upload_extensions = tuple(ext for ext in UPLOAD_EXTENSIONS if ext in listed)

    # -- reading: by id, inside the folder ---------------------------------------------------

    def get_image_uri(self, image_id: str) -> str:
        """The image's path when ``image_id`` names a datastore image whose file lies directly in
        the studies folder, else ``""`` (MONAI Label's own "not found")."""
        if not is_image_id(image_id):
            return ""
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return ""
        path = os.path.realpath(os.path.join(self._folder, self._filename(image_id, obj.image.ext)))
        if os.path.dirname(path) != self._folder or not os.path.isfile(path):
            return ""
        return path

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """MONAI Label's info without the absolute ``path`` it adds."""
        info = super().get_image_info(image_id)
        info.pop("path", None)
        return info

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """Image/label pairs named relative to the studies folder, whatever ``full_path`` asks for."""
        root = os.path.realpath(self._datastore_path)
        return [
            {key: os.path.relpath(path, root) for key, path in item.items()}
            for item in super().datalist(full_path=True)
        ]

    # -- writing: uploads only, and only when switched on -------------------------------------

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Store an upload under a cleaned id; refuse when uploads are off, the extension is not a
        mammogram format the datastore lists, or the id is taken. The client's ``image_info`` is not
        stored (it is free-form JSON)."""
        if not self.allow_uploads:
            raise forbidden(UPLOADS_OFF)
        default_id, extension = self._to_id(os.path.basename(image_filename))
        if extension not in self.upload_extensions:
            raise unsupported_upload(self.upload_extensions)
        stored_id = contained_image_id(image_id or default_id)
        destination = os.path.join(self._folder, self._filename(stored_id, extension))
        if stored_id in self._datastore.objects or os.path.lexists(destination):
            raise conflict()
        super().add_image(stored_id, image_filename, {})
        logger.info(f"Stored an upload as image {stored_id}")
        return stored_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Labels are not part of a scoring server."""
        raise forbidden()

    def remove_label(self, label_id: str, label_tag: str) -> None:
        raise forbidden()

    def remove_image(self, image_id: str) -> None:
        """Studies are removed from the folder by whoever manages it, not over HTTP."""
        raise forbidden()

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        raise forbidden()

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        raise forbidden()

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        """The archive would hand out every DICOM file, headers (and patient identifiers) included."""
        raise forbidden()

