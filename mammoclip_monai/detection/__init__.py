"""Detection: a RetinaNet (``monai.apps.detection``) on the MammoCLIP image encoder, FROC and COCO AP.

Data flow: datalist item with ``boxes`` / ``box_labels`` in file pixels -> the shared preprocessing
chain (boxes moved with the image) -> :mod:`.boxes` (project boxes <-> MONAI's box order, training
targets) -> :mod:`.network` (encoder stages -> feature pyramid -> RetinaNet heads -> detector) ->
:mod:`.engines` (Ignite trainer / evaluator, predictions mapped back to file pixels) ->
:mod:`.metrics` (FROC, COCO AP at several IoU thresholds, as Ignite metrics).
"""

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "class_boxes": "boxes", "from_monai_order": "boxes", "to_monai_order": "boxes",
    "BOX_KEYS": "data", "DetectionTargetsd": "data", "GeometryRecordd": "data", "RandDetectionAugmentd": "data",
    "boxes_to_file": "data", "detection_collate": "data", "detection_datalist": "data",
    "DetectionEvaluator": "engines", "DetectionTrainer": "engines",
    "DetectionMetrics": "metrics", "FROCCurve": "metrics", "average_precision": "metrics", "detections_of": "metrics",
    "froc_curve": "metrics", "froc_score": "metrics", "froc_sensitivities": "metrics", "plot_froc": "metrics",
    "DEFAULT_CLASSES": "network", "ENCODER_INITS": "network", "EncoderFeaturePyramid": "network",
    "MammoDetector": "network", "initialise_encoder": "network",
    "DetectionReport": "report", "write_detections": "report",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
