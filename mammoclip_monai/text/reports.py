"""Free-text reports -> training sentences: keep the findings and impression, split, filter, sample.

Only the FINDINGS and IMPRESSION sections describe the image; history, indication, comparison,
technique and recommendations talk about the patient or the next step, so they are cut away.
What is left is lower-cased, split into sentences, stripped of fragments of two tokens or fewer
("bi-rads 2.", "none."), and sampled into the two texts that image-text pretraining pairs with a
breast (random in training, fixed in validation).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

WANTED_SECTIONS = ("findings", "impression")

# spelling in the report (lower case) -> canonical section name; longest spellings are tried first
SECTION_ALIASES: dict[str, str] = {
    "findings": "findings", "finding": "findings",
    "impressions": "impression", "impression": "impression",
    "clinical history": "history", "history": "history", "clinical information": "history",
    "clinical data": "history",
    "indications": "indication", "indication": "indication", "clinical indication": "indication",
    "reason for examination": "indication", "reason for exam": "indication",
    "comparisons": "comparison", "comparison": "comparison", "prior studies": "comparison",
    "technique": "technique", "procedure": "technique",
    "recommendations": "recommendation", "recommendation": "recommendation",
    "assessment": "assessment", "conclusions": "conclusion", "conclusion": "conclusion",
    "examination": "exam", "exam": "exam",
}

_HEADER_RE = re.compile(
    r"(?<![\w-])(?P<name>" + "|".join(re.escape(a).replace(r"\ ", r"\s+")
                                      for a in sorted(SECTION_ALIASES, key=len, reverse=True))
    + r")(?![\w-])(?P<sep>[ \t]*(?::|-(?=\s)|\u2014))?",
    re.IGNORECASE,
)
_LIST_MARKER_RE = re.compile(r"^[ \t]*(?:\d{1,2}[.)]|[-*\u2022])[ \t]+", re.MULTILINE)
# dots that do not end a sentence: "e.g.", "i.e.", "approx.", "vs.", "dr.", "fig." ...
_ABBREVIATION_RE = re.compile(r"\b(?:e\.g|i\.e|approx|vs|cf|dr|mr|mrs|ms|fig|incl|resp|pt|no(?=\.\s*\d))\.",
                              re.IGNORECASE)
_BOUNDARY_RE = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_TOKEN_RE = re.compile(r"\S*[0-9a-z]\S*")
_PROTECTED_DOT = "\x00"


class EmptyReportPolicy(str, Enum):
    """What to do with an image whose report has no usable sentence."""

    ERROR = "error"  # stop with an EmptyReportError naming the image: a broken CSV should not train silently
    SKIP = "skip"  # drop the item (datalist) or fall back to labels / mark it invalid (transform), and count


class EmptyReportError(ValueError):
    """An image-text item whose report yields no usable sentence; the message names the image."""


def empty_report_policy(policy: EmptyReportPolicy | str) -> EmptyReportPolicy:
    """Validate a policy given as a string (bundle configs) or an enum member."""
    try:
        return EmptyReportPolicy(policy)
    except ValueError:
        raise ValueError(f"empty_report must be one of {[p.value for p in EmptyReportPolicy]}, "
                         f"got {policy!r}") from None


# ----------------------------------------------------------------------------- sections
def _is_line_start(text: str, pos: int) -> bool:
    line_begin = text.rfind("\n", 0, pos) + 1
    return not text[line_begin:pos].strip()


def _after_sentence_end(text: str, pos: int) -> bool:
    before = text[:pos].rstrip()
    return not before or before[-1] in ".;:!?)"


def _accept_header(text: str, match: re.Match, all_caps: bool) -> bool:
    """Tell a header from the same word used in a sentence ("history of surgery", "no prior findings")."""
    name = match.group("name")
    upper = name.upper() == name
    line_start = _is_line_start(text, match.start())
    sentence_start = line_start or _after_sentence_end(text, match.start())
    if match.group("sep"):  # "FINDINGS:", "Impression -"
        return sentence_start or upper
    rest_of_line = text[match.end():].split("\n", 1)[0].strip()
    if line_start and not rest_of_line:  # a header alone on its line
        return True
    # "FINDINGS The breasts are ..." : an upper-case word in mixed-case text starting a sentence
    return sentence_start and upper and not all_caps and bool(rest_of_line)


def find_sections(text: str) -> list[tuple[str, str]]:
    """Split a report into ``(section, body)`` pairs in document order.

    ``section`` is the canonical name (``"findings"``, ``"impression"``, ``"history"``, ...), or
    ``""`` for text before the first recognised header. Headers may be in any casing, with or
    without a colon, on their own line or inline ("FINDINGS: ... IMPRESSION: ...").
    """
    text = text or ""
    letters = [c for c in text if c.isalpha()]
    all_caps = bool(letters) and all(c.isupper() for c in letters)
    headers = [m for m in _HEADER_RE.finditer(text) if _accept_header(text, m, all_caps)]
    sections: list[tuple[str, str]] = []
    preamble = text[: headers[0].start()] if headers else text
    if preamble.strip():
        sections.append(("", preamble.strip()))
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        name = SECTION_ALIASES[re.sub(r"\s+", " ", match.group("name").lower())]
        sections.append((name, text[match.end(): end].strip()))
    return sections


def extract_sections(text: str, wanted: Sequence[str] = WANTED_SECTIONS) -> str:
    """The text of the ``wanted`` sections, in document order, separated by blank lines.

    A report without any recognised header is taken whole (many datasets store the findings
    only); a report with headers but none of the wanted ones gives ``""`` (its text is history
    or technique, not a description of the image).
    """
    canonical = {SECTION_ALIASES.get(w.lower().strip(), w.lower().strip()) for w in wanted}
    sections = find_sections(text)
    if all(name == "" for name, _ in sections):
        return (text or "").strip()
    return "\n\n".join(body for name, body in sections if name in canonical and body)


# ----------------------------------------------------------------------------- sentences
def count_tokens(sentence: str) -> int:
    """Whitespace tokens that contain a letter or digit (punctuation alone does not count)."""
    return len(_TOKEN_RE.findall(sentence.lower()))


def split_sentences(text: str) -> list[str]:
    """Split at sentence ends, blank lines and list items; decimals and abbreviations stay whole.

    A dot followed by a non-space ("1.5 cm") never ends a sentence; a dot after an abbreviation
    ("e.g. ", "approx. ") does not either. "BI-RADS 4." does end one, keeping its number.
    """
    text = _LIST_MARKER_RE.sub("\n\n", text or "")
    text = _ABBREVIATION_RE.sub(lambda m: m.group(0).replace(".", _PROTECTED_DOT), text)
    pieces = _BOUNDARY_RE.split(text)
    return [p.replace(_PROTECTED_DOT, ".").strip() for p in pieces if p and p.strip()]


def clean_sentence(sentence: str) -> str:
    """Lower-case and collapse whitespace."""
    return re.sub(r"\s+", " ", sentence).strip().lower()


def report_sentences(text: str, wanted: Sequence[str] = WANTED_SECTIONS, min_tokens: int = 3) -> list[str]:
    """The usable sentences of a report: wanted sections, lower-cased, split, short ones dropped.

    ``min_tokens=3`` drops sentences of two tokens or fewer (bare "bi-rads 1." or "none.").
    """
    body = extract_sections(text, wanted)
    sentences = (clean_sentence(s) for s in split_sentences(body))
    return [s for s in sentences if count_tokens(s) >= min_tokens]


# ----------------------------------------------------------------------------- sampling
def sample_texts(sentences: Sequence[str], n: int = 2, sentences_per_text: int = 1,
                 rng: np.random.Generator | np.random.RandomState | None = None, train: bool = True) -> list[str]:
    """Draw ``n`` texts of ``sentences_per_text`` sentences each (kept in report order).

    In training the sentences are drawn at random, distinct across the ``n`` texts where the
    report has enough of them, so the two texts of a breast are two different views of it.
    In validation no randomness is used: text ``i`` takes the next ``sentences_per_text``
    sentences after text ``i - 1`` (wrapping around). An empty input gives ``[]``.
    """
    if n < 1 or sentences_per_text < 1:
        raise ValueError(f"n and sentences_per_text must be at least 1, got {n} and {sentences_per_text}")
    sentences = list(sentences)
    if not sentences:
        return []
    count = len(sentences)
    k = min(sentences_per_text, count)
    if not train:
        return [" ".join(sentences[(i * k + j) % count] for j in range(k)) for i in range(n)]
    rng = rng if rng is not None else np.random.default_rng()
    if count >= n * k:
        order = rng.permutation(count)
        picks = [sorted(order[i * k: (i + 1) * k]) for i in range(n)]
    else:
        picks = [sorted(rng.permutation(count)[:k]) for _ in range(n)]
    return [" ".join(sentences[int(j)] for j in pick) for pick in picks]


# ----------------------------------------------------------------------------- datalist filtering
def item_name(item: Mapping[str, Any], index: int | None = None) -> str:
    """How an error message refers to an item: its image path (and datalist index when known)."""
    image = item.get("image", "")
    meta = getattr(image, "meta", None)
    path = meta.get("filename_or_obj", "") if isinstance(meta, Mapping) else image
    where = f"image {path!s}" if path else "an item without an image path"
    return f"{where} (item {index})" if index is not None else where


def empty_report_message(item: Mapping[str, Any], index: int | None = None) -> str:
    """The EmptyReportError message: which image, and why its report is unusable."""
    return (f"{item_name(item, index)}: the report has no usable sentences (no FINDINGS/IMPRESSION text left "
            "after dropping sentences of two tokens or fewer); fix the CSV or set empty_report='skip'")


def usable_sentences(item: Mapping[str, Any], policy: EmptyReportPolicy | str = "error",
                     wanted: Sequence[str] = WANTED_SECTIONS, min_tokens: int = 3, report_key: str = "report",
                     index: int | None = None) -> list[str] | None:
    """The report sentences of an item, with the empty-report policy applied.

    Returns the sentences, or None for an empty report under ``"skip"`` (the caller counts and
    logs); raises :class:`EmptyReportError` naming the image under ``"error"``.
    """
    policy = empty_report_policy(policy)
    sentences = report_sentences(str(item.get(report_key) or ""), wanted, min_tokens)
    if sentences:
        return sentences
    if policy is EmptyReportPolicy.ERROR:
        raise EmptyReportError(empty_report_message(item, index))
    return None


def filter_empty_reports(items: Iterable[Mapping[str, Any]], policy: EmptyReportPolicy | str = "error",
                         wanted: Sequence[str] = WANTED_SECTIONS, min_tokens: int = 3,
                         sources: Sequence[str] = ("image_text",)) -> tuple[list[dict], int]:
    """Check image-text items up front, so an empty report fails (or is dropped) before training.

    Items whose ``source`` is not in ``sources`` (image-label data) pass unchecked. With
    ``"error"`` the first empty report raises :class:`EmptyReportError`; with ``"skip"`` such
    items are left out and counted (and the count is logged).
    """
    policy = empty_report_policy(policy)
    kept: list[dict] = []
    skipped = 0
    for index, item in enumerate(items):
        if item.get("source") in sources and usable_sentences(item, policy, wanted, min_tokens, index=index) is None:
            skipped += 1
            continue
        kept.append(dict(item))
    if skipped:
        logger.warning("skipped %d item(s) with empty reports", skipped)
    return kept, skipped
