"""Localisation evaluation: do an attribute's heatmap and boxes land on the annotated finding?

Per image with the attribute and at least one ground-truth box of it (original file pixels):
the best-scored predicted box's IoU with the nearest ground-truth box (hit at IoU 0.25 and 0.5,
mean IoU) and the pointing game (the heatmap's peak inside a ground-truth box). FActOR, Grad-CAM
and CAM run on the same images with the same box extraction, so the table compares maps only.
:class:`LocalizationTest` is the protocol after training: best heads, thresholds chosen on validation,
the test split evaluated once.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.geometry import as_boxes, box_iou
from ..networks.checkpoints import load_weights
from ..utils.progress import progress as show_progress
from .features import default_feature_layer
from .heatmaps import cam_map, factor_heatmap, gradcam_map, heatmap_boxes, to_original
from .overlay import save_comparison_overlay

logger = logging.getLogger("mammoclip_monai.interpret")

__all__ = ["METHODS", "best_box_iou", "pointing_hit", "summarize", "ground_truth_boxes", "LocalizationEvaluator",
           "LocalizationTest", "write_localization_table"]

METHODS = ("factor", "gradcam", "cam")
METHOD_NAMES = {"factor": "Mammo-FActOR", "gradcam": "Grad-CAM", "cam": "CAM"}


def best_box_iou(pred_boxes: Any, gt_boxes: Any) -> float:
    """IoU of the first (best-scored) predicted box with the ground-truth box it overlaps most; 0 without one."""
    pred, gt = as_boxes(pred_boxes), as_boxes(gt_boxes)
    if len(pred) == 0 or len(gt) == 0:
        return 0.0
    return float(box_iou(pred[:1], gt).max())


def pointing_hit(heatmap: torch.Tensor | np.ndarray, gt_boxes: Any) -> bool:
    """True when the heatmap's maximum (pixel centre) falls inside a ground-truth box (a flat zero map misses)."""
    heat = heatmap.detach().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    if heat.size == 0 or float(heat.max()) <= 0:
        return False
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    x, y = col + 0.5, row + 0.5
    gt = as_boxes(gt_boxes)
    return bool(((gt[:, 0] <= x) & (x <= gt[:, 2]) & (gt[:, 1] <= y) & (y <= gt[:, 3])).any())


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Hit rates at IoU 0.25 / 0.5, mean IoU and pointing-game accuracy of per-image records."""
    ious = np.asarray([r["iou"] for r in records], np.float64)
    points = np.asarray([r["pointing"] for r in records], np.float64)
    if len(records) == 0:
        return {"n": 0, "iou@0.25": math.nan, "iou@0.5": math.nan, "mean_iou": math.nan, "pointing_game": math.nan}
    return {"n": len(records), "iou@0.25": float((ious >= 0.25).mean()), "iou@0.5": float((ious >= 0.5).mean()),
            "mean_iou": float(ious.mean()), "pointing_game": float(points.mean())}


def ground_truth_boxes(item: Mapping[str, Any], finding_names: Sequence[str]) -> np.ndarray:
    """The item's boxes (original pixels) whose category is one of ``finding_names`` (case-insensitive)."""
    wanted = {n.lower() for n in finding_names}
    boxes = as_boxes(item.get("boxes", np.zeros((0, 4))))
    labels = [str(label).lower() for label in item.get("box_labels", [])]
    keep = [i for i, label in enumerate(labels) if label in wanted]
    return boxes[keep] if keep else np.zeros((0, 4), np.float32)


class LocalizationEvaluator:
    """Heatmaps, boxes and localisation metrics of FActOR and the baselines for one model.

    Args:
        model: the MammoCLIP model (its image encoder is what every method reads).
        factor: a trained :class:`~mammoclip_monai.interpret.factor.FActOR`.
        extractor: the :class:`~mammoclip_monai.interpret.features.FeatureMapExtractor` FActOR was trained on.
        preprocessing: the deterministic preprocessing (path -> network input with a geometry trace).
        findings: ``{attribute: [finding category names]}`` of the ground-truth boxes.
        label_keys: ``{attribute: datalist label column}`` (default: the attribute name).
        top_k / threshold / max_boxes: heatmap and box settings (:func:`factor_heatmap`, :func:`heatmap_boxes`).
        thresholds: candidate box thresholds; :meth:`select_thresholds` picks one per attribute and
            method on validation images (the best IoU@0.25 hit rate), which :meth:`evaluate` then
            uses instead of ``threshold``. How tight a box is depends on the threshold more than on
            the map, so each method gets its own, chosen without the test images.
    """

    def __init__(self, model: torch.nn.Module, factor: torch.nn.Module, extractor: torch.nn.Module, preprocessing: Any,
                 findings: Mapping[str, Sequence[str]], label_keys: Mapping[str, str] | None = None,
                 methods: Sequence[str] = METHODS, top_k: int = 10, threshold: float = 0.5, max_boxes: int = 3,
                 device: torch.device | str = "cpu", thresholds: Sequence[float] | None = None,
                 progress: bool = True) -> None:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown localisation method(s) {unknown}; choose from {list(METHODS)}")
        missing = [a for a in factor.attributes if a not in findings]
        if missing:
            raise KeyError(f"no ground-truth finding names for attribute(s) {missing}")
        self.model, self.factor, self.extractor = model, factor, extractor
        self.preprocessing = preprocessing
        self.findings = {a: list(findings[a]) for a in factor.attributes}
        self.label_keys = {a: (label_keys or {}).get(a, a) for a in factor.attributes}
        self.methods = tuple(methods)
        self.top_k, self.threshold, self.max_boxes = int(top_k), float(threshold), int(max_boxes)
        self.device = torch.device(device)
        self.progress = bool(progress)  # a bar over the images of each pass (they take minutes at real sizes)
        self.thresholds = sorted(float(t) for t in (thresholds or []))
        if any(not 0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError(f"box thresholds are fractions of the heatmap peak in (0, 1), got {self.thresholds}")
        self.selected: dict[tuple[str, str], float] = {}

    def threshold_for(self, attribute: str, method: str) -> float:
        """The box threshold of a method for an attribute: chosen on validation, else ``threshold``."""
        return self.selected.get((attribute, method), self.threshold)

    @cached_property
    def cam_layer(self) -> str:
        """CAM's layer: the last feature map (where the pooled embedding comes from, so where CAM is defined);
        Grad-CAM reads FActOR's layer, so that the two map the same activations."""
        return default_feature_layer(self.extractor.encoder)

    def maps(self, image: torch.Tensor, attributes: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
        """``{attribute: {method: (h, w) map}}`` for one preprocessed image ``(1, H, W)``.

        The feature map and the FActOR scores are computed once for all attributes.
        """
        x = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image)[None].to(self.device)
        with torch.no_grad():
            fmap = self.extractor(x)
            scores = self.factor.neuron_scores(fmap)[0]  # (A, C)
        out: dict[str, dict[str, torch.Tensor]] = {}
        for attribute in attributes:
            a = self.factor.attributes.index(attribute)
            embeddings = self.factor.attribute_embeddings[a]
            maps = out[attribute] = {}
            if "factor" in self.methods:
                maps["factor"] = factor_heatmap(fmap[0], scores[a], self.top_k)[0]
            if "gradcam" in self.methods:
                maps["gradcam"] = gradcam_map(self.model, embeddings, x, self.extractor.layer)[0]
            if "cam" in self.methods:
                maps["cam"] = cam_map(self.model, embeddings, x, self.cam_layer)[0]
        return out

    def heatmaps(self, items: Sequence[Mapping[str, Any]], desc: str = "heatmaps"
                 ) -> Iterator[tuple[Mapping[str, Any], str, np.ndarray, dict[str, torch.Tensor]]]:
        """``(item, attribute, ground-truth boxes, {method: heatmap in file pixels})`` for
        every item with the attribute and a box of it (each image preprocessed and embedded once)."""
        for item in show_progress(items, desc, enabled=self.progress):
            truth = {a: ground_truth_boxes(item, self.findings[a]) for a in self.factor.attributes
                     if int(item.get(self.label_keys[a], -1)) == 1}
            truth = {a: gt for a, gt in truth.items() if len(gt)}
            if not truth:
                continue
            image = self.preprocessing(dict(item))["image"]
            for attribute, maps in self.maps(image, list(truth)).items():
                yield item, attribute, truth[attribute], {m: to_original(f.cpu(), image) for m, f in maps.items()}

    def select_thresholds(self, items: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Choose each method's box threshold per attribute on ``items`` (validation): the candidate with the
        best IoU@0.25 hit rate (the lowest among ties). Without candidates, nothing to choose."""
        if not self.thresholds:
            return {}
        hits: dict[tuple[str, str], np.ndarray] = {}
        counts: dict[tuple[str, str], int] = {}
        for _item, attribute, gt, heats in self.heatmaps(items, "choosing box thresholds (validation)"):
            for method, heat in heats.items():
                counts[(attribute, method)] = counts.get((attribute, method), 0) + 1
                row = hits.setdefault((attribute, method), np.zeros(len(self.thresholds)))
                for i, threshold in enumerate(self.thresholds):
                    row[i] += best_box_iou(heatmap_boxes(heat, threshold, self.max_boxes)[0], gt) >= 0.25
        self.selected = {key: self.thresholds[int(np.argmax(row))] for key, row in hits.items()}
        for (attribute, method), threshold in sorted(self.selected.items()):
            logger.info("box threshold for %s / %s chosen on %d validation images: %.2f", attribute, method,
                        counts[(attribute, method)], threshold)
        return {f"{a}/{m}": t for (a, m), t in self.selected.items()}

    def evaluate(self, items: Sequence[Mapping[str, Any]], overlay_dir: str | os.PathLike | None = None,
                 max_overlays: int = 4) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Evaluate on the items that have an attribute and a box of it (each image preprocessed once).

        Returns ``(summary rows, per-image rows)``; writes up to ``max_overlays`` overlay PNGs per
        attribute into ``overlay_dir``.
        """

        per_image: list[dict[str, Any]] = []
        overlays = dict.fromkeys(self.factor.attributes, 0)
        for item, attribute, gt, heats in self.heatmaps(items, "localisation and overlays (test)"):
            panels = {}
            for method, heat in heats.items():
                threshold = self.threshold_for(attribute, method)
                boxes, scores = heatmap_boxes(heat, threshold, self.max_boxes)
                per_image.append({"image": str(item["image"]), "attribute": attribute, "method": method,
                                  "threshold": threshold, "iou": best_box_iou(boxes, gt),
                                  "pointing": pointing_hit(heat, gt),
                                  "box": boxes[0].round(1).tolist() if len(boxes) else []})
                panels[method] = (heat, boxes, scores)
            if overlay_dir is not None and overlays[attribute] < max_overlays:
                name = f"{attribute}_{overlays[attribute]:02d}.png"
                overlays[attribute] += 1
                save_comparison_overlay(Path(overlay_dir) / name, str(item["image"]), panels, gt,
                                        title=f"{attribute}: {Path(str(item['image'])).name}",
                                        method_names=METHOD_NAMES)
        for attribute in self.factor.attributes:
            logger.info("localisation of %s: %d images with a box", attribute,
                        sum(1 for r in per_image if r["attribute"] == attribute and r["method"] == self.methods[0]))
        summary = []
        for attribute in self.factor.attributes:
            for method in self.methods:
                rows = [r for r in per_image if r["attribute"] == attribute and r["method"] == method]
                summary.append({"attribute": attribute, "method": method,
                                 "threshold": self.threshold_for(attribute, method), **summarize(rows)})
        return summary, per_image


def write_localization_table(summary: Sequence[Mapping[str, Any]], per_image: Sequence[Mapping[str, Any]],
                             out_dir: str | os.PathLike) -> Path:
    """``localization.json`` / ``.csv`` / ``.md`` (one table) and ``localization_per_image.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["attribute", "method", "n", "threshold", "iou@0.25", "iou@0.5", "mean_iou", "pointing_game"]
    (out / "localization.json").write_text(json.dumps(list(summary), indent=2) + "\n", encoding="utf-8")
    with open(out / "localization.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary)
    with open(out / "localization_per_image.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "attribute", "method", "threshold", "iou", "pointing", "box"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "box": " ".join(str(v) for v in r["box"])} for r in per_image)

    def cell(value: float) -> str:
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"

    lines = ["| attribute | method | images | box threshold | IoU@0.25 hit | IoU@0.5 hit | mean IoU | pointing game |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary:
        lines.append(f"| {row['attribute']} | {METHOD_NAMES.get(row['method'], row['method'])} | {row['n']} | "
                     f"{row.get('threshold', float('nan')):.2f} | "
                     + " | ".join(cell(row[c]) for c in columns[4:]) + " |")
    path = out / "localization.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class LocalizationTest:
    """The localisation test of a trained FActOR, once, as ``factor.json`` runs it after training.

    :meth:`run` loads the best heads (``weights``, the best validation checkpoint) into the evaluator's
    FActOR, chooses each method's box threshold on the ``validation`` items
    (:meth:`LocalizationEvaluator.select_thresholds`), evaluates the ``test`` items with up to
    ``max_overlays`` overlays per attribute in ``out_dir/overlays``, and writes the tables
    (:func:`write_localization_table`) into ``out_dir``. Nothing runs at construction.
    """

    def __init__(self, evaluator: LocalizationEvaluator, weights: str | os.PathLike,
                 validation: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]],
                 out_dir: str | os.PathLike, max_overlays: int = 4) -> None:
        self.evaluator = evaluator
        self.weights = weights
        self.validation, self.test = validation, test
        self.out_dir = Path(out_dir)
        self.max_overlays = int(max_overlays)

    def run(self) -> Path:
        """Load, select, evaluate, write; the path of ``localization.md``."""
        load_weights(self.evaluator.factor, self.weights)
        self.evaluator.select_thresholds(self.validation)
        summary, per_image = self.evaluator.evaluate(self.test, self.out_dir / "overlays", self.max_overlays)
        return write_localization_table(summary, per_image, self.out_dir)
