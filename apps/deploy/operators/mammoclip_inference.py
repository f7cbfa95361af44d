"""This project's inference operator: selected MG series -> per-finding probabilities as text.

Why not the SDK's ``DICOMSeriesToVolumeOperator`` + ``MonaiBundleInferenceOperator``: the volume
operator applies only rescale and the presentation LUT (no VOI LUT or window, MONOCHROME1 inverted
only when PresentationLUTShape is INVERSE) and the bundle operator drops the bundle's loader, so
the network would see intensities it was never trained on. Here every SOP instance goes through
the project's own preprocessing (:func:`mammoclip_monai.data.pipelines.preprocessing`: VOI LUT or
window, MONOCHROME1, breast crop, laterality canonicalisation, resize, normalisation) from its
file, exactly as in training and in the bundle, and then through the exported TorchScript. The
normalisation is the one the exported network records (``image_normalization_json``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from monai.deploy.core.domain.dicom_sop_instance import DICOMSOPInstance

from .bundle_model import finding_names, input_spatial_size, model_normalization, read_extra_json

REPORT_TITLE = "MammoCLIP per-finding probabilities. Research use only; not for diagnostic use."


@dataclass
class ImageResult:
    """One SOP instance: its label for the reader of the report, and probabilities or a reason."""

    sop_instance_uid: str
    label: str
    probabilities: dict[str, float] = field(default_factory=dict)
    skipped_reason: str | None = None


@dataclass
class StudyResult:
    """What the SR writer needs for one study: the selected series (for tags) and the report."""

    study_selected_series: StudySelectedSeries
    images: list[ImageResult]
    text: str

    @property
    def n_analysed(self) -> int:
        return sum(1 for image in self.images if image.skipped_reason is None)


class MammoClipInferenceOperator(Operator):
    """Run the exported MammoCLIP bundle on every selected MG image, one text report per study.

    Named input:
        study_selected_series_list: list of ``StudySelectedSeries`` (from the series selector).

    Named output:
        study_results: list of :class:`StudyResult`, one per study with at least one MG series
        (possibly empty; emitted on every run so the writer can say that nothing was written).

    Images the project's reader refuses (``MammogramReadError``: multi-frame, colour, undecodable,
    ...) and "FOR PROCESSING" images are skipped with a log line and listed in the report; they
    never stop the other images of the study.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        model_file: str | Path,
        batch_size: int = 8,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.model_file = Path(model_file)
        self.bundle_metadata: dict[str, Any] = read_extra_json(self.model_file, "metadata.json")
        self.names: list[str] = finding_names(self.bundle_metadata)
        self.spatial_size: tuple[int, int] = input_spatial_size(self.bundle_metadata)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.input_name = "study_selected_series_list"
        self.output_name = "study_results"
        self._model: torch.jit.ScriptModule | None = None
        self._preprocess: Any = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name)
        spec.output(self.output_name)

    def start(self) -> None:
        """Load the network, then build the preprocessing it was trained with, once, before the first compute."""
        from mammoclip_monai.data.pipelines import preprocessing

        self._model = torch.jit.load(str(self.model_file), map_location=self.device).eval()
        normalization = model_normalization(self._model)
        if normalization is None:
            self._logger.warning("%s does not say its intensity normalisation (exported before it was recorded): "
                                 "using the default, the original's fixed constants", self.model_file.name)
        self._preprocess = preprocessing(spatial_size=self.spatial_size, normalization=normalization)
        self._logger.info(
            "Loaded %s (%s %s) on %s: input %s, normalisation %s, %d findings: %s",
            self.model_file.name,
            self.bundle_metadata.get("name", "model"),
            self.bundle_metadata.get("version", ""),
            self.device,
            "x".join(str(v) for v in self.spatial_size),
            (normalization or {}).get("mode", "fixed"),
            len(self.names),
            ", ".join(self.names),
        )

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        studies = op_input.receive(self.input_name) or []
        results: list[StudyResult] = []
        for study_index, study in enumerate(studies, start=1):
            images = self.infer_study(study, study_index)
            if images:
                results.append(StudyResult(study, images, self.report(images)))
        if not results:
            self._logger.warning("No MG series in the input: nothing to report")
        op_output.emit(results, self.output_name)

    def infer_study(self, study: StudySelectedSeries, study_index: int) -> list[ImageResult]:
        """Preprocess every instance of the study's selected series, then predict in batches."""
        instances = sorted(
            (sop for selected in study.selected_series for sop in selected.series.get_sop_instances()),
            key=_instance_order,
        )
        images: list[ImageResult] = []
        pending: list[tuple[ImageResult, torch.Tensor]] = []
        for number, sop in enumerate(instances, start=1):
            ds = sop.get_native_sop_instance()
            image = ImageResult(sop_instance_uid=str(ds.get("SOPInstanceUID", "")), label=_view_label(ds))
            images.append(image)
            intent = str(ds.get("PresentationIntentType", "")).upper()
            if intent == "FOR PROCESSING":
                image.skipped_reason = "FOR PROCESSING image (raw detector data); the model needs FOR PRESENTATION"
            else:
                try:
                    tensor = self.preprocess_instance(sop)
                except Exception as exc:
                    # MONAI's Compose re-raises a transform's error as RuntimeError("applying
                    # transform ...") from it: look for the reader's refusal in the chain.
                    from mammoclip_monai.inference.data import read_error

                    refusal = read_error(exc)
                    if refusal is None:
                        raise
                    image.skipped_reason = str(getattr(refusal, "reason", "unreadable image"))
                else:
                    pending.append((image, tensor))
                    # the photometric interpretation says which conversion the project applied
                    self._logger.info(
                        "Study %d image %d/%d: %s, %s, preprocessed to %s",
                        study_index, number, len(instances), image.label,
                        ds.get("PhotometricInterpretation", "?"), tuple(tensor.shape),
                    )
            if image.skipped_reason is not None:
                self._logger.warning(
                    "Study %d image %d/%d (%s) skipped: %s",
                    study_index, number, len(instances), image.label, image.skipped_reason,
                )
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            probabilities = self.predict(torch.stack([tensor for _, tensor in chunk]))
            for (image, _), row in zip(chunk, probabilities.tolist(), strict=True):
                image.probabilities = dict(zip(self.names, row, strict=True))
        return images

    def preprocess_instance(self, sop: DICOMSOPInstance) -> torch.Tensor:
        """The project's preprocessing from the instance's file -> float32 ``(1, H, W)``."""
        with _instance_file(sop.get_native_sop_instance()) as path:
            data = self._preprocess({"image": path})
        image = data["image"]
        tensor = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        return tensor.to(torch.float32)

    @torch.inference_mode()
    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, N)`` probabilities on the CPU, checked against the contract."""
        if self._model is None:
            raise RuntimeError("the model is loaded in start(); compute() ran before it")
        output = self._model(batch.to(self.device))
        output = output.detach().to("cpu", torch.float32)
        if output.ndim != 2 or output.shape != (batch.shape[0], len(self.names)):
            raise RuntimeError(
                f"model output shape {tuple(output.shape)} does not match ({batch.shape[0]}, {len(self.names)}) "
                "from metadata.json's channel_def"
            )
        if not torch.isfinite(output).all() or output.min() < 0.0 or output.max() > 1.0:
            raise RuntimeError("model output is not a probability in [0, 1]; was the right network exported?")
        return output

    def report(self, images: Sequence[ImageResult]) -> str:
        """Plain text for the Text SR: one block per image, ``finding: probability`` per line."""
        analysed = sum(1 for image in images if image.skipped_reason is None)
        model = f"{self.bundle_metadata.get('name', self.model_file.stem)} {self.bundle_metadata.get('version', '')}"
        lines = [
            REPORT_TITLE,
            f"Model: {model.strip()}",
            f"Findings: {', '.join(self.names)}",
            f"Images: {analysed} analysed, {len(images) - analysed} skipped",
        ]
        for number, image in enumerate(images, start=1):
            lines += ["", f"Image {number}: {image.label}", f"SOP Instance UID: {image.sop_instance_uid}"]
            if image.skipped_reason is not None:
                lines.append(f"Not analysed: {image.skipped_reason}")
            else:
                lines += [f"{name}: {value:.4f}" for name, value in image.probabilities.items()]
        return "\n".join(lines)


def _instance_order(sop: DICOMSOPInstance) -> tuple[int, int]:
    """Series number, then instance number: a stable, reader-friendly image order."""
    ds = sop.get_native_sop_instance()

    def number(keyword: str) -> int:
        try:
            return int(ds.get(keyword, 0) or 0)
        except (TypeError, ValueError):
            return 0

    return number("SeriesNumber"), number("InstanceNumber")


def _view_label(ds: Any) -> str:
    """"L CC"-style label from the image's own laterality and view tags (no patient attribute)."""
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "?").strip() or "?"
    view = str(ds.get("ViewPosition", "") or "?").strip() or "?"
    return f"{laterality} {view}"


@contextmanager
def _instance_file(ds: Any) -> Iterator[str]:
    """Yield a path to the instance's DICOM file.

    The SDK's loader reads each instance with ``pydicom.dcmread(path)``, so the dataset knows its
    file (``ds.filename``) and the project's reader can open it directly. A dataset built in memory
    (another loader, a test) is written to a private temporary file that is removed afterwards.
    """
    filename = getattr(ds, "filename", None)
    if isinstance(filename, (str, os.PathLike)) and os.path.isfile(filename):
        yield os.fspath(filename)
        return
    with tempfile.TemporaryDirectory(prefix="mammoclip-deploy-") as folder:
        path = os.path.join(folder, "instance.dcm")
        try:
            ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
        except TypeError:
            ds.save_as(path, write_like_original=False)  # pydicom 2.4
        yield path
