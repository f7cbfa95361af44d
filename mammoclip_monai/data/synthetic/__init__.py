"""Seeded, deterministic synthetic mammography: images, MG DICOM files, reports and CSVs.

Imports only numpy, scipy, pillow and pydicom (no torch), so it is cheap to import from tests,
the CLI and benchmarks. See `docs/data_formats.md` for the layout that `generate_dataset` writes.
"""

from __future__ import annotations

from .dataset import ensure_dataset, generate_dataset, patient_case, render_patient
from .phantom import BreastAnatomy, LesionSpec, LesionTruth, RenderedImage, render_image, sample_anatomy, sample_lesion
from .reports import make_report

__all__ = [
    "BreastAnatomy",
    "LesionSpec",
    "LesionTruth",
    "RenderedImage",
    "ensure_dataset",
    "generate_dataset",
    "make_report",
    "patient_case",
    "render_image",
    "render_patient",
    "sample_anatomy",
    "sample_lesion",
]
