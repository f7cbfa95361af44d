"""Find the exported bundle's TorchScript file and read the bundle JSON it carries.

`python -m monai.bundle ckpt_export` stores the bundle's ``metadata.json`` and ``inference.json``
under ``extra/`` inside the TorchScript zip archive. Reading them with :mod:`zipfile` (instead of
``torch.jit.load(..., _extra_files=...)``) lets the application learn the finding names, the
input size and the model version before any weights are loaded.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_FILE_NAMES: tuple[str, ...] = ("model.ts", "model.pt")
"""File names looked for when the model path is a folder (the bundle's ``models/`` layout)."""


class BundleModelError(ValueError):
    """The model path or the exported archive does not fit the application's contract."""


def resolve_model_file(path: str | Path, models: Any = None) -> Path:
    """Return the TorchScript file behind ``-m`` / ``HOLOSCAN_MODEL_PATH``.

    The SDK's :class:`~monai.deploy.core.models.ModelFactory` (``models``, from the app context)
    already understands a single file and a MAP's named-model folder (``models/<name>/<file>``);
    a bundle's own ``models/`` folder (``model.ts`` beside ``model.pt``) is accepted too, so the
    bundle directory can be served without copying.
    """
    candidates: list[Path] = []
    if models is not None:
        try:
            candidates.append(Path(models.get().path))
        except Exception as exc:  # several named models, or none: say which path was given
            raise BundleModelError(f"cannot pick one model under {path}: {exc}") from exc
    candidates.append(Path(path))
    for candidate in candidates:
        if candidate.is_file() and zipfile.is_zipfile(candidate):
            return candidate
        if candidate.is_dir():
            for name in MODEL_FILE_NAMES:
                inner = candidate / name
                if inner.is_file() and zipfile.is_zipfile(inner):
                    return inner
    raise BundleModelError(
        f"no TorchScript model at {path} (give -m <model.ts>, a folder holding model.ts, "
        "or set HOLOSCAN_MODEL_PATH)"
    )


def read_extra_json(model_file: str | Path, name: str) -> dict[str, Any]:
    """Return ``extra/<name>`` of a TorchScript archive as a dict (``{}`` when absent)."""
    with zipfile.ZipFile(model_file) as archive:
        for member in archive.namelist():
            # torch.jit.save puts everything below one top-level folder named after the file stem
            if member == f"extra/{name}" or member.endswith(f"/extra/{name}"):
                text = archive.read(member).decode("utf-8").strip()
                return json.loads(text) if text else {}
    return {}


def finding_names(metadata: dict[str, Any]) -> list[str]:
    """Output column names, ordered by channel index, from ``network_data_format.outputs.pred``."""
    channel_def = (
        metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {})
    )
    try:
        ordered = sorted(channel_def.items(), key=lambda item: int(item[0]))
    except (TypeError, ValueError) as exc:
        raise BundleModelError(f"channel_def keys must be channel indices, got {list(channel_def)}") from exc
    names = [str(value) for _, value in ordered]
    if not names:
        raise BundleModelError(
            "the model's metadata.json has no network_data_format.outputs.pred.channel_def: "
            "the application cannot name the output columns"
        )
    if [int(key) for key, _ in ordered] != list(range(len(names))):
        raise BundleModelError(f"channel_def indices are not 0..{len(names) - 1}: {list(channel_def)}")
    return names


def input_spatial_size(metadata: dict[str, Any], default: Sequence[int] = (448, 288)) -> tuple[int, int]:
    """The network's ``(H, W)`` from ``network_data_format.inputs.image.spatial_shape``."""
    shape = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("spatial_shape")
    if not shape:
        return int(default[0]), int(default[1])
    if len(shape) != 2:
        raise BundleModelError(f"expected a 2-D input spatial_shape, got {shape}")
    return int(shape[0]), int(shape[1])


def model_normalization(model: Any) -> dict[str, Any] | None:
    """The intensity normalisation the exported network was trained with, or ``None`` if it does not say.

    ``ZeroShotClassifier`` carries its model config's ``image_normalization`` as the TorchScript
    attribute ``image_normalization_json``: the archive's ``inference.json`` cannot tell (it builds
    the normalisation from the model it would construct, not from the one that was exported).
    Archives exported before the attribute existed return ``None``; those models were all trained
    with the default (the original's fixed constants).
    """
    text = getattr(model, "image_normalization_json", None)
    if text is None:
        return None
    try:
        normalization = json.loads(str(text))
    except json.JSONDecodeError as exc:
        raise BundleModelError(f"the model's image_normalization_json is not JSON: {exc}") from exc
    if not isinstance(normalization, dict):
        raise BundleModelError(f"the model's image_normalization_json is not an object: {text!r}")
    return normalization


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file: a stable identity for the exact weights that produced a report."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
