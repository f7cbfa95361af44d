"""CSV schemas -> MONAI datalists (lists of dicts), with splits and sub-samples drawn by patient.

Every item has the same keys whatever the source, so datasets can be mixed in one loader::

    image        absolute path of the DICOM/PNG file
    patient_id   patient key (VinDr: study_id, unless a splits CSV names the study's patient),
                 used for every split and sub-sample
    study_id, image_id, laterality ("L"/"R"/""), view ("CC"/"MLO"/...), split ("train"/"val"/"test"/"")
    mass, calcification, cancer        1 / 0, or -1 when the source does not say
    density      0-3 for BI-RADS density A-D, -1 when unknown
    birads       0-6, -1 when unknown
    findings     list of finding category names present (VinDr names), [] when none
    boxes        float32 (N, 4) finding boxes [x_min, y_min, x_max, y_max] in file pixels
    box_labels   list of N category names
    report       report text ("" for image-label sources)
    source       "image_text" | "vindr" | "rsna" | "cbis_ddsm"

Labels use -1 rather than None so that items collate into tensors; an empty cell means "unknown".

Every CSV is checked up front and completely: a file that is missing, not UTF-8, ragged (a row
with more or fewer fields than the header), header-only, without a required column, or with a
value that does not parse (a box coordinate, a density, a BI-RADS category, a 0/1 label, a VinDr
category list, a split name) is a :class:`DatalistError` (an
:class:`~mammoclip_monai.utils.InvalidInputError`) naming the file, the line as an editor shows it
(the header is line 1) and the column, and saying what was expected. Image paths that resolve
outside the dataset folder (``..`` escapes; links placed inside are fine) are refused unless ``allow_outside=True``,
so a datalist cannot make a run read arbitrary files.
"""

from __future__ import annotations

import ast
import csv
import io
import math
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import InvalidInputError, as_flag
from ..utils.input_files import read_text_file
from .reader import read_mammogram

SPLITS = ("train", "val", "test")
DENSITY_LETTERS = "ABCD"
VINDR_FINDINGS = (
    "Mass", "Suspicious Calcification", "Architectural Distortion", "Asymmetry", "Focal Asymmetry",
    "Global Asymmetry", "Suspicious Lymph Node", "Nipple Retraction", "Skin Retraction", "Skin Thickening",
    "No Finding",
)
NO_DATASET = "datalist"
"""The ``path`` of errors about a datalist as a whole (no single file to name)."""


class DatalistError(InvalidInputError):
    """A CSV that cannot become a datalist: ``"<csv>: [line N, column 'c': ]<what is wrong and what was expected>"``."""


# ----------------------------------------------------------------------------- reading
class CsvRow(dict):
    """One CSV record as ``{column: stripped value}``; ``line`` is where it starts in the file (header = 1)."""

    line: int = 0


def _cell(row: CsvRow, column: str | Sequence[str]) -> str:
    if isinstance(column, str):
        return f"line {row.line}, column {column!r}"
    return f"line {row.line}, columns {'/'.join(column)!r}"


def cell_error(path: str | os.PathLike, row: CsvRow, column: str | Sequence[str], reason: str) -> DatalistError:
    """A :class:`DatalistError` pointing at one cell (or a group of cells) of a CSV row."""
    return DatalistError(path, reason, where=_cell(row, column))


def read_csv(path: str | os.PathLike, required: Iterable[str] = (), allow_empty: bool = False) -> list[CsvRow]:
    """Read a CSV into rows of stripped strings, checking its shape before anything uses it.

    Checked: the file exists and is UTF-8 (a BOM is fine), the header names each column once and
    holds the ``required`` columns, every record has exactly as many fields as the header, and (unless
    ``allow_empty``) there is at least one data row. Blank lines are skipped. Each row remembers
    the line it starts on (:class:`CsvRow`), so later checks can name it.
    """
    required = list(required)
    what = f"a CSV file with the columns {required}" if required else "a CSV file"
    try:
        text = read_text_file(path, what)
    except InvalidInputError as err:  # missing, a folder, not UTF-8: the same error, as the datalist kind
        raise DatalistError(err.path, err.reason, where=err.where) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise DatalistError(path, "contains a NUL byte: not a text CSV (a binary or UTF-16 file?)",
                            where=f"line {text.count(chr(10), 0, nul) + 1}")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[CsvRow] = []
    header: list[str] | None = None
    previous_end = 0
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            if header is None:
                header = [name.strip() for name in record]
                _check_header(path, header, required)
                continue
            if len(record) != len(header):
                raise DatalistError(path, f"{len(record)} field(s) but the header has {len(header)} column(s); look "
                                          "for a missing or extra comma, or a comma in a value that is not quoted",
                                    where=f"line {start}")
            row = CsvRow((name, value.strip()) for name, value in zip(header, record) if name)
            row.line = start
            rows.append(row)
    except csv.Error as err:
        raise DatalistError(path, f"not a readable CSV ({err})", where=f"line {reader.line_num}") from None
    if header is None:
        raise DatalistError(path, f"the file is empty; expected {what} (a header line, then one line per row)")
    if not rows and not allow_empty:
        raise DatalistError(path, "has a header but no data rows; an empty datalist cannot be used")
    return rows


def _check_header(path: str | os.PathLike, header: list[str], required: Sequence[str]) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(header, start=1):
        if name and name in seen:
            raise DatalistError(path, f"column {name!r} appears twice in the header (columns {seen[name]} and "
                                      f"{index}); each column must be named once", where="line 1")
        seen[name] = index
    missing = [c for c in required if c not in seen]
    if missing:
        raise DatalistError(path, f"missing column(s) {missing}; found {[c for c in header if c]}")


def required_value(path: str | os.PathLike, row: CsvRow, column: str, meaning: str) -> str:
    """The value of ``column``, which must not be empty (``meaning`` says what it is for the message)."""
    value = row.get(column, "")
    if not value:
        raise cell_error(path, row, column, f"empty; every row needs {meaning}")
    return value


def _inside(path: Path, folder: Path) -> bool:
    """``path`` lies in ``folder`` as written (``..`` collapsed) or once both are resolved.

    Written-inside admits a link the dataset's owner put inside the folder (datasets are often
    farms of links into an archive); resolved-inside admits absolute paths into the folder's real
    location. A path that climbs out with ``..``, or an absolute path elsewhere, fails both.
    """
    def within(a: str, b: str) -> bool:
        return os.path.commonpath([a, b]) == b

    written = within(os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(folder)))
    return written or within(os.path.realpath(path), os.path.realpath(folder))


def dataset_path(value: str, root: Path, allow_outside: bool, source: str | os.PathLike, row: CsvRow,
                 column: str | Sequence[str]) -> str:
    """``value`` joined to ``root`` (absolute paths kept); refused if it lies outside ``root`` (:func:`_inside`).

    The returned path is the joined one (nothing resolved).
    """
    joined = Path(value) if os.path.isabs(value) else root / value
    if not as_flag(allow_outside, "allow_outside_dataset") and not _inside(joined, root):
        raise cell_error(source, row, column,
                         f"the image path {value!r} resolves to a file outside the dataset folder {root}; move the "
                         "files inside it, give dataset_dir=<their root>, or pass allow_outside=True "
                         "(allow_outside_dataset in the bundle) if that is intended")
    return str(joined)


def check_files_exist(items: Sequence[Mapping], source: str | os.PathLike, key: str = "image") -> None:
    """Raise a :class:`DatalistError` listing (the first few) missing files."""
    missing = [item[key] for item in items if not os.path.isfile(item[key])]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatalistError(source, f"{len(missing)} image file(s) not found: {shown}")


# ----------------------------------------------------------------------------- values
# Each parser returns the "unknown" value for an empty cell and raises ValueError(reason) for
# anything it cannot read; the schemas turn that into a DatalistError naming line and column.
def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _whole(value: str) -> int | None:
    """``"3"`` / ``"3.0"`` -> 3; anything else -> None."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def binary_label(value: str) -> int:
    """``"1"`` / ``"0"`` (or ``"1.0"``) -> 1 / 0; empty or ``"-1"`` -> -1 (unknown)."""
    v = (value or "").strip()
    number = _whole(v) if v else -1
    if number not in (-1, 0, 1):
        raise ValueError(f"{value!r} is not a 0/1 label; expected 0, 1, or empty (unknown)")
    return number


def density_index(value: str) -> int:
    """``'A'``..``'D'``, ``'DENSITY C'``, ``1``..``4`` -> 0..3; empty (or 0, never a category) -> -1."""
    v = (value or "").strip().upper().replace("DENSITY", "").strip()
    if not v:
        return -1
    if len(v) == 1 and v in DENSITY_LETTERS:
        return DENSITY_LETTERS.index(v)
    number = _whole(v)
    if number is not None and 0 <= number <= 4:
        return number - 1
    raise ValueError(f"{value!r} is not a breast density; expected A-D, 'DENSITY A'-'DENSITY D', 1-4 or empty")


_BIRADS = re.compile(r"^(?:BI-?RADS)?\s*([0-6])(?:\.0+)?\s*[ABC]?$")


def birads_value(value: str) -> int:
    """``'BI-RADS 4'``, ``'4'``, ``'4A'``, ``'4.0'`` -> 4; empty -> -1."""
    v = (value or "").strip().upper()
    if not v:
        return -1
    match = _BIRADS.match(v)
    if match is None:
        raise ValueError(f"{value!r} is not a BI-RADS category; expected 0-6 ('4', '4A', 'BI-RADS 4') or empty")
    return int(match.group(1))


def laterality_code(value: str) -> str:
    """``L`` / ``LEFT`` / ``R`` / ``RIGHT`` (any case) -> ``"L"`` / ``"R"``; empty -> ``""`` (header decides)."""
    v = (value or "").strip().upper()
    code = {"": "", "L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}.get(v)
    if code is None:
        raise ValueError(f"{value!r} is not a laterality; expected L, R, LEFT, RIGHT or empty")
    return code


_SPLIT_NAMES = {"": "", "training": "train", "train": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test"}


def split_name(value: str) -> str:
    """``train``/``training``, ``val``/``valid``/``validation``, ``test``/``testing``; empty -> ``""``."""
    name = _SPLIT_NAMES.get((value or "").strip().lower())
    if name is None:
        raise ValueError(f"{value!r} is not a split; expected train, val or test (also training, validation, "
                         "testing) or empty")
    return name


def _parsed(path: str | os.PathLike, row: CsvRow, column: str, parse: Any) -> Any:
    """``parse(row[column])`` (a missing optional column reads as empty), its ValueError named by line and column."""
    try:
        return parse(row.get(column, ""))
    except ValueError as err:
        raise cell_error(path, row, column, str(err)) from None


def _first_present(row: CsvRow, columns: Sequence[str]) -> str:
    return next((c for c in columns if c in row), columns[0])


def _item(**fields: Any) -> dict[str, Any]:
    item = {"image": "", "patient_id": "", "study_id": "", "image_id": "", "laterality": "", "view": "",
            "split": "", "mass": -1, "calcification": -1, "cancer": -1, "density": -1, "birads": -1,
            "findings": [], "boxes": np.zeros((0, 4), np.float32), "box_labels": [], "report": "", "source": ""}
    item.update(fields)
    return item


def read_splits(source: Mapping[str, str] | str | os.PathLike) -> dict[str, str]:
    """``{patient_id: split}`` from a splits CSV (``patient_id, split``) or a mapping; every split name checked.

    A patient listed twice with different splits is an error naming both lines.
    """
    return _split_keys(source)[0]


def _split_keys(source: Mapping[str, str] | str | os.PathLike
                ) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """``({patient_id: split}, {study_id: (patient_id, split)})``: a splits CSV may name each patient's studies.

    The optional ``study_id`` column (one row per study) ties sources keyed by different ids
    together: the image-text CSV is keyed by patient, VinDr-Mammo by study. Without it a
    study-keyed source keeps its own split (a validation patient's studies become training items)
    and mixing the sources by patient can take the same person from both.
    """
    if isinstance(source, Mapping):
        splits = {}
        for patient, value in source.items():
            try:
                splits[str(patient)] = split_name(str(value))
            except ValueError as err:
                raise DatalistError("splits", str(err), where=f"patient {patient!r}") from None
        return splits, {}
    patients: dict[str, str] = {}
    studies: dict[str, tuple[str, str]] = {}
    lines: dict[tuple[str, str], int] = {}
    for row in read_csv(source, required=("patient_id", "split")):
        patient = required_value(source, row, "patient_id", "a patient key")
        name = _parsed(source, row, "split", split_name)
        if not name:
            raise cell_error(source, row, "split", "empty; a splits file gives every patient listed a split "
                                                   "(train, val or test)")
        if patient in patients and patients[patient] != name:
            raise cell_error(source, row, "split", f"patient {patient!r} is already in split {patients[patient]!r} "
                                                   f"(line {lines['patient', patient]}); "
                                                   "a patient belongs to one split")
        patients[patient], lines["patient", patient] = name, row.line
        study = row.get("study_id", "")
        if study:
            if study in studies and studies[study][0] != patient:
                raise cell_error(source, row, "study_id", f"study {study!r} already belongs to patient "
                                                          f"{studies[study][0]!r} (line {lines['study', study]})")
            studies[study], lines["study", study] = (patient, name), row.line
    return patients, studies


def _apply_split_overrides(items: list[dict], overrides: Mapping[str, str] | str | os.PathLike | None) -> None:
    """Give each item the split of its patient; a study named in the overrides also gives its patient key."""
    if overrides is None:
        return
    by_patient, by_study = _split_keys(overrides)
    for item in items:
        if item["patient_id"] in by_patient:
            item["split"] = by_patient[item["patient_id"]]
        elif item.get("study_id") in by_study:
            item["patient_id"], item["split"] = by_study[item["study_id"]]


IMAGE_TEXT_REQUIRED = ("patient_id", "image_path", "report")


def image_text_datalist(csv_path: str | os.PathLike, dataset_dir: str | os.PathLike | None = None,
                        check_files: bool = True, splits: Mapping[str, str] | str | os.PathLike | None = None,
                        allow_outside: bool = False) -> list[dict]:
    """The project's image-text schema (docs/data_formats.md): one item per image with its report.

    ``image_path`` is relative to ``dataset_dir`` (default: the CSV's folder) or absolute; it must
    resolve inside ``dataset_dir`` unless ``allow_outside``.
    """
    csv_path = Path(csv_path)
    root = Path(dataset_dir) if dataset_dir is not None else csv_path.parent
    items = []
    for row in read_csv(csv_path, required=IMAGE_TEXT_REQUIRED):
        value = required_value(csv_path, row, "image_path", "the path of its image")
        items.append(_item(
            image=dataset_path(value, root, allow_outside, csv_path, row, "image_path"),
            patient_id=required_value(csv_path, row, "patient_id", "a patient key"),
            study_id=row.get("study_id", ""), image_id=row.get("image_id", "") or Path(value).stem,
            laterality=_parsed(csv_path, row, "laterality", laterality_code), view=row.get("view", "").upper(),
            split=_parsed(csv_path, row, "split", split_name), report=row["report"],
            mass=_parsed(csv_path, row, "mass", binary_label),
            calcification=_parsed(csv_path, row, "calcification", binary_label),
            cancer=_parsed(csv_path, row, "cancer", binary_label),
            density=_parsed(csv_path, row, "density", density_index),
            birads=_parsed(csv_path, row, "birads", birads_value), source="image_text"))
    _apply_split_overrides(items, splits)
    if check_files:
        check_files_exist(items, csv_path)
    return items


VINDR_BREAST_REQUIRED = ("study_id", "image_id", "laterality", "view_position", "breast_birads", "breast_density",
                         "split")
VINDR_FINDING_REQUIRED = ("study_id", "image_id", "finding_categories", "xmin", "ymin", "xmax", "ymax")
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")


def parse_categories(text: str, source: str | os.PathLike = "finding_categories", where: str | None = None
                     ) -> list[str]:
    """VinDr's Python-list strings (``"['Mass', 'Suspicious Calcification']"``) -> list of known names.

    Anything but a list literal of names from :data:`VINDR_FINDINGS` (a bare number, a plain word,
    an unknown name) is a :class:`DatalistError`: a typo must not silently drop a finding.
    """
    text = (text or "").strip()
    expected = "expected a list such as ['Mass'] or ['No Finding'] of VinDr-Mammo category names"
    try:
        value = ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
        if text:
            raise DatalistError(source, f"cannot parse {text[:60]!r}; {expected}", where=where) from None
    if not isinstance(value, (list, tuple)):
        found = "an empty cell" if not text else f"{text[:60]!r}"
        raise DatalistError(source, f"found {found}; {expected}", where=where)
    names = []
    for name in value:
        if not isinstance(name, str) or name.strip() not in VINDR_FINDINGS:
            raise DatalistError(source, f"unknown finding category {name!r}; known: {list(VINDR_FINDINGS)}",
                                where=where)
        names.append(name.strip())
    return names


def _box(path: str | os.PathLike, row: CsvRow) -> list[float] | None:
    """The row's box, or None when all four coordinates are empty (a 'No Finding' row)."""
    given = [c for c in BOX_COLUMNS if row.get(c, "")]
    if not given:
        return None
    if len(given) < len(BOX_COLUMNS):
        empty = [c for c in BOX_COLUMNS if c not in given]
        raise cell_error(path, row, empty[0], f"empty while {given} are given; a box needs all of "
                                              f"{list(BOX_COLUMNS)} (or none, for a row without a box)")
    box = [_parsed(path, row, c, _number) for c in BOX_COLUMNS]
    if box[2] < box[0] or box[3] < box[1]:
        raise cell_error(path, row, BOX_COLUMNS, f"the box {box} has xmax < xmin or ymax < ymin; expected "
                                                 "[x_min, y_min, x_max, y_max] in pixels")
    return box


def vindr_datalist(dataset_dir: str | os.PathLike, breast_csv: str = "breast-level_annotations.csv",
                   finding_csv: str | None = "finding_annotations.csv", image_dir: str = "images",
                   extension: str = ".dicom", check_files: bool = True,
                   splits: Mapping[str, str] | str | os.PathLike | None = None,
                   allow_outside: bool = False) -> list[dict]:
    """VinDr-Mammo: breast-level rows joined with their finding boxes; the study is the patient key.

    Images are ``<dataset_dir>/<image_dir>/<study_id>/<image_id><extension>``; an id that would lead
    out of the image folder is refused unless ``allow_outside``.
    """
    root = Path(dataset_dir)
    breast_path = root / breast_csv
    rows = read_csv(breast_path, required=VINDR_BREAST_REQUIRED)
    findings: dict[str, list[tuple[list[str], list[float] | None]]] = defaultdict(list)
    if finding_csv is not None:
        finding_path = root / finding_csv
        for row in read_csv(finding_path, required=VINDR_FINDING_REQUIRED):
            image_id = required_value(finding_path, row, "image_id", "the image_id of its image")
            names = parse_categories(row["finding_categories"], finding_path,
                                     where=_cell(row, "finding_categories"))
            findings[image_id].append((names, _box(finding_path, row)))
    images = root / image_dir
    items = []
    for row in rows:
        study = required_value(breast_path, row, "study_id", "a study_id (the patient key)")
        image_id = required_value(breast_path, row, "image_id", "an image_id")
        present: list[str] = []
        boxes, box_labels = [], []
        for names, box in findings.get(image_id, []):
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
            image=dataset_path(f"{study}/{image_id}{extension}", images, allow_outside, breast_path, row,
                               ("study_id", "image_id")),
            patient_id=study, study_id=study, image_id=image_id,
            laterality=_parsed(breast_path, row, "laterality", laterality_code),
            view=row["view_position"].upper(), split=_parsed(breast_path, row, "split", split_name),
            density=_parsed(breast_path, row, "breast_density", density_index),
            birads=_parsed(breast_path, row, "breast_birads", birads_value),
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
                  splits: Mapping[str, str] | str | os.PathLike | None = None,
                  allow_outside: bool = False) -> list[dict]:
    """RSNA Screening Mammography ``train.csv``: malignancy, BI-RADS and density (often missing).

    Images are ``<dataset_dir>/<image_dir>/<patient_id>/<image_id><extension>`` (refused outside
    the image folder unless ``allow_outside``).
    """
    csv_path = Path(csv_path)
    root = Path(dataset_dir) if dataset_dir is not None else csv_path.parent
    images = root / image_dir
    items = []
    for row in read_csv(csv_path, required=RSNA_REQUIRED):
        patient = required_value(csv_path, row, "patient_id", "a patient key")
        image_id = required_value(csv_path, row, "image_id", "an image_id")
        items.append(_item(
            image=dataset_path(f"{patient}/{image_id}{extension}", images, allow_outside, csv_path, row,
                               ("patient_id", "image_id")),
            patient_id=patient, image_id=image_id, laterality=_parsed(csv_path, row, "laterality", laterality_code),
            view=row["view"].upper(), cancer=_parsed(csv_path, row, "cancer", binary_label),
            birads=_parsed(csv_path, row, "BIRADS", birads_value),
            density=_parsed(csv_path, row, "density", density_index), source="rsna"))
    _apply_split_overrides(items, splits)
    if check_files:
        check_files_exist(items, csv_path)
    return items


CBIS_COMMON = ("patient_id", "left or right breast", "image view", "abnormality id", "abnormality type",
               "assessment", "pathology", "image file path", "ROI mask file path")
CBIS_PATHOLOGIES = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")


def cbis_ddsm_datalist(csv_paths: Sequence[str | os.PathLike] | str | os.PathLike,
                       dataset_dir: str | os.PathLike | None = None, check_files: bool = True,
                       splits: Mapping[str, str] | str | os.PathLike | None = None,
                       allow_outside: bool = False) -> list[dict]:
    """CBIS-DDSM case descriptions (mass and/or calc CSVs): one item per full mammogram.

    Abnormalities of the same image are merged; ``roi_masks`` lists their mask files (boxes come
    from masks, see :func:`mask_box`). The split comes from the CSV name (``..._train_set`` /
    ``..._test_set``) unless ``splits`` overrides it. Image and mask paths are relative to
    ``dataset_dir`` (default: each CSV's folder) and must resolve inside it unless ``allow_outside``.
    """
    paths = [Path(csv_paths)] if isinstance(csv_paths, (str, os.PathLike)) else [Path(p) for p in csv_paths]
    if not paths:
        raise DatalistError(NO_DATASET, "cbis_ddsm_datalist needs at least one case-description CSV")
    by_image: dict[str, dict] = {}
    for csv_path in paths:
        root = Path(dataset_dir) if dataset_dir is not None else csv_path.parent
        rows = read_csv(csv_path, required=CBIS_COMMON)
        name = csv_path.name.lower()
        split = "test" if "test" in name else "train" if "train" in name else ""
        for row in rows:
            image_value = required_value(csv_path, row, "image file path", "the path of its full mammogram")
            image = dataset_path(image_value.strip('"').strip(), root, allow_outside, csv_path, row, "image file path")
            mask_value = required_value(csv_path, row, "ROI mask file path", "the path of its ROI mask")
            mask = dataset_path(mask_value.strip('"').strip(), root, allow_outside, csv_path, row,
                                "ROI mask file path")
            kind = row["abnormality type"].lower()
            if kind != "mass" and not kind.startswith("calc"):
                raise cell_error(csv_path, row, "abnormality type",
                                 f"{row['abnormality type']!r} is not an abnormality type; expected 'mass' or "
                                 "'calcification'")
            pathology = row["pathology"].upper()
            if pathology not in CBIS_PATHOLOGIES:
                raise cell_error(csv_path, row, "pathology", f"{row['pathology']!r} is not a pathology; expected one "
                                                             f"of {list(CBIS_PATHOLOGIES)}")
            assessment = _parsed(csv_path, row, "assessment", birads_value)
            item = by_image.get(image)
            if item is None:
                density_column = _first_present(row, ("breast_density", "breast density"))
                item = by_image[image] = _item(
                    image=image, patient_id=required_value(csv_path, row, "patient_id", "a patient key"),
                    image_id=Path(image).stem,
                    laterality=_parsed(csv_path, row, "left or right breast", laterality_code),
                    view=row["image view"].upper(), split=split,
                    density=_parsed(csv_path, row, density_column, density_index),
                    mass=0, calcification=0, cancer=0, source="cbis_ddsm")
                item["roi_masks"] = []
            category = "Mass" if kind == "mass" else "Suspicious Calcification"
            item["mass" if kind == "mass" else "calcification"] = 1
            if category not in item["findings"]:
                item["findings"].append(category)
            if pathology == "MALIGNANT":
                item["cancer"] = 1
            item["birads"] = max(item["birads"], assessment)
            item["roi_masks"].append(mask)
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
                    raise DatalistError(mask_path, "the ROI mask is empty; expected the lesion's pixels marked")
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
        raise DatalistError(NO_DATASET, f"cannot carve a validation split out of {len(patients)} training patient(s); "
                            "expected at least two")
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
        raise DatalistError(NO_DATASET, f"no item in split {sorted(wanted)}: give those patients a split "
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


def training_samples(items: Sequence[Mapping], multiview: bool = True) -> list[dict]:
    """What one training sample is: a breast with two views (:func:`group_views`) when ``multiview``,
    else one image per item (the items as they are). The bundle's ``train#datalist``."""
    return group_views(items) if multiview else list(items)
