"""Explain mammograms with a trained FActOR: per attribute a probability, boxes, an overlay, top neurons.

What ``mammoclip explain`` runs (and, through :class:`DatalistExplanations`, ``inference.json`` with
``factor_overlays``). Files that cannot be read are reported and skipped; the others are processed.
Outputs name images by file path only (nothing from the DICOM header):
    <out>/explanations.json   per image and attribute: probability (``"head": "factor"``: FActOR's, not the
                              zero-shot head's of ``mammoclip predict``), boxes (original pixels), top neurons
    <out>/neurons.csv         per attribute, its most frequent top neurons and their scores for every attribute
    <out>/overlays/*.png      heatmaps and boxes on the mammogram, one panel per attribute
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.pipelines import preprocessing
from ..networks.zero_shot import ZeroShotClassifier
from ..utils.errors import InvalidInputError, user_error
from ..utils.files import atomic_write_text
from .factor import FActOR, read_factor_state
from .features import FeatureMapExtractor
from .heatmaps import factor_heatmap, heatmap_boxes, to_original
from .overlay import load_original, save_overlay

logger = logging.getLogger("mammoclip_monai.interpret")

__all__ = ["DatalistExplanations", "Explainer"]


class Explainer:
    """A MammoCLIP image encoder + a trained FActOR, with the preprocessing the model expects.

    Args:
        model: a :class:`~mammoclip_monai.networks.MammoCLIP` (its ``config.image_size`` and
            ``config.image_normalization`` set the preprocessing).
        factor: the trained FActOR (or the path of its ``factor.pt``).
        layer: the encoder layer FActOR was trained on (default: the one stored with FActOR, else the last
            feature map).
        top_k / threshold / max_boxes: as in :func:`factor_heatmap` and :func:`heatmap_boxes`.
    """

    def __init__(self, model: torch.nn.Module, factor: FActOR | str | os.PathLike, layer: str | None = None,
                 top_k: int = 10, threshold: float = 0.5, max_boxes: int = 3, device: torch.device | str = "cpu",
                 allow_any_modality: bool = False) -> None:

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        size = tuple(self.model.config.image_size)
        if not isinstance(factor, FActOR):  # a factor.pt: every problem with it is one InvalidInputError line

            path = Path(factor)
            state = read_factor_state(path)
            extra = state.get("_extra_state")
            stored_layer = extra.get("layer") if isinstance(extra, dict) else None
            stored_layer = stored_layer if isinstance(stored_layer, str) else None  # from_state_dict names bad ones
            try:
                self.extractor = FeatureMapExtractor(self.model.image_encoder, layer or stored_layer)
            except AttributeError:
                if layer is not None:
                    raise
                raise InvalidInputError(path, f"FActOR was trained on the encoder layer {stored_layer!r}, which this "
                                              "model's image encoder does not have; use the model it was trained "
                                              "with") from None
            with torch.no_grad():
                probe = self.extractor(torch.zeros(1, self.model.config.in_chans, *size, device=self.device))
            factor = FActOR.from_state_dict(state, probe.shape[-2:], source=path)
            try:
                factor._check(probe)
            except ValueError as err:
                raise InvalidInputError(path, f"does not fit this model's feature maps: {err}") from None
        else:
            self.extractor = FeatureMapExtractor(self.model.image_encoder, layer or factor.layer)
        self.factor = factor.to(self.device).eval()
        self.preprocessing = preprocessing(spatial_size=size, allow_any_modality=allow_any_modality,
                                           normalization=self.model.config.image_normalization)
        self.top_k, self.threshold, self.max_boxes = int(top_k), float(threshold), int(max_boxes)

    @torch.no_grad()
    def explain_file(self, path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, tuple]]:
        """One file -> (its JSON record, ``{attribute: (heatmap in original pixels, boxes, scores)}``)."""
        image = self.preprocessing({"image": str(path)})["image"]
        fmap = self.extractor(image.as_tensor()[None].to(self.device))
        similarities = self.factor.similarities(fmap)  # once: for the probabilities and the neuron scores
        probabilities = torch.softmax(self.factor.pool(similarities)[0], dim=-1)[:, 1]
        scores = similarities[0, ..., 1]  # (A, C)
        record: dict[str, Any] = {"image": str(path), "attributes": {}}
        panels = {}
        for a, attribute in enumerate(self.factor.attributes):
            heatmap, top, weights = factor_heatmap(fmap[0], scores[a], self.top_k)
            heat = to_original(heatmap.cpu(), image)
            boxes, box_scores = heatmap_boxes(heat, self.threshold, self.max_boxes)
            record["attributes"][attribute] = {
                "probability": round(float(probabilities[a]), 6),
                "boxes": [{"box": [round(float(v), 1) for v in box], "score": round(float(s), 4)}
                          for box, s in zip(boxes, box_scores)],
                "top_neurons": [{"neuron": int(n), "score": round(float(scores[a, n]), 4),
                                 "weight": round(float(w), 4)} for n, w in zip(top, weights)],
                "neuron_scores_all_attributes": {int(n): [round(float(v), 4) for v in scores[:, n]] for n in top},
            }
            panels[f"{attribute} (p={float(probabilities[a]):.2f})"] = (heat, boxes, box_scores)
        return record, panels

    def explain(self, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, overlays: bool = True,
                progress: bool = False) -> dict[str, Any]:
        """Explain every file; write ``explanations.json``, ``neurons.csv`` and overlays; return the summary."""

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        records, errors = [], []
        iterator: Any = paths
        if progress:
            from tqdm import tqdm

            iterator = tqdm(paths, desc="explain", unit="image")
        for path in iterator:
            try:
                record, panels = self.explain_file(path)
            except Exception as err:  # a file that cannot be read must not lose the others; a bug stops the run
                bad_input = user_error(err)
                if bad_input is None:
                    raise
                reason = getattr(bad_input, "reason", str(bad_input))  # the reader's reason, not MONAI's wrapper
                logger.warning("could not read %s: %s", path, reason)
                errors.append({"image": str(path), "error": reason})
                continue
            if overlays:
                name = f"{Path(path).stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}.png"
                record["overlay"] = str(Path("overlays") / name)
                save_overlay(out / record["overlay"], load_original(path), panels, title=Path(path).name)
            records.append(record)
        summary = {"head": "factor", "attributes": list(self.factor.attributes), "layer": self.extractor.layer,
                   "images": records, "errors": errors}
        atomic_write_text(json.dumps(summary, indent=1) + "\n", out / "explanations.json")
        write_neuron_table(records, self.factor.attributes, out / "neurons.csv")
        return summary



class DatalistExplanations:
    """FActOR explanations of a datalist's images as one step of a run (``inference.json``'s ``explanations``).

    Nothing happens at construction: :meth:`run` builds the :class:`Explainer` from ``model`` as it is by
    then (the inference run has loaded its checkpoint into it) and explains every item's ``image_key``
    into ``out_dir``. ``model`` is a MammoCLIP or a
    :class:`~mammoclip_monai.networks.zero_shot.ZeroShotClassifier`, whose MammoCLIP (the one it holds
    aside for its prompts) is the one explained. With ``enabled=False`` :meth:`run` does nothing.
    """

    def __init__(self, model: torch.nn.Module, factor: FActOR | str | os.PathLike,
                 datalist: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, enabled: bool = True,
                 device: torch.device | str = "cpu", allow_any_modality: bool = False, image_key: str = "image",
                 progress: bool = True) -> None:
        self.model, self.factor, self.datalist, self.out_dir = model, factor, datalist, out_dir
        self.enabled = bool(enabled)
        self.device, self.allow_any_modality = device, allow_any_modality
        self.image_key, self.progress = image_key, bool(progress)

    def run(self) -> dict[str, Any] | None:
        """Explain the datalist (the summary :meth:`Explainer.explain` returns), or ``None`` when disabled."""
        if not self.enabled:
            return None
        model = self.model.text_model if isinstance(self.model, ZeroShotClassifier) else self.model
        explainer = Explainer(model, self.factor, device=self.device, allow_any_modality=self.allow_any_modality)
        return explainer.explain([item[self.image_key] for item in self.datalist], self.out_dir,
                                 progress=self.progress)

def write_neuron_table(records: Sequence[dict[str, Any]], attributes: Sequence[str], path: str | os.PathLike) -> Path:
    """Per attribute, each neuron that was in its top-k: how often, its mean score for every attribute,
    and which attributes' top-k lists it appeared in (``aligned_with``)."""
    counts: dict[str, dict[int, int]] = {a: defaultdict(int) for a in attributes}
    sums: dict[int, np.ndarray] = {}
    seen: dict[int, int] = defaultdict(int)
    for record in records:
        for attribute, info in record["attributes"].items():
            for neuron, values in info["neuron_scores_all_attributes"].items():
                counts[attribute][int(neuron)] += 1
                sums[int(neuron)] = sums.get(int(neuron), np.zeros(len(attributes))) + np.asarray(values)
                seen[int(neuron)] += 1
    columns = ["attribute", "neuron", "images_in_top_k", *[f"mean_score_{a}" for a in attributes], "aligned_with"]
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for attribute in attributes:
            for neuron, count in sorted(counts[attribute].items(), key=lambda kv: (-kv[1], kv[0])):
                means = sums[neuron] / seen[neuron]
                aligned = [a for a in attributes if neuron in counts[a]]
                writer.writerow([attribute, neuron, count, *[f"{m:.4f}" for m in means], ";".join(aligned)])
    return path
