"""Text side of the data: report sentences, attribute templates for labels, tokenization, MONAI transforms.

Names load on first use, so importing this package does not pull in MONAI or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EmptyReportError": "reports", "EmptyReportPolicy": "reports", "extract_sections": "reports",
    "filter_empty_reports": "reports", "find_sections": "reports", "report_sentences": "reports",
    "sample_texts": "reports", "split_sentences": "reports", "usable_sentences": "reports",
    "AttributeSentenceSampler": "templates", "load_vocabulary": "templates", "location_of_box": "templates",
    "load_tokenizer": "tokenizer", "tokenize": "tokenizer",
    "PromptSet": "prompts", "load_prompt_sets": "prompts", "embed_prompt_sets": "prompts",
    "zero_shot_probabilities": "prompts",
    "MammoTextd": "transforms", "Tokenized": "transforms", "NON_COLLATABLE_KEYS": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
