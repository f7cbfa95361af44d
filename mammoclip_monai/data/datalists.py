"""CSV schemas -> MONAI datalists (lists of dicts), with splits and sub-samples drawn by patient.

Every item has the same keys whatever the source, so datasets can be mixed in one loader::

    image        absolute path of the DICOM/PNG file
    patient_id   patient key (VinDr: study_id), used for every split and sub-sample
    study_id, image_id, laterality ("L"/"R"/""), view ("CC"/"MLO"/...), split ("train"/"val"/"test"/"")
    mass, calcification, cancer        1 / 0, or -1 when the source does not say
    density      0-3 for BI-RADS density A-D, -1 when unknown
    birads       0-6, -1 when unknown
    findings     list of finding category names present (VinDr names), [] when none
    boxes        float32 (N, 4) finding boxes [x_min, y_min, x_max, y_max] in file pixels
    box_labels   list of N category names
    report       report text ("" for image-label sources)
    source       "image_text" | "vindr" | "rsna" | "cbis_ddsm"

Labels use -1 rather than None so that items collate into tensors. Columns and files are checked
up front: a missing column or image is a :class:`DatalistError` naming the CSV and what is missing.
"""

from __future__ import annotations

import ast
import csv
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
DENSITY_LETTERS = "ABCD"
VINDR_FINDINGS = (
    "Mass", "Suspicious Calcification", "Architectural Distortion", "Asymmetry", "Focal Asymmetry",
    "Global Asymmetry", "Suspicious Lymph Node", "Nipple Retraction", "Skin Retraction", "Skin Thickening",
    "No Finding",
)


class DatalistError(ValueError):
    """A CSV that cannot become a datalist; the message names the file and what is wrong."""


# ----------------------------------------------------------------------------- reading
def read_csv(path: str | os.PathLike, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """Read a CSV into dicts of stripped strings, checking that the ``required`` columns exist."""
    path = Path(path)
    if not path.is_file():
        raise DatalistError(f"{path}: CSV file not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DatalistError(f"{path}: missing column(s) {missing}; found {columns}")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _resolve(path: str, dataset_dir: Path) -> str:
    return str(Path(path) if os.path.isabs(path) else dataset_dir / path)


def check_files_exist(items: Sequence[Mapping], source: str | os.PathLike, key: str = "image") -> None:
    """Raise a :class:`DatalistError` listing (the first few) missing files."""
    missing = [item[key] for item in items if not os.path.isfile(item[key])]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatalistError(f"{source}: {len(missing)} image file(s) not found: {shown}")


def _int_or(value: str, default: int = -1) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _binary(value: str) -> int:
    v = _int_or(value)
    return v if v in (0, 1) else -1


def density_index(value: str) -> int:
    """'A'..'D', 'DENSITY C', 1..4 -> 0..3; anything else -> -1."""
    v = (value or "").strip().upper().replace("DENSITY", "").strip()
    if len(v) == 1 and v in DENSITY_LETTERS:
        return DENSITY_LETTERS.index(v)
    number = _int_or(v)
    return number - 1 if 1 <= number <= 4 else -1


def birads_value(value: str) -> int:
    """'BI-RADS 4', '4', '4A' -> 4; anything else -> -1."""
    v = (value or "").upper().replace("BI-RADS", "").strip()
    digits = v[:1]
    return int(digits) if digits.isdigit() and 0 <= int(digits) <= 6 else -1


def _laterality(value: str) -> str:
    v = (value or "").strip().upper()
    return {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}.get(v, "")


def _split_name(value: str) -> str:
    v = (value or "").strip().lower()
    return {"training": "train", "train": "train", "val": "val", "valid": "val", "validation": "val",
            "test": "test", "testing": "test"}.get(v, "")


def _item(**fields: Any) -> dict[str, Any]:
    item = {"image": "", "patient_id": "", "study_id": "", "image_id": "", "laterality": "", "view": "",
            "split": "", "mass": -1, "calcification": -1, "cancer": -1, "density": -1, "birads": -1,
            "findings": [], "boxes": np.zeros((0, 4), np.float32), "box_labels": [], "report": "", "source": ""}
    item.update(fields)
    return item


def _apply_split_overrides(items: list[dict], overrides: Mapping[str, str] | str | os.PathLike | None) -> None:
    if overrides is None:
        return
    if not isinstance(overrides, Mapping):
        rows = read_csv(overrides, required=("patient_id", "split"))
        overrides = {r["patient_id"]: r["split"] for r in rows}
    for item in items:
        if item["patient_id"] in overrides:
            item["split"] = _split_name(overrides[item["patient_id"]])


# ----------------------------------------------------------------------------- schemas
IMAGE_TEXT_REQUIRED = ("patient_id", "image_path", "report")


def image_text_datalist(csv_path: str | os.PathLike, dataset_dir: str | os.PathLike | None = None,
                        check_files: bool = True, splits: Mapping[str, str] | str | os.PathLike | None = None
                        ) -> list[dict]:
    """The project's image-text schema (docs/data_formats.md): one item per image with its report."""
    csv_path = Path(csv_path)
    root = Path(dataset_dir) if dataset_dir is not None else csv_path.parent
    rows = read_csv(csv_path, required=IMAGE_TEXT_REQUIRED)
    items = []
    for row in rows:
        items.append(_item(
            image=_resolve(row["image_path"], root), patient_id=row["patient_id"], study_id=row.get("study_id", ""),
            image_id=row.get("image_id", "") or Path(row["image_path"]).stem,
            laterality=_laterality(row.get("laterality", "")), view=row.get("view", "").upper(),
            split=_split_name(row.get("split", "")), report=row["report"], mass=_binary(row.get("mass", "")),
            calcification=_binary(row.get("calcification", "")), cancer=_binary(row.get("cancer", "")),
            density=density_index(row.get("density", "")), birads=birads_value(row.get("birads", "")),
            source="image_text"))
    _apply_split_overrides(items, splits)
    if check_files:
        check_files_exist(items, csv_path)
    return items


VINDR_BREAST_REQUIRED = ("study_id", "image_id", "laterality", "view_position", "breast_birads", "breast_density",
                         "split")
VINDR_FINDING_REQUIRED = ("study_id", "image_id", "finding_categories", "xmin", "ymin", "xmax", "ymax")


def parse_categories(text: str, source: str | os.PathLike = "") -> list[str]:
    """VinDr's Python-list strings ("['Mass', 'Suspicious Calcification']") -> list of names."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise DatalistError(f"{source}: cannot parse finding_categories {text!r}") from err
    names = [value] if isinstance(value, str) else list(value)
    return [str(n).strip() for n in names]


def vindr_datalist(dataset_dir: str | os.PathLike, breast_csv: str = "breast-level_annotations.csv",
                   finding_csv: str | None = "finding_annotations.csv", image_dir: str = "images",
                   extension: str = ".dicom", check_files: bool = True,
                   splits: Mapping[str, str] | str | os.PathLike | None = None) -> list[dict]:
    """VinDr-Mammo: breast-level rows joined with their finding boxes; the study is the patient key."""
    root = Path(dataset_dir)
    breast_path = root / breast_csv
    rows = read_csv(breast_path, required=VINDR_BREAST_REQUIRED)
    findings: dict[str, list[tuple[list[str], list[float] | None]]] = defaultdict(list)
    if finding_csv is not None:
        finding_path = root / finding_csv
        for row in read_csv(finding_path, required=VINDR_FINDING_REQUIRED):
            names = parse_categories(row["finding_categories"], finding_path)
            coords = [row[k] for k in ("xmin", "ymin", "xmax", "ymax")]
            box = [float(c) for c in coords] if all(coords) else None
            findings[row["image_id"]].append((names, box))
    items = []
    for row in rows:
        present: list[str] = []
        boxes, box_labels = [], []
        for names, box in findings.get(row["image_id"], []):
            for name in names:
                if name != "No Finding" and name not in present:
                    present.append(name)
            if box is not None:
                for name in names:
                    if name != "No Finding":
                        boxes.append(box)
                        box_labels.append(name)
        has = set(present)
        items.append(_item(
            image=str(root / image_dir / row["study_id"] / f"{row['image_id']}{extension}"),
            patient_id=row["study_id"], study_id=row["study_id"], image_id=row["image_id"],
            laterality=_laterality(row["laterality"]), view=row["view_position"].upper(),
            split=_split_name(row["split"]), density=density_index(row["breast_density"]),
            birads=birads_value(row["breast_birads"]),
            mass=int("Mass" in has) if finding_csv else -1,
            calcification=int("Suspicious Calcification" in has) if finding_csv else -1,
            findings=present, boxes=np.asarray(boxes, np.float32).reshape(-1, 4), box_labels=box_labels,
            source="vindr"))
    _apply_split_overrides(items, splits)
    if check_files:
        check_files_exist(items, breast_path)
    return items


RSNA_REQUIRED = ("patient_id", "image_id", "laterality", "view", "cancer")


def rsna_datalist(csv_path: str | os.PathLike, dataset_dir: str | os.PathLike | None = None,
                  image_dir: str = "train_images", extension: str = ".dcm", check_files: bool = True,
                  splits: Mapping[str, str] | str | os.PathLike | None = None) -> list[dict]:
    """RSNA Screening Mammography ``train.csv``: malignancy, BI-RADS and density (often missing)."""
    csv_path = Path(csv_path)
    root = Path(dataset_dir) if dataset_dir is not None else csv_path.parent
    items = []
    for row in read_csv(csv_path, required=RSNA_REQUIRED):
        items.append(_item(
            image=str(root / image_dir / row["patient_id"] / f"{row['image_id']}{extension}"),
            patient_id=row["patient_id"], image_id=row["image_id"], laterality=_laterality(row["laterality"]),
            view=row["view"].upper(), cancer=_binary(row["cancer"]), birads=birads_value(row.get("BIRADS", "")),
            density=density_index(row.get("density", "")), source="rsna"))
    _apply_split_overrides(items, splits)
    if check_files:
        check_files_exist(items, csv_path)
    return items


CBIS_COMMON = ("patient_id", "left or right breast", "image view", "abnormality id", "abnormality type",
               "assessment", "pathology", "image file path", "ROI mask file path")


def cbis_ddsm_datalist(csv_paths: Sequence[str | os.PathLike] | str | os.PathLike,
                       dataset_dir: str | os.PathLike | None = None, check_files: bool = True,
                       splits: Mapping[str, str] | str | os.PathLike | None = None) -> list[dict]:
    """CBIS-DDSM case descriptions (mass and/or calc CSVs): one item per full mammogram.

    Abnormalities of the same image are merged; ``roi_masks`` lists their mask files (boxes come
    from masks, see :func:`mask_box`). The split comes from the CSV name (``..._train_set`` /
    ``..._test_set``) unless ``splits`` overrides it.
    """
    paths = [Path(csv_paths)] if isinstance(csv_paths, (str, os.PathLike)) else [Path(p) for p in csv_paths]
    by_image: dict[str, dict] = {}
    for csv_path in paths:
        root = Path(dataset_dir) if dataset_dir is not None else csv_path.parent
        rows = read_csv(csv_path, required=CBIS_COMMON)
        name = csv_path.name.lower()
        split = "test" if "test" in name else "train" if "train" in name else ""
        for row in rows:
            image = _resolve(row["image file path"].strip().strip('"'), root)
            item = by_image.get(image)
            if item is None:
                density = row.get("breast_density", row.get("breast density", ""))
                item = by_image[image] = _item(
                    image=image, patient_id=row["patient_id"], image_id=Path(image).stem,
                    laterality=_laterality(row["left or right breast"]), view=row["image view"].upper(),
                    split=split, density=density_index(density), mass=0, calcification=0, cancer=0,
                    source="cbis_ddsm")
                item["roi_masks"] = []
            kind = row["abnormality type"].strip().lower()
            category = "Mass" if kind == "mass" else "Suspicious Calcification"
            if kind == "mass":
                item["mass"] = 1
            elif kind.startswith("calc"):
                item["calcification"] = 1
            else:
                raise DatalistError(f"{csv_path}: unknown abnormality type {row['abnormality type']!r}")
            if category not in item["findings"]:
                item["findings"].append(category)
            if row["pathology"].strip().upper() == "MALIGNANT":
                item["cancer"] = 1
            item["birads"] = max(item["birads"], birads_value(row["assessment"]))
            item["roi_masks"].append(_resolve(row["ROI mask file path"].strip().strip('"'), root))
            item["box_labels"].append(category)
    items = list(by_image.values())
    _apply_split_overrides(items, splits)
    if check_files:
        check_files_exist(items, paths[0])
        masks = [{"image": m} for item in items for m in item["roi_masks"]]
        check_files_exist(masks, paths[0])
    return items


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Bounding box ``[x_min, y_min, x_max, y_max]`` of the non-zero pixels of a 2D mask."""
    rows, cols = np.nonzero(np.asarray(mask).squeeze())
    if rows.size == 0:
        return np.zeros((0, 4), np.float32)
    return np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], np.float32)


def _stored_shape(path: str) -> tuple[int, int]:
    """``(rows, columns)`` of an image file from its header, without decoding the pixels."""
    import pydicom
    from PIL import Image

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    except (pydicom.errors.InvalidDicomError, AttributeError):
        with Image.open(path) as img:
            return img.height, img.width


def with_mask_boxes(items: Sequence[Mapping]) -> list[dict]:
    """CBIS-DDSM items with ``boxes`` read from their ROI masks (one box per mask, in ``box_labels`` order).

    A mask whose size differs from its image (a known CBIS-DDSM defect) has its box scaled to the
    image; an empty mask is an error naming the file. Items without ``roi_masks`` are unchanged.
    """
    from .reader import read_mammogram

    out = []
    for item in items:
        item = dict(item)
        masks = item.get("roi_masks") or []
        if masks:
            image_shape = None
            boxes = []
            for mask_path in masks:
                mask, _ = read_mammogram(mask_path, voi="minmax", allow_any_modality=True)
                box = mask_box(mask > 0.5)
                if len(box) == 0:
                    raise DatalistError(f"{mask_path}: the ROI mask is empty")
                if image_shape is None:
                    image_shape = _stored_shape(item["image"])
                if mask.shape != image_shape:
                    box = box * np.asarray([image_shape[1] / mask.shape[1], image_shape[0] / mask.shape[0]] * 2,
                                           np.float32)
                boxes.append(box[0])
            item["boxes"] = np.asarray(boxes, np.float32).reshape(-1, 4)
        out.append(item)
    return out


# ----------------------------------------------------------------------------- splits by patient
BATCH_KEYS = ("image", "patient_id", "laterality", "view")
"""Item keys that the preprocessing reads and that collate into batches (boxes and finding lists do not)."""


def batchable(items: Iterable[Mapping], label_keys: Sequence[str] = ()) -> list[dict]:
    """Each item reduced to :data:`BATCH_KEYS` and ``label_keys`` (where present), for a DataLoader.

    Per-item lists of different lengths (VinDr boxes, finding names) cannot be collated; a label
    column that the datalist lacks is a ``KeyError`` naming it.
    """
    items = list(items)
    missing = [k for k in label_keys if items and k not in items[0]]
    if missing:
        raise KeyError(f"the datalist has no label column(s) {missing}")
    keep = (*BATCH_KEYS, *label_keys)
    return [{k: item[k] for k in keep if k in item} for item in items]


def patients_of(items: Iterable[Mapping]) -> list[str]:
    """Distinct patient keys in first-seen order."""
    return list(dict.fromkeys(item["patient_id"] for item in items))


def _shuffled_patients(items: Sequence[Mapping], seed: int) -> list[str]:
    patients = sorted(patients_of(items))
    random.Random(seed).shuffle(patients)
    return patients


def split_by_patient(items: Sequence[Mapping], fractions: Mapping[str, float] | None = None, seed: int = 0,
                     respect_existing: bool = True) -> dict[str, list[dict]]:
    """Split items into named parts by patient.

    With ``respect_existing`` (default), items whose ``split`` is already set keep it and only the
    rest are distributed by ``fractions`` (default train 0.7 / val 0.1 / test 0.2).
    """
    fractions = dict(fractions or {"train": 0.7, "val": 0.1, "test": 0.2})
    total = sum(fractions.values())
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"fractions must be non-negative and sum to more than 0, got {fractions}")
    parts: dict[str, list[dict]] = {name: [] for name in fractions}
    unassigned = [it for it in items if not (respect_existing and it.get("split"))]
    patients = _shuffled_patients(unassigned, seed)
    assignment: dict[str, str] = {}
    start = 0.0
    names = list(fractions)
    for i, name in enumerate(names):
        stop = len(patients) if i == len(names) - 1 else start + fractions[name] / total * len(patients)
        for p in patients[int(round(start)): int(round(stop))]:
            assignment[p] = name
        start = stop
    for item in items:
        name = item.get("split") if respect_existing and item.get("split") else assignment[item["patient_id"]]
        parts.setdefault(name, []).append(dict(item, split=name))
    return parts


def with_validation(items: Sequence[Mapping], fraction: float = 0.1, seed: int = 0) -> list[dict]:
    """Items with train / val / test splits, by patient, for any schema.

    Items without a split (RSNA has none) are split by :func:`split_by_patient` (70 / 10 / 20 %);
    if there is still no validation split (VinDr-Mammo and CBIS-DDSM ship only training and test),
    ``fraction`` of the training patients become validation patients, seeded. Model selection
    then never needs the test split. Items that already have a validation split are unchanged.
    """
    items = [dict(item) for item in items]
    if any(not item.get("split") for item in items):
        parts = split_by_patient(items, seed=seed)
        items = [item for part in parts.values() for item in part]
    if any(item.get("split") == "val" for item in items):
        return items
    patients = _shuffled_patients([it for it in items if it.get("split") == "train"], seed)
    if len(patients) < 2:
        raise DatalistError(f"cannot carve a validation split out of {len(patients)} training patient(s)")
    chosen = set(patients[:max(1, int(round(fraction * len(patients))))])
    for item in items:
        if item.get("split") == "train" and item["patient_id"] in chosen:
            item["split"] = "val"
    return items


def select_split(items: Iterable[Mapping], split: str | Sequence[str], required: bool = False) -> list[dict]:
    """Items whose ``split`` is ``split`` (or one of several); ``required`` makes an empty result an error."""
    wanted = {split} if isinstance(split, str) else set(split)
    selected = [dict(item) for item in items if item.get("split") in wanted]
    if required and not selected:
        raise DatalistError(f"the datalist has no item in split {sorted(wanted)}: give those patients a split "
                            "(a splits.csv) or choose another split")
    return selected


def patient_subset(items: Sequence[Mapping], fraction: float, seed: int = 0) -> list[dict]:
    """Keep the items of a ``fraction`` of the patients (at least one patient).

    One seeded patient order is cut at different lengths, so for the same seed the 10 % subset
    is contained in the 50 % subset, which is contained in the whole.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    patients = _shuffled_patients(items, seed)
    keep = set(patients[: max(1, int(round(fraction * len(patients))))])
    return [dict(item) for item in items if item["patient_id"] in keep]


# ----------------------------------------------------------------------------- mixing sources
def mix_by_patient(sources: Sequence[Sequence[Mapping]], fractions: Sequence[float], split: str | None = "train",
                   seed: int = 0) -> list[dict]:
    """Mix datalists whose patients overlap (one dataset in several schemas) without repeating anyone.

    The patients of ``split`` (all patients for ``None``) are dealt, by a seeded shuffle, into
    disjoint groups sized by ``fractions``; source ``i`` contributes only the items of group ``i``.
    Used to train on the synthetic data as image-report pairs for some patients and as VinDr-style
    image-label data (templated sentences) for the others, as Mammo-CLIP mixes two corpora.
    """
    if len(sources) != len(fractions):
        raise ValueError(f"{len(sources)} sources but {len(fractions)} fractions")
    if any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum, got {fractions}")
    chosen = [list(src) if split is None else select_split(src, split) for src in sources]
    patients = sorted(set(p for items in chosen for p in patients_of(items)))
    random.Random(seed).shuffle(patients)
    total, start, groups = float(sum(fractions)), 0.0, []
    for i, fraction in enumerate(fractions):
        stop = len(patients) if i == len(fractions) - 1 else start + fraction / total * len(patients)
        groups.append(set(patients[int(round(start)): int(round(stop))]))
        start = stop
    return [dict(item) for items, group in zip(chosen, groups) for item in items if item["patient_id"] in group]


VIEW_ORDER = ("CC", "XCCL", "XCCM", "MLO", "ML", "LM", "LMO")


def group_views(items: Sequence[Mapping]) -> list[dict]:
    """One item per breast with two views: ``image`` (CC preferred) and ``image2`` (MLO preferred).

    Mammo-CLIP pairs the CC and MLO views of a breast (its image-image loss term). A breast with a
    single image gets that image twice (the two copies are augmented differently). Labels are
    merged by maximum; text, boxes and view metadata are those of ``image``; ``image2_view`` and
    ``boxes2`` describe the second view.
    """
    breasts: dict[tuple, list[Mapping]] = {}
    for item in items:
        key = (item["source"], item["patient_id"], item.get("study_id", ""), item.get("laterality", ""))
        breasts.setdefault(key, []).append(item)
    grouped = []
    for views in breasts.values():
        views = sorted(views, key=lambda it: (VIEW_ORDER.index(it["view"]) if it["view"] in VIEW_ORDER
                                              else len(VIEW_ORDER), it["image"]))
        first, second = views[0], views[-1]
        item = dict(first)
        item["image2"] = second["image"]
        item["image2_view"] = second["view"]
        item["boxes2"] = second["boxes"]
        for label in ("mass", "calcification", "cancer", "birads", "density"):
            item[label] = max(int(v[label]) for v in views)
        item["findings"] = list(dict.fromkeys(f for v in views for f in v["findings"]))
        grouped.append(item)
    return grouped
