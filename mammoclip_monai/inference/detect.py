"""Detection on one's own files: boxes in file pixels, bad files reported and the rest processed.

    from mammoclip_monai.inference.detect import DetectionPredictor
    detector = DetectionPredictor.from_pretrained("bundle/eval/detection/mammoclip_100pct/pretrained")
    results, errors = detector.detect_many(["a.dcm", "folder/"])
    # results[i] = {"image_path": ..., "pred": {"boxes": (N, 4) file pixels, "scores", "labels"}}
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from monai.transforms import Compose

from ..data.pipelines import preprocessing
from ..detection.data import GeometryRecordd, boxes_to_file
from ..detection.network import MammoDetector
from ..engines.evaluator import image_paths
from .data import ImageDataset, collate_readable, inference_datalist

__all__ = ["DetectionPredictor"]


def _collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`collate_readable`, with each readable image's geometry records kept as a list."""
    geometry = [item.pop("geometry") for item in items if "error" not in item]
    batch = collate_readable(items)
    batch["geometry"] = geometry
    return batch


class DetectionPredictor:
    """Runs a trained :class:`~mammoclip_monai.detection.MammoDetector` on mammogram files.

    Files go through the same chain the detector was trained behind (its encoder's input size and
    intensity normalisation, read from the detector's saved description); every box is mapped back
    to the file's pixels through the image's own crop / flip / resize records.
    """

    def __init__(self, detector: MammoDetector, device: torch.device | str | None = None, batch_size: int = 4,
                 num_workers: int = 0, allow_any_modality: bool = False) -> None:
        if detector.image_size is None:
            raise ValueError("the detector has no model_config: its input size and normalisation are unknown")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.detector = detector.eval().to(device)
        self.class_names = list(detector.class_names)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        chain = preprocessing(spatial_size=detector.image_size, allow_any_modality=allow_any_modality,
                              normalization=detector.image_normalization)
        self.preprocessing = Compose([*chain.transforms, GeometryRecordd()])

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> DetectionPredictor:
        """A predictor over a ``MammoDetector.save_pretrained`` directory (the bundle's ``pretrained/``)."""
        return cls(MammoDetector.from_pretrained(path), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.detector.parameters()).device

    def batches(self, inputs: Any) -> Iterator[dict[str, Any]]:
        items = inference_datalist(inputs)
        loader = torch.utils.data.DataLoader(ImageDataset(items, self.preprocessing), batch_size=self.batch_size,
                                             num_workers=self.num_workers, collate_fn=_collate)
        yield from loader

    @torch.no_grad()
    def detect_many(self, inputs: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """``(results, errors)``: per readable image its path and boxes (file pixels); per bad file the reason."""
        results, errors = [], []
        self.detector.eval()
        for batch in self.batches(inputs):
            errors.extend(batch["failed"])
            if "image" not in batch:
                continue
            detections = self.detector(batch["image"].as_tensor().to(self.device))
            for path, found, records in zip(image_paths(batch), detections, batch["geometry"], strict=True):
                results.append({"image_path": path, "pred": {
                    "boxes": boxes_to_file(found["boxes"].float().cpu(), records),
                    "scores": found["scores"].float().cpu().numpy(), "labels": found["labels"].cpu().numpy()}})
        return results, errors
