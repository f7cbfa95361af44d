"""Operators of the MammoCLIP MONAI Deploy application (SDK 4.0.0 / Holoscan)."""

from .bundle_model import (
    BundleModelError,
    file_digest,
    read_extra_json,
    resolve_model_file,
)
from .mammoclip_inference import ImageResult, MammoClipInferenceOperator, StudyResult
from .mg_series_selector import MG_RULES, MGSeriesSelectorOperator
from .study_sr_writer import StudyTextSRWriterOperator

__all__ = [
    "BundleModelError",
    "ImageResult",
    "MG_RULES",
    "MGSeriesSelectorOperator",
    "MammoClipInferenceOperator",
    "StudyResult",
    "StudyTextSRWriterOperator",
    "file_digest",
    "read_extra_json",
    "resolve_model_file",
]
