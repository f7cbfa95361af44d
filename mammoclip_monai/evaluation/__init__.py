"""Evaluation: classification metrics, plots and the zero-shot report handler."""

from .metrics import classification_metrics, confusion_matrix, roc_curve, sensitivity_at_specificity
from .plots import plot_confusion_matrix, plot_roc_curves
from .report import ZeroShotReport

__all__ = ["ZeroShotReport", "classification_metrics", "confusion_matrix", "plot_confusion_matrix",
           "plot_roc_curves", "roc_curve", "sensitivity_at_specificity"]
