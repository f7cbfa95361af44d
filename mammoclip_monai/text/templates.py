"""Image-level finding labels -> report-like sentences, so label-only datasets can train the text side.

A VinDr-Mammo image with a mass box becomes, for example, "there is a suspicious mass in the
lower right breast at mid depth": the category gives the noun and a (random) descriptor, the box
gives the location and depth (:func:`location_of_box`, in canonical pixels), the item gives the
side. Every word comes from ``resources/attribute_vocabulary.json``; this module only assembles.

Sampling policy (all configurable on :class:`AttributeSentenceSampler`):

* one sentence per present finding category (random descriptor in training, the first in
  validation); locations are derived from boxes, never invented, so a finding without a box
  gets no location, and depth is left out where it adds nothing (subareolar, skin, nipple);
* one negative sentence per category known to be absent ("no suspicious mass is seen") --
  also for normal studies (``normal_negatives=True``, unlike the original Mammo-CLIP, which
  dropped them there): zero-shot prompts such as "no mass" then have training text to match;
* a normal-study sentence where the image has no finding;
* in training the order is shuffled, positives kept first (``positives_first``) so that
  truncation to the tokenizer length cuts negatives, not the findings.

Validation mode (``train=False``) draws no random numbers: the same item always gives the same text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np

Rng = np.random.Generator | np.random.RandomState

VOCABULARY_FILE = "attribute_vocabulary.json"
DEPTHS = ("posterior", "mid", "anterior")  # by thirds from the chest wall (x = 0) to the nipple
CC_VIEWS = frozenset({"CC", "XCCL", "XCCM"})  # top of the image = lateral (outer)
MLO_VIEWS = frozenset({"MLO", "ML", "LM", "LMO"})  # top of the image = superior (upper)
_CATEGORY_KEYS = ("noun", "plural", "article", "depth", "descriptors", "locations", "negatives")


# ----------------------------------------------------------------------------- vocabulary
def default_vocabulary_path() -> str:
    """Path of the vocabulary shipped with the package."""
    return str(resources.files("mammoclip_monai") / "resources" / VOCABULARY_FILE)


def validate_vocabulary(vocabulary: Mapping[str, Any], source: str = "vocabulary") -> dict[str, Any]:
    """Check the structure up front, so a bad custom file fails when loaded, not mid-epoch."""
    def fail(problem: str) -> None:
        raise ValueError(f"{source}: {problem}")

    for key in ("sentence_templates", "depth_phrase", "depths", "laterality", "articles", "locations",
                "categories", "normal"):
        if key not in vocabulary:
            fail(f"missing top-level key {key!r}")
    for form in ("singular", "plural"):
        if form not in vocabulary["sentence_templates"]:
            fail(f"sentence_templates needs a {form!r} template")
    missing_depths = [d for d in DEPTHS if d not in vocabulary["depths"]]
    if missing_depths:
        fail(f"depths lacks {missing_depths}")
    if not vocabulary["normal"].get("sentences"):
        fail("normal.sentences must list at least one sentence")
    for name, entry in vocabulary["categories"].items():
        missing = [k for k in _CATEGORY_KEYS if k not in entry]
        if missing:
            fail(f"category {name!r} lacks {missing}")
        if not entry["descriptors"] or not entry["negatives"]:
            fail(f"category {name!r} needs at least one descriptor and one negative")
        unknown = [loc for loc in entry["locations"] if loc not in vocabulary["locations"]]
        if unknown:
            fail(f"category {name!r} allows locations {unknown} that 'locations' does not define")
    return dict(vocabulary)


def load_vocabulary(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read and validate a vocabulary JSON file (default: the one shipped with the package).

    A fresh dict is returned each time, so callers may modify it.
    """
    path = os.fspath(path) if path is not None else default_vocabulary_path()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the attribute vocabulary: {err}") from err
    return validate_vocabulary(data, source=path)


# ----------------------------------------------------------------------------- geometry
def view_axis(view: str) -> str | None:
    """What the vertical image axis shows: ``"lateral"`` (CC: top = outer), ``"superior"`` (MLO), or None."""
    v = (view or "").strip().upper()
    if v in CC_VIEWS:
        return "lateral"
    if v in MLO_VIEWS:
        return "superior"
    return None


def location_of_box(box: Sequence[float], breast_hw: Sequence[float], view: str, middle_band: float = 0.2,
                    subareolar_fraction: float = 0.25) -> tuple[str, str]:
    """Region and depth of a box in canonical pixels (chest wall at x = 0, breast over ``[0, W) x [0, H)``).

    Depth is the third of the breast width the box centre falls in: ``"posterior"`` near the
    chest wall, ``"mid"``, ``"anterior"`` near the nipple. The region is one word from the
    vertical position: on CC views the top is lateral (``"outer"``) and the bottom medial
    (``"inner"``); on MLO views top is ``"upper"``, bottom ``"lower"``. A centre within
    ``middle_band / 2`` of the vertical middle gets no word (``""``), or ``"subareolar"`` when it
    also lies in the front ``subareolar_fraction`` of the width. Unknown views give only depth
    (and subareolar). A single view shows one axis, so two-word quadrants never come out of here.
    """
    height, width = float(breast_hw[0]), float(breast_hw[1])
    if not (height > 0 and width > 0):
        return "", ""
    x0, y0, x1, y1 = (float(v) for v in box)
    fx = min(max((x0 + x1) / 2.0 / width, 0.0), 1.0)
    fy = min(max((y0 + y1) / 2.0 / height, 0.0), 1.0)
    depth = DEPTHS[min(int(fx * 3.0), 2)]
    central = abs(fy - 0.5) < middle_band / 2.0
    if central and fx >= 1.0 - subareolar_fraction:
        return "subareolar", depth
    axis = view_axis(view)
    if central or axis is None:
        return "", depth
    top = fy < 0.5
    if axis == "lateral":
        return ("outer" if top else "inner"), depth
    return ("upper" if top else "lower"), depth


# ----------------------------------------------------------------------------- sampling
def _pick(options: Sequence[str], rng: Rng | None, train: bool) -> str:
    """A random option in training, the first in validation."""
    if not train or rng is None or len(options) == 1:
        return options[0]
    return options[int(rng.choice(len(options)))]


def _shuffled(items: list[str], rng: Rng | None, train: bool) -> list[str]:
    if not train or rng is None or len(items) < 2:
        return items
    return [items[int(i)] for i in rng.permutation(len(items))]


class AttributeSentenceSampler:
    """Turn the labels of one image into sentences drawn from an attribute vocabulary.

    Args:
        vocabulary: a vocabulary dict, a path to a JSON file, or None for the packaged one.
        normal_negatives: also add the negatives to normal studies (the original dropped them).
        max_negatives: at most this many negative sentences (a random subset in training, the
            first categories in validation); None keeps one per absent category.
        positives_first: in training shuffle positives and the rest separately, positives first,
            so truncation drops negatives before findings; False shuffles everything together.
        detail_dropout: in training, the probability of leaving out the location and
            (independently) the depth, so short prompts ("there is a mass in the left breast")
            are also seen; never applied in validation.
        middle_band, subareolar_fraction: see :func:`location_of_box`.
    """

    def __init__(self, vocabulary: Mapping[str, Any] | str | os.PathLike | None = None, *,
                 normal_negatives: bool = True, max_negatives: int | None = None, positives_first: bool = True,
                 detail_dropout: float = 0.25, middle_band: float = 0.2, subareolar_fraction: float = 0.25) -> None:
        if vocabulary is None or isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = load_vocabulary(vocabulary)
        else:
            vocabulary = validate_vocabulary(vocabulary)
        if not 0.0 <= detail_dropout <= 1.0:
            raise ValueError(f"detail_dropout must be in [0, 1], got {detail_dropout}")
        if max_negatives is not None and max_negatives < 0:
            raise ValueError(f"max_negatives must be non-negative or None, got {max_negatives}")
        self.vocabulary = vocabulary
        self.normal_negatives = bool(normal_negatives)
        self.max_negatives = max_negatives
        self.positives_first = bool(positives_first)
        self.detail_dropout = float(detail_dropout)
        self.middle_band = float(middle_band)
        self.subareolar_fraction = float(subareolar_fraction)
        self.categories: list[str] = list(vocabulary["categories"])
        self.normal_category: str = vocabulary["normal"].get("category", "No Finding")
        lookup = {name.lower(): name for name in [*self.categories, self.normal_category]}
        lookup.update({alias.lower(): target for alias, target in vocabulary.get("aliases", {}).items()})
        self._lookup = lookup

    def canonical_category(self, name: str) -> str:
        """A category name as the vocabulary spells it (case and known aliases forgiven)."""
        key = " ".join(str(name).split()).lower()
        if key not in self._lookup:
            raise ValueError(f"unknown finding category {name!r}; the vocabulary knows "
                             f"{[*self.categories, self.normal_category]}")
        return self._lookup[key]

    # ------------------------------------------------------------------ sentences
    def finding_sentence(self, category: str, box: Sequence[float] | None = None, laterality: str = "",
                         view: str = "", breast_hw: Sequence[float] | None = None, rng: Rng | None = None,
                         train: bool = True) -> str:
        """One positive sentence; location and depth only when a box and the breast size are known."""
        vocab = self.vocabulary
        entry = vocab["categories"][category]
        descriptor = _pick(entry["descriptors"], rng, train)
        phrase = " ".join(f"{descriptor} {entry['noun']}".split())
        if entry["article"] and not entry["plural"]:
            articles = vocab["articles"]
            vowel = phrase[:1].lower() in articles.get("vowels", "aeiou")
            phrase = f"{articles['before_vowel'] if vowel else articles['default']} {phrase}"
        location = depth = ""
        if box is not None and breast_hw is not None:
            region, depth_key = location_of_box(box, breast_hw, view, self.middle_band, self.subareolar_fraction)
            region = entry.get("location_aliases", {}).get(region, region)
            if region and region in entry["locations"]:
                location = vocab["locations"][region]
            if entry["depth"] and depth_key and region not in ("subareolar", "periareolar"):
                depth = vocab["depth_phrase"].format(depth=vocab["depths"][depth_key])
        if train and rng is not None and self.detail_dropout > 0:
            if location and rng.random() < self.detail_dropout:
                location = ""
            if depth and rng.random() < self.detail_dropout:
                depth = ""
        side = vocab["laterality"].get(str(laterality or "").strip().upper()[:1], "")
        template = vocab["sentence_templates"]["plural" if entry["plural"] else "singular"]
        return " ".join(template.format(finding=phrase, location=location, side=side, depth=depth).split())

    def sentences(self, findings: Iterable[str] = (), boxes: Any = None, box_labels: Iterable[str] = (),
                  laterality: str = "", view: str = "", breast_hw: Sequence[float] | None = None,
                  rng: Rng | None = None, train: bool = True, include_negatives: bool = True,
                  absent: Iterable[str] | None = None, malignancy: int = -1) -> list[str]:
        """The sentences describing one image, in their final order.

        ``findings`` and ``box_labels`` name the present categories (VinDr names; "No Finding"
        marks a normal study); ``boxes`` (N, 4) in canonical pixels go with ``box_labels``.
        ``absent`` lists the categories known to be absent; None means the annotation is
        exhaustive (VinDr): every category not present is absent, and an image without findings
        is normal. ``malignancy`` (1 / 0 / -1 unknown) adds a malignancy sentence to images with
        no finding sentence (RSNA-style labels). ``rng`` (numpy Generator or RandomState) is
        used only when ``train``.
        """
        if train and rng is None:
            rng = np.random.default_rng()
        labels = [self.canonical_category(n) for n in box_labels]
        box_array = np.asarray(boxes if boxes is not None else np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4)
        if len(labels) != len(box_array):
            raise ValueError(f"{len(box_array)} boxes but {len(labels)} box labels")
        named = [self.canonical_category(n) for n in findings]
        present = list(dict.fromkeys(c for c in [*named, *labels] if c != self.normal_category))
        normal = not present and (self.normal_category in named or absent is None)
        if absent is None:
            absent_set = set(self.categories) - set(present)
        else:
            absent_set = {self.canonical_category(n) for n in absent} - set(present) - {self.normal_category}

        positives = []
        for category in present:
            candidates = [b for b, lab in zip(box_array, labels) if lab == category and b[2] > b[0] and b[3] > b[1]]
            box = None
            if candidates:
                box = candidates[int(rng.choice(len(candidates)))] if train and len(candidates) > 1 else candidates[0]
            positives.append(self.finding_sentence(category, box, laterality, view, breast_hw, rng, train))
        others = []
        malignancy_words = self.vocabulary.get("malignancy", {})
        if not positives and malignancy == 1 and malignancy_words.get("present"):
            others.append(_pick(malignancy_words["present"], rng, train))
        elif not positives and not normal and malignancy == 0 and malignancy_words.get("absent"):
            others.append(_pick(malignancy_words["absent"], rng, train))
        if normal:
            others.append(_pick(self.vocabulary["normal"]["sentences"], rng, train))
        if include_negatives and (self.normal_negatives or not normal):
            missing = [c for c in self.categories if c in absent_set]
            if self.max_negatives is not None and len(missing) > self.max_negatives:
                missing = _shuffled(missing, rng, train)[: self.max_negatives]
                missing = [c for c in self.categories if c in missing]
            others.extend(_pick(self.vocabulary["categories"][c]["negatives"], rng, train) for c in missing)
        if self.positives_first:
            return _shuffled(positives, rng, train) + _shuffled(others, rng, train)
        return _shuffled(positives + others, rng, train)

    def text(self, *args: Any, **kwargs: Any) -> str:
        """The sentences of :meth:`sentences` joined into one text ("s1. s2."); ``""`` when there are none."""
        sentences = self.sentences(*args, **kwargs)
        return " ".join(f"{s}." for s in sentences)
