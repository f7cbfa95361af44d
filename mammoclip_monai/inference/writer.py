"""Prediction files: ``predictions.csv`` (one row per image) and ``predictions.json`` (with the errors).

Images are named by file path and content hash only, never by anything from the DICOM header.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from ..utils.errors import InputsFailedError, as_flag
from ..utils.files import atomic_write_text

logger = logging.getLogger("mammoclip_monai.inference")

__all__ = ["IDENTITY_COLUMNS", "ZERO_SHOT_HEAD", "write_predictions", "batch_identity", "batch_rows",
           "PredictionWriter"]

IDENTITY_COLUMNS = ("file", "image_hash", "laterality", "view")


ZERO_SHOT_HEAD = "zero_shot"
"""The ``head`` value of zero-shot probabilities (image embedding vs. prompt embeddings); FActOR's is ``factor``."""


def write_predictions(rows: Sequence[dict[str, Any]], errors: Sequence[dict[str, str]], output_dir: str | os.PathLike,
                      names: Sequence[str], stem: str = "predictions", head: str = ZERO_SHOT_HEAD) -> dict[str, Path]:
    """Write ``<stem>.csv`` (identity columns, the head, one column per output) and ``<stem>.json``; atomically.

    ``head`` says which head produced the probabilities, in both files: the same image gets different
    "mass" probabilities from the zero-shot head and from FActOR.
    """
    out = Path(output_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*IDENTITY_COLUMNS, "head", *names], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: row.get(k, "") for k in IDENTITY_COLUMNS}, "head": head,
                         **{n: f"{row['probabilities'][n]:.6f}" for n in names}})
    record = {"head": head, "outputs": list(names), "predictions": list(rows), "errors": list(errors)}
    paths = {"csv": atomic_write_text(buffer.getvalue(), out / f"{stem}.csv"),
             "json": atomic_write_text(json.dumps(record, indent=1) + "\n", out / f"{stem}.json")}
    return paths


def batch_identity(batch: dict[str, Any]) -> list[dict[str, str]]:
    """Per image of a collated batch, its identity columns from the reader's safe metadata (no header fields)."""
    if "image" not in batch:
        return []
    meta = getattr(batch["image"], "meta", {}) or {}
    count = batch["image"].shape[0]

    def column(key: str) -> list[str]:
        values = meta.get(key, [""] * count)
        return [str(v) for v in (values if isinstance(values, (list, tuple)) else [values] * count)]

    columns = {k: column("filename_or_obj" if k == "file" else k) for k in IDENTITY_COLUMNS}
    return [{k: columns[k][i] for k in IDENTITY_COLUMNS} for i in range(count)]


def batch_rows(batch: dict[str, Any], probabilities: torch.Tensor, names: Sequence[str]) -> list[dict[str, Any]]:
    """One record per image of a collated batch: identity + ``probabilities`` ``{name: p}``."""
    values = probabilities.detach().float().cpu().tolist()
    return [{**identity, "probabilities": dict(zip(names, map(float, row)))}
            for identity, row in zip(batch_identity(batch), values)]


class PredictionWriter:
    """Ignite handler: collect each iteration's ``pred`` and write the prediction files when the run completes.

    Reads the batch the engine ran (``engine.state.batch``, with the ``failed`` records of
    :func:`~mammoclip_monai.inference.collate_readable`) and ``engine.state.output["pred"]``
    (``decollate=False``). At the end it logs one line per input that failed and a summary line;
    with ``fail_on_errors=True``, :meth:`raise_on_errors` (called after the run) raises
    :class:`~mammoclip_monai.utils.InputsFailedError` (exit status 1 in a bundle run).
    """

    def __init__(self, output_dir: str | os.PathLike, names: Sequence[str], stem: str = "predictions",
                 fail_on_errors: bool = False, head: str = ZERO_SHOT_HEAD) -> None:
        self.output_dir = Path(output_dir)
        self.names = list(names)
        self.stem = stem
        self.fail_on_errors = as_flag(fail_on_errors, "fail_on_errors")
        self.head = head
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows, self.errors = [], []

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        self.errors.extend(batch.get("failed", []))
        pred = output["pred"] if isinstance(output, dict) else output
        if isinstance(pred, (list, tuple)):  # decollated output
            pred = torch.stack([p if isinstance(p, torch.Tensor) else p["pred"] for p in pred]) if pred else None
        if pred is not None and pred.shape[0]:
            if pred.shape[-1] != len(self.names):
                raise ValueError(f"the network gave {pred.shape[-1]} outputs per image, {len(self.names)} names "
                                 "configured: the prompt sets and output_names disagree")
            self.rows.extend(batch_rows(batch, pred, self.names))

    def _write(self, engine: Engine) -> None:
        paths = write_predictions(self.rows, self.errors, self.output_dir, self.names, self.stem, self.head)
        for error in self.errors:
            logger.warning("could not read %s: %s", error["file"], error["error"])
        total = len(self.rows) + len(self.errors)
        summary = (f"predicted {len(self.rows)} of {total} image(s) ({self.head} head: {', '.join(self.names)}) "
                   f"into {paths['csv']}" + (f"; {len(self.errors)} failed (listed above and in {paths['json'].name})"
                                             if self.errors else ""))
        logger.info(summary)

    def raise_on_errors(self) -> None:
        """After the run: with ``fail_on_errors``, failed inputs end it with exit status 1 (outside Ignite,
        whose StatsHandler would log a traceback for an error raised inside the engine)."""
        if self.errors and self.fail_on_errors:
            total = len(self.rows) + len(self.errors)
            raise InputsFailedError(f"{len(self.errors)} of {total} input(s) failed (fail_on_errors is set); "
                                    f"the others are in {self.output_dir / (self.stem + '.csv')}")
