"""Inference inputs: files, folders or a CSV -> ``[{"image": path}]``; bad files become error records.

A folder of real-world images usually holds a few that cannot be read (a corrupt file, a
compression without its decoder, a CT slice). :class:`ImageDataset` turns those into error
records and :func:`collate_readable` batches the rest, so one bad file neither stops a run nor
goes unreported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import list_data_collate

from ..data.datalists import DatalistError, read_csv, required_value
from ..data.reader import MammogramReadError, read_error
from ..utils.errors import NoInputsError

__all__ = ["IMAGE_SUFFIXES", "find_image_files", "inference_datalist", "ImageDataset", "collate_readable",
           "PrepareReadableBatch", "read_error"]

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ""}
PATH_COLUMNS = ("image", "path", "file", "filename")


def find_image_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders walked recursively for DICOM/PNG/JPEG/TIFF files (sorted, hidden files skipped).

    A path that does not exist is kept: reading it reports "file not found" for that input only, so one
    mistyped name among many neither stops a run nor goes unreported.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                                and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        else:
            files.append(path)
    return files


def _csv_items(path: Path) -> list[dict[str, str]]:
    """``[{"image": path}]`` from a CSV's first column named one of :data:`PATH_COLUMNS` (relative to the CSV).

    The CSV is checked as a datalist is (UTF-8, no ragged rows, at least one row); a row without a
    path is a :class:`~mammoclip_monai.data.datalists.DatalistError` naming its line.
    """

    rows = read_csv(path)
    column = next((c for c in PATH_COLUMNS if c in rows[0]), None)
    if column is None:
        raise DatalistError(path, f"needs one of the columns {list(PATH_COLUMNS)} (the image paths); found "
                                  f"{list(rows[0])}")
    paths = [required_value(path, row, column, "the path of an image") for row in rows]
    return [{"image": str(p if Path(p).is_absolute() else path.parent / p)} for p in paths]


def inference_datalist(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict[str, str]]:
    """``[{"image": path}]`` from a folder, a file, a list of them, or a CSV with an ``image``/``path`` column.

    CSV paths are relative to the CSV's folder unless absolute. Paths that do not exist stay in the list
    (each fails on its own when read). Raises :class:`~mammoclip_monai.utils.NoInputsError` when there is
    nothing to do: no given path exists, or the folders hold no image file.
    """
    entries = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not entries:
        raise NoInputsError("no input given")
    items: list[dict[str, str]] = []
    reasons: list[str] = []  # why each entry gave nothing to read, in case none did
    for entry in entries:
        path = Path(entry)
        if path.suffix.lower() == ".csv" and not path.is_dir():
            found = _csv_items(path)
            reasons.append(f"{path}: none of its {len(found)} image path(s) exists")
        elif path.is_dir():
            found = [{"image": str(p)} for p in find_image_files(path)]
            reasons.append(f"{path}: no DICOM/PNG/JPEG/TIFF file in this folder")
        else:
            found = [{"image": str(path)}]
            reasons.append(f"{path}: no such file or folder")
        items += found
    if not any(os.path.exists(item["image"]) for item in items):
        more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
        raise NoInputsError("nothing to read: " + "; ".join(reasons[:3]) + more)
    return items


class ImageDataset(torch.utils.data.Dataset):
    """Items through ``transform``; an item whose file cannot be read becomes ``{"error": ..., "file": path}``.

    Only :class:`~mammoclip_monai.data.reader.MammogramReadError` (bad input, named by the reader)
    is caught: a bug in a transform still stops the run.
    """

    def __init__(self, data: Sequence[dict[str, Any]], transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.data = list(data)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.data[index]
        try:
            return self.transform(dict(item))
        except (MammogramReadError, RuntimeError) as err:
            reason = read_error(err)
            if reason is None:
                raise
            return {"error": reason.reason, "file": str(item.get("image"))}


def collate_readable(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate the readable items; the error records travel along as ``batch["failed"]``.

    A batch with no readable item has no ``image`` key (:class:`PrepareReadableBatch` handles it).
    """
    good = [item for item in items if "error" not in item]
    failed = [{"file": item["file"], "error": item["error"]} for item in items if "error" in item]
    batch = list_data_collate(good) if good else {}
    batch["failed"] = failed
    return batch


class PrepareReadableBatch:
    """``prepare_batch`` for MONAI evaluators over :func:`collate_readable` batches.

    A batch whose files all failed has no ``image``: it becomes an empty ``(0, 1, H, W)`` batch, so
    the run goes on (and the writer reports the failures).
    """

    def __init__(self, spatial_size: Sequence[int]) -> None:
        self.spatial_size = tuple(int(s) for s in spatial_size)

    def __call__(self, batchdata: dict[str, Any], device: torch.device | str | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, None]:
        image = batchdata.get("image")
        if image is None:
            image = torch.zeros((0, 1, *self.spatial_size))
        return image.to(device=device, non_blocking=non_blocking), None
