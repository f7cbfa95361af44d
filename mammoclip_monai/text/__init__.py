"""Text side of the data: report sentences, attribute templates for labels, tokenization, MONAI transforms.

Names load on first use, so importing this package does not pull in MONAI or transformers.
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "EmptyReportError": "reports", "EmptyReportPolicy": "reports", "extract_sections": "reports",
    "filter_empty_reports": "reports", "find_sections": "reports", "report_sentences": "reports",
    "sample_texts": "reports", "split_sentences": "reports", "usable_sentences": "reports",
    "AttributeSentenceSampler": "templates", "load_vocabulary": "templates", "location_of_box": "templates",
    "load_tokenizer": "tokenizer", "tokenize": "tokenizer", "MammoTokenizer": "tokenizer",
    "PromptSet": "prompts", "load_prompt_sets": "prompts", "embed_prompt_sets": "prompts", "label_keys": "prompts",
    "zero_shot_probabilities": "prompts",
    "MammoTextd": "transforms", "Tokenized": "transforms", "NON_COLLATABLE_KEYS": "transforms",
    "text_steps": "transforms",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
