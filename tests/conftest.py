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


TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    """A local 'hub model' directory (what a user's Bio_ClinicalBERT copy provides): tiny random BERT
    weights, its config and the bundled tokenizer."""
    import torch
    from transformers import BertModel

    from mammoclip_monai.networks import weights

    directory = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertModel(weights.fallback_text_config(**TINY_BERT)).save_pretrained(str(directory))
    weights.fallback_tokenizer().save_pretrained(str(directory))
    return directory
