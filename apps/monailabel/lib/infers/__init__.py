"""Inference tasks of the MammoCLIP MONAI Label app."""

from .classification import MammoClipClassification

__all__ = ["MammoClipClassification"]
