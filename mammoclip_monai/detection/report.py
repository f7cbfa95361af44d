"""What a detection run leaves behind: boxes in file pixels (CSV / JSON), overlay PNGs and the FROC plot.

:class:`DetectionReport` is an Ignite handler on a :class:`~.engines.DetectionEvaluator` (the test run
of the bundle); :func:`write_detections` is the same writing for any list of per-image results
(the ``mammoclip detect`` command). Images are named by file path, never by header fields.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from ..data.geometry import as_boxes
from ..interpret.overlay import load_original, save_overlay
from ..utils.distributed import is_rank_zero
from ..utils.files import atomic_write_text
from .metrics import FROC_RATES, froc_curve, plot_froc

__all__ = ["DETECTION_COLUMNS", "detection_rows", "write_detections", "save_detection_overlay", "DetectionReport"]

DETECTION_COLUMNS = ("file", "class", "score", "x_min", "y_min", "x_max", "y_max")


def detection_rows(path: str, pred: Mapping[str, Any], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per predicted box of one image, best first (boxes in file pixels)."""
    boxes = as_boxes(pred["boxes"])
    scores = np.asarray(pred["scores"], np.float64).reshape(-1)
    labels = np.asarray(pred["labels"], np.int64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    return [{"file": path, "class": class_names[int(labels[i])], "score": round(float(scores[i]), 6),
             **{c: round(float(v), 2) for c, v in zip(DETECTION_COLUMNS[3:], boxes[i], strict=True)}}
            for i in order]


def write_detections(results: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                     output_dir: str | os.PathLike, errors: Sequence[Mapping[str, str]] = (),
                     stem: str = "detections") -> dict[str, Path]:
    """``<stem>.csv`` (one row per box) and ``<stem>.json`` (per image, with the errors), atomically.

    ``results``: ``{"image_path", "pred"}`` per image; images without a box appear in the JSON with
    an empty list, so a reader can tell "looked, found nothing" from "not looked at".
    """
    out = Path(output_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(DETECTION_COLUMNS))
    writer.writeheader()
    images = []
    for result in results:
        rows = detection_rows(result["image_path"], result["pred"], class_names)
        writer.writerows(rows)
        images.append({"file": result["image_path"],
                       "detections": [{k: v for k, v in r.items() if k != "file"} for r in rows]})
    record = {"classes": list(class_names), "box_format": "x_min, y_min, x_max, y_max in file pixels",
              "images": images, "errors": list(errors)}
    return {"csv": atomic_write_text(buffer.getvalue(), out / f"{stem}.csv"),
            "json": atomic_write_text(json.dumps(record, indent=1) + "\n", out / f"{stem}.json")}


def save_detection_overlay(path: str | os.PathLike, image_path: str, pred: Mapping[str, Any],
                           class_names: Sequence[str], truth: Mapping[str, Any] | None = None,
                           min_score: float = 0.3, title: str = "") -> Path:
    """One panel per class over the image as read from its file: boxes scored >= ``min_score`` solid
    (with scores), that class's ground truth (``truth``: ``{"boxes", "labels"}``) dashed."""
    image = load_original(image_path)
    boxes = as_boxes(pred["boxes"])
    scores = np.asarray(pred["scores"], np.float64).reshape(-1)
    labels = np.asarray(pred["labels"], np.int64).reshape(-1)
    empty = np.zeros(image.shape, np.float32)
    panels, gt = {}, {}
    for index, name in enumerate(class_names):
        keep = (labels == index) & (scores >= min_score)
        panels[name] = (empty, boxes[keep], scores[keep])
        if truth is not None:
            gt[name] = as_boxes(truth["boxes"])[np.asarray(truth["labels"]).reshape(-1) == index]
    return save_overlay(path, image, panels, gt_boxes=gt if truth is not None else None, title=title)


class DetectionReport:
    """At the end of an evaluation: detections CSV / JSON, the FROC plot and up to ``overlays`` PNGs.

    Overlays go to the images with ground truth first (then the highest-scored negatives), so the
    pictures show hits, misses and false positives. Only rank 0 writes.
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str], overlays: int = 8,
                 fp_rates: Sequence[float] = FROC_RATES, froc_iou: float = 0.25, min_score: float = 0.3) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.overlays = int(overlays)
        self.fp_rates = tuple(fp_rates)
        self.froc_iou = float(froc_iou)
        self.min_score = float(min_score)
        self.results: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.results = []

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        for path, pred, label in zip(out["image_path"], out["pred"], out["label"], strict=True):
            self.results.append({"image_path": path, "pred": pred, "label": label})

    def _write(self, engine: Engine) -> None:
        if not is_rank_zero():
            return
        write_detections(self.results, self.class_names, self.output_dir)
        preds = [r["pred"] for r in self.results]
        truths = [r["label"] for r in self.results]
        curves = {name: froc_curve(preds, truths, i, iou_threshold=self.froc_iou)
                  for i, name in enumerate(self.class_names)}
        plot_froc(curves, self.output_dir / "froc.png", fp_rates=self.fp_rates,
                  title=f"FROC (IoU >= {self.froc_iou:g}, {len(self.results)} images)")
        for rank, result in enumerate(self._overlay_choice()):
            name = f"overlay_{rank:02d}_{Path(result['image_path']).stem}.png"
            save_detection_overlay(self.output_dir / "overlays" / name, result["image_path"], result["pred"],
                                   self.class_names, truth=result["label"], min_score=self.min_score)

    def _overlay_choice(self) -> list[dict[str, Any]]:
        def top_score(result: Mapping[str, Any]) -> float:
            scores = np.asarray(result["pred"]["scores"]).reshape(-1)
            return float(scores.max()) if scores.size else 0.0

        positives = [r for r in self.results if len(as_boxes(r["label"]["boxes"]))]
        negatives = sorted((r for r in self.results if not len(as_boxes(r["label"]["boxes"]))),
                           key=top_score, reverse=True)
        half = (self.overlays + 1) // 2
        chosen = positives[:half] + negatives[: self.overlays - min(half, len(positives))]
        return chosen[: self.overlays]
