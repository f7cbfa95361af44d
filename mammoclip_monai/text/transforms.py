"""MONAI transforms that give every item two texts and their tokens, whatever its source.

Image-text items (``source == "image_text"``) take their texts from the report; image-label items
(VinDr, CBIS-DDSM, RSNA) get theirs from the labels through attribute templating. One pipeline
therefore serves mixed datasets::

    LoadMammogramd -> CropBreastd -> CanonicalLateralityd -> ResizeKeepAspectd   (box_keys: ["boxes"])
        -> MammoTextd -> Tokenized -> DeleteItemsd(keys=NON_COLLATABLE_KEYS) -> [augmentation]

``MammoTextd`` must come after the spatial transforms: locations are read from boxes in
canonical pixels (declare ``box_keys: ["boxes"]`` on the spatial transforms, or set
``box_space="original"`` to have boxes in file pixels mapped here). ``DeleteItemsd`` then drops
the keys that default collation cannot stack (:data:`NON_COLLATABLE_KEYS`: lists of strings and
box arrays whose length varies between items).

An item whose text could not be made (empty report under ``empty_report="skip"`` with no label
to fall back on) gets empty texts and ``text_valid = 0``. The trainer should leave such rows out
of the text losses (mask them from the image-text similarity matrix), and count them from
batches: the transform's own counter lives in each DataLoader worker's copy.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import DeleteItemsd, MapTransform, RandomizableTransform
from monai.utils import ensure_tuple
from monai.utils.enums import TraceKeys

from ..data import geometry
from .reports import (
    WANTED_SECTIONS,
    EmptyReportError,
    EmptyReportPolicy,
    empty_report_policy,
    item_name,
    sample_texts,
    usable_sentences,
)
from .templates import AttributeSentenceSampler
from .tokenizer import load_tokenizer, tokenize

NON_COLLATABLE_KEYS = ("findings", "boxes", "box_labels", "roi_masks")
"""Datalist keys to delete (``DeleteItemsd``) before default collation: variable-length lists and arrays."""

DEFAULT_LABEL_CATEGORIES = {"mass": "Mass", "calcification": "Suspicious Calcification"}


def _geometry_records(image: Any) -> list[dict]:
    """This project's geometry records of an image, oldest first; other trace entries are ignored."""
    records = []
    for entry in getattr(image, "applied_operations", None) or []:
        record = entry.get(TraceKeys.EXTRA_INFO, {}).get(geometry.GEOMETRY_KEY) if isinstance(entry, Mapping) else None
        if record is not None:
            records.append(dict(record))
    return records


def _input_hw(record: Mapping) -> tuple[int, int]:
    if record["op"] == "hflip":
        return record["height"], record["width"]
    return record["orig_height"], record["orig_width"]


def breast_area(image: Any) -> tuple[float, float, float, float] | None:
    """``(x0, y0, x1, y1)`` of the breast's resized area in the image's current pixels.

    The whole input of the first geometry record is carried through all records, so after
    ``ResizeKeepAspectd`` this is the resized area without the padding (offset by the padding
    when it was centred). Without records the whole image counts; without an image, None.
    """
    records = _geometry_records(image)
    if records:
        height, width = _input_hw(records[0])
        area = np.array([[0.0, 0.0, width, height]], np.float32)
        for record in records:
            area = geometry.forward_boxes(area, record)
        return tuple(float(v) for v in area[0])
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) < 2:
        return None
    return 0.0, 0.0, float(shape[-1]), float(shape[-2])


def _as_int(value: Any, default: int = -1) -> int:
    try:
        return int(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return default


def _meta_value(image: Any, key: str) -> str:
    meta = getattr(image, "meta", None)
    value = meta.get(key, "") if isinstance(meta, Mapping) else ""
    return "" if value in (None, "unknown") else str(value)


class MammoTextd(RandomizableTransform, MapTransform):
    """Write two texts per item (``keys``) from its report or, failing that, from its labels.

    Args:
        keys: output keys, one text each (default ``("text", "text2")``).
        report_key: where the report is; an item uses it when it is non-empty or the item's
            ``source`` is ``"image_text"``.
        sentences_per_text: report sentences per text (distinct across the texts when possible).
        vocabulary: attribute vocabulary (dict or JSON path; None = packaged) for label items.
        train: random sampling (``self.R``, reproducible with ``set_random_state``); False gives
            the same output for the same item every time.
        include_negatives, normal_negatives: negative sentences for absent findings, also for
            normal studies (see :mod:`mammoclip_monai.text.templates`).
        empty_report: ``"error"`` raises :class:`EmptyReportError` naming the image; ``"skip"``
            falls back to the labels, else writes empty texts with ``text_valid = 0`` and counts.
        image_key, box_key: the (transformed) image, for the breast size, and the boxes.
        box_space: ``"image"`` when the boxes moved with the image (``box_keys`` on the spatial
            transforms), ``"original"`` when they are still in file pixels.
        exhaustive_sources: sources whose finding annotation is complete: every category not
            listed is absent (VinDr), so negatives are true. Other sources only get negatives
            for binary labels equal to 0 (``label_categories``).
        label_categories: item key -> category for binary labels (1 present, 0 absent, -1 unknown).
        sampler_options: further :class:`AttributeSentenceSampler` options (``max_negatives``,
            ``positives_first``, ``detail_dropout``, ``middle_band``, ``subareolar_fraction``).
    """

    def __init__(self, keys: KeysCollection = ("text", "text2"), report_key: str = "report",
                 sentences_per_text: int = 1, vocabulary: Mapping[str, Any] | str | os.PathLike | None = None,
                 train: bool = True, include_negatives: bool = True, normal_negatives: bool = True,
                 empty_report: EmptyReportPolicy | str = "error", image_key: str = "image", box_key: str = "boxes",
                 box_space: str = "image", wanted_sections: Sequence[str] = WANTED_SECTIONS, min_tokens: int = 3,
                 exhaustive_sources: Sequence[str] = ("vindr",),
                 label_categories: Mapping[str, str] | None = None,
                 sampler_options: Mapping[str, Any] | None = None) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob=1.0)
        if box_space not in ("image", "original"):
            raise ValueError(f"box_space must be 'image' or 'original', got {box_space!r}")
        if sentences_per_text < 1:
            raise ValueError(f"sentences_per_text must be at least 1, got {sentences_per_text}")
        self.report_key = report_key
        self.sentences_per_text = int(sentences_per_text)
        self.train = bool(train)
        self.include_negatives = bool(include_negatives)
        self.empty_report = empty_report_policy(empty_report)
        self.image_key = image_key
        self.box_key = box_key
        self.box_space = box_space
        self.wanted_sections = tuple(wanted_sections)
        self.min_tokens = int(min_tokens)
        self.exhaustive_sources = tuple(ensure_tuple(exhaustive_sources))
        self.label_categories = dict(DEFAULT_LABEL_CATEGORIES if label_categories is None else label_categories)
        self.sampler = AttributeSentenceSampler(vocabulary, normal_negatives=normal_negatives,
                                                **dict(sampler_options or {}))
        self.n_invalid = 0  # items of this process that got no text (see the module docstring)

    def randomize(self, data: Any = None) -> None:
        """Nothing to pre-draw: sampling uses ``self.R`` while building the texts."""
        self._do_transform = True

    # ------------------------------------------------------------------ label texts
    def _label_texts(self, d: Mapping[Hashable, Any], n: int, rng: Any) -> list[str]:
        image = d.get(self.image_key)
        boxes = geometry.as_boxes(d.get(self.box_key, np.zeros((0, 4), np.float32)))
        area = breast_area(image)
        breast_hw = None
        if area is not None:
            if self.box_space == "original":
                for record in _geometry_records(image):
                    boxes = geometry.forward_boxes(boxes, record)
            x0, y0, x1, y1 = area
            boxes = geometry.shift_boxes(boxes, -x0, -y0)
            breast_hw = (y1 - y0, x1 - x0)
        box_labels = list(d.get("box_labels") or [])
        findings = list(d.get("findings") or [])
        if len(boxes) == 0 and box_labels:  # labels whose boxes are not known (CBIS-DDSM: boxes come from masks)
            findings, box_labels = findings + box_labels, []
        labels = {key: _as_int(d.get(key, -1)) for key in self.label_categories}
        findings += [c for k, c in self.label_categories.items() if labels[k] == 1]
        known = all(v in (0, 1) for v in labels.values())
        if d.get("source") in self.exhaustive_sources and known:
            absent = None
        else:
            absent = [c for k, c in self.label_categories.items() if labels[k] == 0]
        laterality = str(d.get("laterality") or "") or _meta_value(image, "laterality")
        view = str(d.get("view") or "") or _meta_value(image, "view")
        kwargs = dict(findings=findings, boxes=boxes, box_labels=box_labels,
                      laterality=laterality, view=view, breast_hw=breast_hw, include_negatives=self.include_negatives,
                      absent=absent, malignancy=_as_int(d.get("cancer", -1)))
        if not self.sampler.sentences(train=False, **kwargs):
            return []
        if not self.train:
            return [self.sampler.text(train=False, **kwargs)] * n
        return [self.sampler.text(rng=rng, train=True, **kwargs) for _ in range(n)]

    # ------------------------------------------------------------------ call
    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        n = len(self.keys)
        rng = self.R if self.train else None
        report = str(d.get(self.report_key) or "")
        texts: list[str] = []
        source = "none"
        if report.strip() or d.get("source") == "image_text":
            sentences = usable_sentences(d, self.empty_report, self.wanted_sections, self.min_tokens,
                                         report_key=self.report_key)
            if sentences:
                texts = sample_texts(sentences, n, self.sentences_per_text, rng=rng, train=self.train)
                source = "report"
        if not texts:
            texts = self._label_texts(d, n, rng)
            source = "labels" if texts else "none"
        if not texts:
            if self.empty_report is EmptyReportPolicy.ERROR:
                raise EmptyReportError(f"{item_name(d)}: no report and no labels to describe it; "
                                       "set empty_report='skip' to keep such items with text_valid = 0")
            self.n_invalid += 1
            texts = [""] * n
        for key, text in zip(self.keys, texts):
            d[key] = text
        d["text_valid"] = int(source != "none")
        d["text_source"] = source
        return d


class Tokenized(MapTransform):
    """Tokenize text keys into fixed-length LongTensors that default collation stacks.

    The first key becomes ``{prefix}input_ids`` / ``{prefix}attention_mask``, the k-th (k >= 2)
    ``{prefix}input_ids{k}`` / ``{prefix}attention_mask{k}``, each of shape ``(max_length,)``.
    ``tokenizer`` is a name, a folder (read offline), None for the offline MiniLM, or a tokenizer
    object. A name or folder is loaded on first use and not pickled, so each DataLoader worker
    loads its own copy instead of receiving one through a pipe.
    """

    def __init__(self, keys: KeysCollection = ("text", "text2"), tokenizer: Any = None, max_length: int = 64,
                 prefix: str = "", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.max_length = int(max_length)
        self.prefix = prefix
        given = not (tokenizer is None or isinstance(tokenizer, (str, os.PathLike)))
        self._given = tokenizer if given else None  # an object handed in: kept, also when pickled
        self._spec = None if given else tokenizer
        self._tokenizer = self._given

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._spec)
        return self._tokenizer

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._given is None:  # loaded here from a name: reload after unpickling rather than ship it
            state["_tokenizer"] = None
        return state

    def output_keys(self, index: int) -> tuple[str, str]:
        """Names of the ids and mask written for the ``index``-th (0-based) key."""
        suffix = "" if index == 0 else str(index + 1)
        return f"{self.prefix}input_ids{suffix}", f"{self.prefix}attention_mask{suffix}"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for index, key in enumerate(self.keys):
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key {key!r} not found in the item; available keys: {list(d)}")
            encoded = tokenize(self.tokenizer, [d[key]], self.max_length)
            ids_key, mask_key = self.output_keys(index)
            d[ids_key] = encoded["input_ids"][0]
            d[mask_key] = encoded["attention_mask"][0]
        return d


def text_steps(keys: KeysCollection = ("text", "text2"), tokenizer: Any = None, max_length: int = 64,
               train: bool = True, sentences_per_text: int = 1, empty_report: EmptyReportPolicy | str = "error",
               sampler_options: Mapping[str, Any] | None = None, report_key: str = "report",
               drop: Sequence[str] = ()) -> list[MapTransform]:
    """The per-sample text steps of a chain (never cached: training samples new sentences every epoch):
    ``MammoTextd -> Tokenized -> DeleteItemsd``.

    The last step drops what default collation cannot stack once the tokens exist:
    :data:`NON_COLLATABLE_KEYS`, ``drop`` (e.g. the second view's ``boxes2``), the texts and the report.
    The bundle's training and validation chains differ only in ``keys``, ``train`` and ``drop``.
    """
    keys = list(ensure_tuple(keys))
    return [MammoTextd(keys=keys, report_key=report_key, sentences_per_text=sentences_per_text, train=train,
                       empty_report=empty_report, sampler_options=sampler_options),
            Tokenized(keys=keys, tokenizer=tokenizer, max_length=max_length),
            DeleteItemsd(keys=[*NON_COLLATABLE_KEYS, *drop, *keys, report_key])]
