"""Shared fixtures: one small synthetic dataset per test session (generated once, a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL_PATIENTS = 13  # 52 images: enough for the "50 synthetic images" checks
SMALL_SIZE = (512, 416)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A 13-patient synthetic dataset at 512 x 416 (read-only: copy before modifying)."""
    from mammoclip_monai.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate_dataset(root, n_patients=SMALL_PATIENTS, seed=123, image_size=SMALL_SIZE, workers=2, progress=False)
    return root
