"""Data efficiency: linear probe and fine-tuning at several fractions of the training patients.

Each (method, task, fraction) is one run of a bundle workflow through ``monai.bundle.ConfigWorkflow``;
the caller names the config files of each method (the ``mammoclip data-efficiency`` command passes the
bundle's ``linear_probe.json`` / ``finetune.json`` over ``train.json``), so this module knows no bundle
file. A run is set by the bundle's probe keys (``probe_task``, ``probe_fraction``, ``probe_dir``) and
reports through its ``metrics.json`` and ``probe#train_data``. Fractions are patient-level and nested
(the 10 % patients are inside the 50 % patients, same seed), model selection uses the validation split
and the test split is read once per run. The results become a CSV, a Markdown table and a plot (metric
against fraction, one line per method and task).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .probe import probe_dir

logger = logging.getLogger("mammoclip_monai.evaluation")

ConfigFiles = Sequence[str | os.PathLike]
"""The config files of one method, merged in order (later files override earlier keys)."""


def run_one(configs: ConfigFiles, method: str, task: str, fraction: float, out_dir: str | os.PathLike,
            overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One probe/fine-tune run of the workflow ``configs``; returns its test metrics (``test_auroc``, ...)
    and the best validation epoch. It writes into :func:`~mammoclip_monai.evaluation.probe.probe_dir`
    ``(out_dir, method, task, fraction)``."""
    from monai.bundle import ConfigWorkflow

    run_dir = Path(probe_dir(out_dir, method, task, fraction))
    workflow = ConfigWorkflow(config_file=[os.fspath(c) for c in configs], workflow_type="train", run_id="training",
                              **{"probe_task": task, "probe_fraction": fraction, "probe_dir": str(run_dir),
                                 **dict(overrides or {})})
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    record = json.loads((run_dir / "metrics.json").read_text())
    return {"method": method, "task": task, "fraction": fraction, "best_epoch": record.get("best", {}).get("epoch"),
            "n_train": len(workflow.parser.get_parsed_content("probe#train_data")), **record.get("test", {})}


def data_efficiency(methods: Mapping[str, ConfigFiles], out_dir: str | os.PathLike,
                    tasks: Sequence[str] = ("mass",), fractions: Sequence[float] = (0.1, 0.5, 1.0),
                    overrides: Mapping[str, Any] | None = None, metric: str = "test_auroc") -> list[dict[str, Any]]:
    """Run every (method, task, fraction), ``methods`` mapping each method's name to its config files (in
    the order the rows and the plot list them); write ``results.csv``, ``results.md`` and
    ``data_efficiency.png``."""
    out_dir = Path(out_dir)
    rows = []
    for method, configs in methods.items():
        for task in tasks:
            for fraction in fractions:
                logger.info("data efficiency: %s, %s, %d %% of the training patients", method, task,
                            round(fraction * 100))
                rows.append(run_one(configs, method, task, fraction, out_dir, overrides))
    write_results(rows, out_dir, metric)
    return rows


def write_results(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, metric: str = "test_auroc") -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["method", "task", "fraction", "n_train", "best_epoch", "test_auroc", "test_balanced_accuracy",
               "test_accuracy"]
    with open(out_dir / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    fractions = sorted({r["fraction"] for r in rows})
    lines = ["| method | task | " + " | ".join(f"{round(f * 100)} %" for f in fractions) + " |",
             "|---|---|" + "---|" * len(fractions)]
    for method, task in dict.fromkeys((r["method"], r["task"]) for r in rows):
        cells = []
        for fraction in fractions:
            match = [r for r in rows if (r["method"], r["task"], r["fraction"]) == (method, task, fraction)]
            value = match[0].get(metric, math.nan) if match else math.nan
            cells.append("n/a" if not math.isfinite(value) else f"{value:.3f}")
        lines.append(f"| {method.replace('_', ' ')} | {task} | " + " | ".join(cells) + " |")
    (out_dir / "results.md").write_text(f"{metric.replace('test_', 'test ')} by fraction of training patients\n\n"
                                        + "\n".join(lines) + "\n", encoding="utf-8")
    plot_efficiency(rows, out_dir / "data_efficiency.png", metric)


def plot_efficiency(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, metric: str = "test_auroc") -> Path:
    from .plots import pyplot, save_figure

    plt = pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            points = sorted((r["fraction"], r.get(metric, math.nan)) for r in rows
                            if r["task"] == task and r["method"] == method)
            if points:
                ax.plot([100 * f for f, _ in points], [v for _, v in points], marker="o", color=f"C{i}",
                        label=method.replace("_", " "))
        ax.set(title=task, xlabel="training patients (%)", ylabel=metric.replace("test_", "test "), ylim=(0.4, 1.02))
        ax.set_xticks([100 * f for f in sorted({r["fraction"] for r in rows})])
        ax.legend(frameon=False, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
