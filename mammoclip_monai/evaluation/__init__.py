"""Evaluation: classification metrics, plots, the zero-shot report, linear probe and fine-tuning heads."""

from .metrics import (
    ClassificationReport,
    classification_metrics,
    confusion_matrix,
    logits_to_probabilities,
    roc_curve,
    sensitivity_at_specificity,
)
from .plots import plot_confusion_matrix, plot_roc_curves
from .probe import (
    ImageClassifier,
    breast_mean,
    class_weights,
    embed_datalist,
    embed_images,
    feature_datalist,
    head_outputs,
    image_datalist,
    positive_weight,
    probe_dir,
    probe_features,
    probe_loss,
)
from .report import ZeroShotReport

__all__ = ["ClassificationReport", "ImageClassifier", "ZeroShotReport", "breast_mean", "class_weights",
           "classification_metrics", "confusion_matrix", "embed_datalist", "embed_images", "feature_datalist",
           "head_outputs", "image_datalist", "logits_to_probabilities", "plot_confusion_matrix", "plot_roc_curves",
           "positive_weight", "probe_dir", "probe_features", "probe_loss", "roc_curve", "sensitivity_at_specificity"]
