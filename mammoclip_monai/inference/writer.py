"""Prediction files: ``predictions.csv`` (one row per image) and ``predictions.json`` (with the errors).

Images are named by file path and content hash only, never by anything from the DICOM header.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from ..utils.files import atomic_write_text

__all__ = ["IDENTITY_COLUMNS", "write_predictions", "batch_identity", "batch_rows", "PredictionWriter"]

IDENTITY_COLUMNS = ("file", "image_hash", "laterality", "view")


def write_predictions(rows: Sequence[dict[str, Any]], errors: Sequence[dict[str, str]], output_dir: str | os.PathLike,
                      names: Sequence[str], stem: str = "predictions") -> dict[str, Path]:
    """Write ``<stem>.csv`` (identity columns + one column per output) and ``<stem>.json``; atomically."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*IDENTITY_COLUMNS, *names], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: row.get(k, "") for k in IDENTITY_COLUMNS},
                         **{n: f"{row['probabilities'][n]:.6f}" for n in names}})
    paths = {"csv": atomic_write_text(buffer.getvalue(), out / f"{stem}.csv"),
             "json": atomic_write_text(json.dumps({"outputs": list(names), "predictions": list(rows),
                                                   "errors": list(errors)}, indent=1) + "\n", out / f"{stem}.json")}
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
    (``decollate=False``).
    """

    def __init__(self, output_dir: str | os.PathLike, names: Sequence[str], stem: str = "predictions") -> None:
        self.output_dir = Path(output_dir)
        self.names = list(names)
        self.stem = stem
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
        paths = write_predictions(self.rows, self.errors, self.output_dir, self.names, self.stem)
        engine.logger.info(f"wrote {len(self.rows)} prediction(s) to {paths['csv']}"
                           + (f"; {len(self.errors)} file(s) could not be read: "
                              + "; ".join(f"{e['file']}: {e['error']}" for e in self.errors) if self.errors else ""))
