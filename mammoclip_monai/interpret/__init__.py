"""Interpretability: Mammo-FActOR attribute heads, heatmaps, boxes and their localisation evaluation.

Data flow: image -> frozen encoder feature map (:mod:`.features`) -> per-attribute neuron scores
(:mod:`.factor`) -> heatmap of the top neurons, mapped back to the file's pixels, -> boxes
(:mod:`.heatmaps`) -> IoU / pointing game against annotated boxes (:mod:`.localization`), overlays
(:mod:`.overlay`); :mod:`.explain` runs it on files for the ``mammoclip explain`` command.
"""

from .factor import FActOR, FActORLoss, attribute_embeddings
from .features import FeatureMapExtractor, cache_feature_maps, default_feature_layer
from .heatmaps import ZeroShotLogits, cam_map, factor_heatmap, gradcam_map, heatmap_boxes, normalize_map, to_original
from .localization import (
    METHODS,
    LocalizationEvaluator,
    LocalizationTest,
    best_box_iou,
    ground_truth_boxes,
    pointing_hit,
    summarize,
    write_localization_table,
)
from .metrics import AttributeAUROC, attribute_metrics

__all__ = ["METHODS", "AttributeAUROC", "FActOR", "FActORLoss", "FeatureMapExtractor", "LocalizationEvaluator",
           "LocalizationTest", "ZeroShotLogits", "attribute_embeddings", "attribute_metrics", "best_box_iou",
           "cache_feature_maps", "cam_map", "default_feature_layer", "factor_heatmap", "gradcam_map",
           "ground_truth_boxes", "heatmap_boxes", "normalize_map", "pointing_hit", "summarize", "to_original",
           "write_localization_table"]
