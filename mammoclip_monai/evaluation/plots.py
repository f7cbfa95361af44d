"""ROC curves and confusion matrices as PNG (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.auroc import binary_auroc
from ..utils.files import atomic_path
from .metrics import roc_curve


def pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend (plots are files, never windows)."""
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plots need matplotlib: pip install matplotlib") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
                    title: str = "ROC") -> Path:
    """One panel, one line per ``{label: (scores, binary labels)}``; AUROC in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for label, (scores, truth) in curves.items():
        truth = np.asarray(truth).astype(bool)
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(scores, truth)
        auc = binary_auroc(scores, truth)
        ax.plot(fpr, tpr, lw=1.8, label=f"{label} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", ls="--", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(frameon=False, loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike,
                          title: str = "confusion matrix") -> Path:
    """Counts with row-normalised colour (recall per true class)."""
    plt = pyplot()
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = 1.2 + 0.7 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG atomically (a killed run leaves the previous file) and close it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
