"""ZeroShotReport: an Ignite handler that turns an evaluation run into files people read.

Attached to a :class:`~mammoclip_monai.engines.ContrastiveEvaluator`, it keeps every image's
zero-shot class probabilities and labels, and when the run completes writes to ``output_dir``:

- ``metrics.json``: per task, :func:`~mammoclip_monai.evaluation.metrics.classification_metrics`
  (per-class and macro AUROC, accuracy, balanced accuracy, sensitivity at a fixed specificity,
  confusion matrix), plus the evaluator's own scalar metrics (retrieval recall@K, ...);
- ``predictions.csv``: one row per image, named by its file path (never a patient identifier),
  with each task's label, class probabilities and predicted class;
- ``roc_binary.png`` (every binary task), ``roc_<task>.png`` (one-vs-rest, multi-class tasks) and
  ``confusion_<task>.png``;
- TensorBoard scalars ``<prefix><task>_<metric>`` when a summary writer is given.

It runs in one process: under DDP attach it on rank 0 with an evaluator over the whole split.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..engines.handlers import scalar_metrics
from ..utils.files import atomic_path, atomic_write_text
from .metrics import classification_metrics, metric_name
from .plots import plot_confusion_matrix, plot_roc_curves

logger = logging.getLogger("mammoclip_monai.evaluation")


class ZeroShotReport:
    """Collect zero-shot outputs during an evaluation run and write metrics, predictions and plots.

    Args:
        output_dir: where the files go (created).
        tasks: prompt-set names to report (default: every prompt set of the evaluator).
        specificity: the operating point of ``sensitivity_at_<spec>spec`` for binary tasks.
        summary_writer: optional TensorBoard ``SummaryWriter``.
        prefix: TensorBoard tag prefix.
        extra: more JSON-serialisable context for ``metrics.json`` (checkpoint, split, ...).
    """

    def __init__(self, output_dir: str | os.PathLike, tasks: Sequence[str] | None = None, specificity: float = 0.9,
                 summary_writer: Any = None, prefix: str = "eval_", extra: dict[str, Any] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.tasks = None if tasks is None else list(tasks)
        self.specificity = float(specificity)
        self.writer = summary_writer
        self.prefix = prefix
        self.extra = dict(extra or {})
        self.results: dict[str, Any] = {}
        self._reset()

    def _reset(self, engine: Engine | None = None) -> None:
        self._paths: list[str] = []
        self._probs: dict[str, list[torch.Tensor]] = {}
        self._labels: dict[str, list[torch.Tensor]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _task_names(self, engine: Engine) -> list[str]:
        available = list(engine.prompt_sets)
        if self.tasks is None:
            return available
        missing = [t for t in self.tasks if t not in available]
        if missing:
            raise KeyError(f"ZeroShotReport: the evaluator has no prompt set for {missing}; it has {available}")
        return self.tasks

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        self._paths.extend(output.get("image_path", []))
        for task in self._task_names(engine):
            if task not in output["labels"]:
                label_key = engine.prompt_sets[task].label_key
                raise KeyError(f"zero-shot task {task!r} needs the label column {label_key!r}, which the "
                               f"datalist does not have")
            self._probs.setdefault(task, []).append(output["zero_shot"][task].detach().float().cpu())
            self._labels.setdefault(task, []).append(output["labels"][task].detach().cpu())

    def _write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tasks: dict[str, Any] = {}
        binary_curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        columns: dict[str, list[Any]] = {"image": list(self._paths)}
        for task in self._task_names(engine):
            prompt_set = engine.prompt_sets[task]
            probs = torch.cat(self._probs[task]).numpy()
            labels = torch.cat(self._labels[task]).numpy()
            keys = [metric_name(n) for n in prompt_set.names]
            result = classification_metrics(probs, labels, class_names=keys, specificity=self.specificity, task=task)
            result["classes"] = list(prompt_set.names)
            result["label_key"] = prompt_set.label_key
            tasks[task] = result
            known = labels >= 0
            if len(prompt_set.values) == 2:
                binary_curves[task] = (probs[known, 1], labels[known] == 1)
            else:
                plot_roc_curves({name: (probs[known, i], labels[known] == i)
                                 for i, name in enumerate(prompt_set.names)},
                                self.output_dir / f"roc_{task}.png", title=f"zero-shot {task} (one-vs-rest)")
            plot_confusion_matrix(result["confusion_matrix"], prompt_set.names,
                                  self.output_dir / f"confusion_{task}.png",
                                  title=f"zero-shot {task}")
            values = np.asarray(prompt_set.values)
            columns[f"{task}_label"] = [int(values[i]) if i >= 0 else "" for i in labels]
            for i, key in enumerate(keys):
                columns[f"{task}_p_{key}"] = [f"{p:.6f}" for p in probs[:, i]]
            columns[f"{task}_pred"] = [int(v) for v in values[probs.argmax(axis=1)]]
        if binary_curves:
            plot_roc_curves(binary_curves, self.output_dir / "roc_binary.png", title="zero-shot, binary tasks")
        self.results = {**self.extra, "n_images": len(self._paths), "tasks": tasks,
                        "evaluator_metrics": scalar_metrics(engine.state.metrics)}
        atomic_write_text(json.dumps(self.results, indent=2, allow_nan=True) + "\n", self.output_dir / "metrics.json")
        self._write_csv(columns)
        if self.writer is not None:
            for task, result in tasks.items():
                for name, value in result.items():
                    if isinstance(value, float) and math.isfinite(value):
                        self.writer.add_scalar(f"{self.prefix}{task}_{name}", value, 0)
            self.writer.flush()
        summary = ", ".join(f"{t} AUROC {r['auroc']:.3f}" for t, r in tasks.items())
        logger.info("zero-shot evaluation of %d images: %s; written to %s", len(self._paths), summary, self.output_dir)

    def _write_csv(self, columns: dict[str, list[Any]]) -> None:
        n = len(columns["image"])
        lengths = {k: len(v) for k, v in columns.items() if len(v) != n}
        if lengths:
            raise RuntimeError(f"predictions of unequal length: {n} images but {lengths}")
        with atomic_path(self.output_dir / "predictions.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(list(columns))
            writer.writerows(zip(*columns.values()))
