"""Inference on one's own images: datalists from folders or CSVs, a batch loader that reports bad
files instead of stopping, prediction writers and the :class:`Predictor` Python API.

    from mammoclip_monai.inference import Predictor
    predictor = Predictor.from_pretrained("bundle/models/pretrained")
    predictor.predict("x.dcm", prompts={"mass": ["no mass", "mass"]})   # {"mass": 0.83, ...}
"""

from .data import ImageDataset, PrepareReadableBatch, collate_readable, find_image_files, inference_datalist
from .predictor import Predictor
from .writer import PredictionWriter, write_predictions

__all__ = ["ImageDataset", "PrepareReadableBatch", "collate_readable", "find_image_files", "inference_datalist",
           "Predictor", "PredictionWriter", "write_predictions"]
