"""A whole synthetic dataset: DICOM files, reports, VinDr / CBIS-DDSM / project CSVs, ground truth.

The layout and schemas are those of `docs/data_formats.md` ("Synthetic dataset layout"). Every
patient has its own random streams derived from (seed, patient index), so the output is
byte-for-byte identical whatever the number of worker processes. The dataset is built in a
temporary sibling directory and renamed into place, so an interrupted run never leaves a
directory that `ensure_dataset` would accept.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...version import __version__
from .dicom_writer import DicomUIDs, ImageEncoding, PatientIdentity, make_uid, write_mammogram, write_mask
from .phantom import BreastAnatomy, LesionSpec, RenderedImage, render_image, sample_anatomy, sample_lesion
from .reports import make_report

__all__ = [
    "COLUMNS",
    "FORMAT",
    "GENERATOR_VERSION",
    "BreastCase",
    "PatientCase",
    "ensure_dataset",
    "generate_dataset",
    "image_encoding",
    "patient_case",
    "render_patient",
    "split_patients",
]

FORMAT = "mammoclip-monai-synthetic"
GENERATOR_VERSION = 2
LATERALITIES = ("L", "R")
VIEWS = ("CC", "MLO")
DENSITY_PROBS = {"A": 0.10, "B": 0.35, "C": 0.40, "D": 0.15}
_SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))

_VINDR_BREAST = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "split",
]
_CBIS_TAIL = ["assessment", "pathology", "subtlety", "image file path", "cropped image file path", "ROI mask file path"]
COLUMNS: dict[str, list[str]] = {
    "image_text.csv": [
        "patient_id", "study_id", "image_id", "image_path", "laterality", "view", "report", "split",
        "mass", "calcification", "cancer", "density", "birads",
    ],
    "splits.csv": ["patient_id", "study_id", "split"],
    "breast-level_annotations.csv": _VINDR_BREAST,
    "finding_annotations.csv": _VINDR_BREAST + ["finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax"],
    "mass_case_description_train_set.csv": [
        "patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
        "abnormality type", "mass shape", "mass margins",
    ] + _CBIS_TAIL,
    "calc_case_description_train_set.csv": [
        "patient_id", "breast density", "left or right breast", "image view", "abnormality id",
        "abnormality type", "calc type", "calc distribution",
    ] + _CBIS_TAIL,
    "truth.csv": [
        "image_id", "study_id", "patient_id", "image_path", "laterality", "view", "height", "width",
        "breast_xmin", "breast_ymin", "breast_xmax", "breast_ymax",
        "label_xmin", "label_ymin", "label_xmax", "label_ymax",
        "marker_xmin", "marker_ymin", "marker_xmax", "marker_ymax",
        "chest_wall_side", "photometric_interpretation", "bits_stored", "transfer_syntax", "voi",
        "pixel_spacing_mm", "density",
    ],
    "truth_findings.csv": [
        "image_id", "study_id", "patient_id", "laterality", "view", "kind", "shape",
        "xmin", "ymin", "xmax", "ymax", "region", "depth", "size_mm",
    ],
}
COLUMNS["mass_case_description_test_set.csv"] = COLUMNS["mass_case_description_train_set.csv"]
COLUMNS["calc_case_description_test_set.csv"] = COLUMNS["calc_case_description_train_set.csv"]

_CBIS_MASS_SHAPE = {"round": "ROUND", "oval": "OVAL", "irregular": "IRREGULAR", "spiculated": "IRREGULAR"}
_CBIS_MARGIN = {
    "circumscribed": "CIRCUMSCRIBED",
    "obscured": "OBSCURED",
    "microlobulated": "MICROLOBULATED",
    "indistinct": "ILL_DEFINED",
    "spiculated": "SPICULATED",
}
_CBIS_CALC = {
    "pleomorphic": "PLEOMORPHIC",
    "amorphous": "AMORPHOUS",
    "fine linear branching": "FINE_LINEAR_BRANCHING",
    "punctate": "PUNCTATE",
}
_LESION_BIRADS = {  # P(BI-RADS 3, 4, 5) by lesion look
    "round": (0.55, 0.40, 0.05),
    "oval": (0.55, 0.40, 0.05),
    "irregular": (0.10, 0.60, 0.30),
    "spiculated": (0.0, 0.30, 0.70),
    "cluster": (0.20, 0.60, 0.20),
}
_FAMILY = (
    "Doe",
    "Roe",
    "Smith",
    "Garcia",
    "Nguyen",
    "Kowalski",
    "Okafor",
    "Tanaka",
    "Silva",
    "Novak",
    "Haddad",
    "Larsen",
)
_GIVEN = ("Jane", "Mary", "Ana", "Li", "Fatima", "Olga", "Sofia", "Grace", "Amara", "Ingrid", "Mei", "Rosa")


# --------------------------------------------------------------------------------------------
# Per-patient ground truth (pure functions of seed and index)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BreastCase:
    """Ground truth of one breast, shared by its CC and MLO images."""

    laterality: str
    anatomy: BreastAnatomy
    lesions: tuple[LesionSpec, ...]
    lesion_birads: tuple[int, ...]
    pathology: tuple[str, ...]  # CBIS-DDSM pathology per lesion
    subtlety: tuple[int, ...]
    birads: int
    cancer: int
    report: str

    @property
    def mass(self) -> int:
        return int(any(x.kind == "mass" for x in self.lesions))

    @property
    def calcification(self) -> int:
        return int(any(x.kind == "calcification" for x in self.lesions))


@dataclass(frozen=True)
class PatientCase:
    """One synthetic patient (one screening study, four images)."""

    index: int
    seed: int
    patient_id: str  # pseudonymous key used in the CSVs
    study_id: str
    density: str
    age: int
    identity: PatientIdentity  # fictitious header identifiers, never written to CSV/JSON
    breasts: dict[str, BreastCase]

    def image_id(self, laterality: str, view: str) -> str:
        return _hex_id(self.seed, self.index, laterality, view, "image")

    def image_path(self, laterality: str, view: str) -> str:
        return f"images/{self.study_id}/{self.image_id(laterality, view)}.dicom"


def _rng(seed: int, index: int, *stream: int) -> np.random.Generator:
    """Independent named random stream of one patient."""
    return np.random.default_rng([int(seed), int(index), *stream])


def _hex_id(*parts: object) -> str:
    text = "|".join(str(p) for p in (FORMAT, *parts))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _identity(seed: int, index: int, rng: np.random.Generator, age: int) -> PatientIdentity:
    """Fictitious, unique header identifiers (unrelated to the pseudonymous CSV key)."""
    offsets = np.random.default_rng([int(seed), 2**31 - 7]).integers(0, 10**9, 3)
    study = _dt.date(2016, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 8 * 365)))
    anniversary = study.replace(year=study.year - age, day=min(study.day, 28))
    birth = anniversary - _dt.timedelta(days=int(rng.integers(0, 364)))
    family, given = _FAMILY[int(rng.integers(len(_FAMILY)))], _GIVEN[int(rng.integers(len(_GIVEN)))]
    return PatientIdentity(
        name=f"{family}^{given}^{(index * 7919 + int(offsets[0])) % 10**6:06d}",
        patient_id=f"MRN-{(index * 104729 + int(offsets[1])) % 10**8:08d}",
        birth_date=birth.strftime("%Y%m%d"),
        age=age,
        accession=f"ACC{(index * 15485863 + int(offsets[2])) % 10**9:09d}",
        study_date=study.strftime("%Y%m%d"),
        study_time=f"{int(rng.integers(7, 18)):02d}{int(rng.integers(60)):02d}{int(rng.integers(60)):02d}",
    )


def _sample_lesions(rng: np.random.Generator) -> list[LesionSpec]:
    """Lesions of one breast: mass ~0.3 (sometimes two), calcification cluster ~0.25."""
    kinds: list[str] = []
    if rng.random() < 0.30:
        kinds += ["mass"] * (2 if rng.random() < 0.12 else 1)
    if rng.random() < 0.25:
        kinds.append("calcification")
    lesions: list[LesionSpec] = []
    for kind in kinds:
        for _ in range(10):  # prefer distinct regions so lesions do not pile up
            spec = sample_lesion(rng, kind)
            if spec.region not in {x.region for x in lesions}:
                break
        lesions.append(spec)
    return lesions


def _breast_case(
    seed: int, index: int, laterality: str, density: str, age: int, rng: np.random.Generator, fov_mm: float | None
) -> BreastCase:
    anatomy = sample_anatomy(rng)
    if fov_mm is not None:  # one detector per study: both breasts share the pixel spacing
        anatomy = dataclasses.replace(anatomy, fov_mm=fov_mm)
    lesions = _sample_lesions(rng)
    lesion_birads = tuple(int(rng.choice((3, 4, 5), p=_LESION_BIRADS[x.shape])) for x in lesions)
    birads = max(lesion_birads) if lesions else (1 if rng.random() < 0.8 else 2)
    cancer = int(birads == 5 or (birads == 4 and rng.random() < 0.3))
    worst = int(np.argmax(lesion_birads)) if lesions else -1
    pathology = tuple(
        "MALIGNANT" if cancer and i == worst else ("BENIGN" if b >= 4 else "BENIGN_WITHOUT_CALLBACK")
        for i, b in enumerate(lesion_birads)
    )
    subtlety = tuple(int(rng.integers(2, 6)) for _ in lesions)
    lat_code = LATERALITIES.index(laterality)
    report = make_report(_rng(seed, index, 2, lat_code), laterality, density, lesions, birads, age)
    return BreastCase(laterality, anatomy, tuple(lesions), lesion_birads, pathology, subtlety, birads, cancer, report)


def patient_case(seed: int, index: int) -> PatientCase:
    """Demographics, density, per-breast lesions, BI-RADS and reports of one patient."""
    rng = _rng(seed, index, 0)
    density = str(rng.choice(list(DENSITY_PROBS), p=list(DENSITY_PROBS.values())))
    age = int(rng.integers(40, 81))
    identity = _identity(seed, index, _rng(seed, index, 4), age)
    left = _breast_case(seed, index, "L", density, age, rng, None)
    breasts = {"L": left, "R": _breast_case(seed, index, "R", density, age, rng, left.anatomy.fov_mm)}
    return PatientCase(
        index=index,
        seed=seed,
        patient_id=f"SYN{index:05d}",
        study_id=_hex_id(seed, index, "study"),
        density=density,
        age=age,
        identity=identity,
        breasts=breasts,
    )


def render_patient(
    case: PatientCase, image_size: tuple[int, int] = (1024, 832)
) -> Iterator[tuple[str, str, RenderedImage]]:
    """The four images (L/R x CC/MLO) of a patient, exactly as the generator writes them."""
    for lat in LATERALITIES:
        breast = case.breasts[lat]
        for view in VIEWS:
            rng = _rng(case.seed, case.index, 1, LATERALITIES.index(lat), VIEWS.index(view))
            image = render_image(rng, lat, view, case.density, breast.lesions, image_size, anatomy=breast.anatomy)
            yield lat, view, image


def image_encoding(
    seed: int,
    index: int,
    laterality: str,
    view: str,
    bits_choices: Sequence[int] = (12, 14, 16),
    rle_fraction: float = 0.15,
    monochrome1_fraction: float = 0.3,
) -> ImageEncoding:
    """How one image is stored (bits, photometric, transfer syntax, VOI), drawn per image."""
    rng = _rng(seed, index, 3, LATERALITIES.index(laterality), VIEWS.index(view))
    bits = int(bits_choices[int(rng.integers(len(bits_choices)))])
    mono1 = rng.random() < monochrome1_fraction
    rle = rng.random() < rle_fraction
    u = rng.random()
    voi = "window" if u < 0.5 else ("lut" if u < 0.6 else "none")
    full = rng.random() < 0.5
    window = (0.0, 1.0) if full else (float(rng.uniform(0.0, 0.03)), float(rng.uniform(0.97, 1.0)))
    return ImageEncoding(
        bits_stored=bits,
        photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
        transfer="rle" if rle else "explicit",
        voi=voi,
        window=window,
        lut_gamma=float(rng.uniform(0.8, 1.25)),
        pixel_spacing_tag=bool(rng.random() < 0.3),
    )


def split_patients(n_patients: int, seed: int) -> list[str]:
    """Split per patient index: seeded permutation, 70 % train, 10 % val, 20 % test."""
    n_val = max(1, round(0.1 * n_patients)) if n_patients >= 3 else 0
    n_test = max(1, round(0.2 * n_patients)) if n_patients >= 2 else 0
    order = np.random.default_rng([int(seed), 2**31 - 11]).permutation(n_patients)
    split = ["train"] * n_patients
    for rank, idx in enumerate(order):
        if rank < n_test:
            split[idx] = "test"
        elif rank < n_test + n_val:
            split[idx] = "val"
    return split


# --------------------------------------------------------------------------------------------
# One patient -> files + CSV rows (runs in worker processes)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    index: int
    split: str
    root: str
    params: dict[str, Any]


def _f(value: float) -> str:
    return f"{value:.2f}"


def _box_cols(prefix: str, box: Sequence[float]) -> dict[str, str]:
    return {f"{prefix}{k}": _f(v) for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)}


def _generate_patient(task: _Task) -> dict[str, list[dict[str, str]]]:
    """Render, encode and write one patient's images and masks; return its CSV rows."""
    p = task.params
    seed, idx = p["seed"], task.index
    case = patient_case(seed, idx)
    rows: dict[str, list[dict[str, str]]] = {name: [] for name in COLUMNS}
    root = Path(task.root)
    vindr_split = "test" if task.split == "test" else "training"
    cbis_split = "test" if task.split == "test" else "train"
    rows["splits.csv"].append({"patient_id": case.patient_id, "study_id": case.study_id, "split": task.split})
    for lat, view, img in render_patient(case, tuple(p["image_size"])):
        breast = case.breasts[lat]
        image_id, rel = case.image_id(lat, view), case.image_path(lat, view)
        enc = image_encoding(seed, idx, lat, view, p["bits_choices"], p["rle_fraction"], p["monochrome1_fraction"])
        uids = DicomUIDs(
            study=make_uid(seed, idx, "study"),
            series=make_uid(seed, idx, lat, view, "series"),
            sop=make_uid(seed, idx, lat, view, "sop"),
        )
        number = LATERALITIES.index(lat) * 2 + VIEWS.index(view) + 1
        write_mammogram(
            root / rel, img.image, laterality=lat, view=view, spacing_mm=img.pixel_spacing_mm,
            identity=case.identity, uids=uids, encoding=enc, series_number=number, instance_number=1,
        )
        h, w = img.image.shape
        common = {"patient_id": case.patient_id, "study_id": case.study_id, "image_id": image_id}
        rows["image_text.csv"].append({
            **common, "image_path": rel, "laterality": lat, "view": view, "report": breast.report,
            "split": task.split, "mass": str(breast.mass), "calcification": str(breast.calcification),
            "cancer": str(breast.cancer), "density": case.density, "birads": str(breast.birads),
        })
        vindr = {
            "study_id": case.study_id, "series_id": _hex_id(seed, idx, lat, view, "series"),
            "image_id": image_id, "laterality": lat, "view_position": view, "height": str(h), "width": str(w),
            "breast_birads": f"BI-RADS {breast.birads}", "breast_density": f"DENSITY {case.density}",
            "split": vindr_split,
        }
        rows["breast-level_annotations.csv"].append(vindr)
        rows["truth.csv"].append({
            **common, "image_path": rel, "laterality": lat, "view": view, "height": str(h), "width": str(w),
            **_box_cols("breast_", img.breast_box), **_box_cols("label_", img.label_box),
            **_box_cols("marker_", img.marker_box), "chest_wall_side": img.chest_wall_side,
            "photometric_interpretation": enc.photometric, "bits_stored": str(enc.bits_stored),
            "transfer_syntax": enc.transfer, "voi": enc.voi, "pixel_spacing_mm": f"{img.pixel_spacing_mm:.6g}",
            "density": case.density,
        })
        if not img.lesions:
            rows["finding_annotations.csv"].append({
                **vindr, "finding_categories": "['No Finding']", "finding_birads": "",
                "xmin": "", "ymin": "", "xmax": "", "ymax": "",
            })
        for k, (lesion, truth) in enumerate(zip(breast.lesions, img.lesions, strict=True)):
            category = "['Mass']" if lesion.kind == "mass" else "['Suspicious Calcification']"
            rows["finding_annotations.csv"].append({
                **vindr, "finding_categories": category, "finding_birads": f"BI-RADS {breast.lesion_birads[k]}",
                **_box_cols("", truth.box),
            })
            rows["truth_findings.csv"].append({
                **common, "laterality": lat, "view": view, "kind": truth.kind, "shape": truth.shape,
                **_box_cols("", truth.box), "region": truth.region, "depth": truth.depth,
                "size_mm": f"{truth.size_mm:.1f}",
            })
            mask_rel = f"cbis_masks/{image_id}_{k + 1}.dcm"
            write_mask(
                root / mask_rel, truth.mask if truth.mask is not None else np.zeros((h, w), bool),
                laterality=lat, view=view, spacing_mm=img.pixel_spacing_mm, identity=case.identity,
                uids=DicomUIDs(
                    study=uids.study, series=make_uid(seed, idx, lat, view, k, "mask-series"),
                    sop=make_uid(seed, idx, lat, view, k, "mask"),
                ),
                instance_number=k + 1,
            )
            cbis = {
                "patient_id": case.patient_id, "left or right breast": "LEFT" if lat == "L" else "RIGHT",
                "image view": view, "abnormality id": str(k + 1), "assessment": str(breast.lesion_birads[k]),
                "pathology": breast.pathology[k], "subtlety": str(breast.subtlety[k]),
                "image file path": rel, "cropped image file path": "", "ROI mask file path": mask_rel,
            }
            density_num = str("ABCD".index(case.density) + 1)
            if lesion.kind == "mass":
                cbis.update({
                    "breast_density": density_num, "abnormality type": "mass",
                    "mass shape": _CBIS_MASS_SHAPE[lesion.shape], "mass margins": _CBIS_MARGIN[lesion.margin],
                })
                rows[f"mass_case_description_{cbis_split}_set.csv"].append(cbis)
            else:
                cbis.update({
                    "breast density": density_num, "abnormality type": "calcification",
                    "calc type": _CBIS_CALC[lesion.morphology], "calc distribution": "CLUSTERED",
                })
                rows[f"calc_case_description_{cbis_split}_set.csv"].append(cbis)
    return rows


# --------------------------------------------------------------------------------------------
# Whole dataset
# --------------------------------------------------------------------------------------------
def _parameters(
    n_patients: int,
    seed: int,
    image_size: Sequence[int],
    bits_choices: Sequence[int],
    rle_fraction: float,
    monochrome1_fraction: float,
) -> dict[str, Any]:
    """Validated parameters that determine the output (what dataset.json records)."""
    size = [int(v) for v in image_size]
    bits = [int(b) for b in bits_choices]
    if len(size) != 2 or min(size) < 96:
        raise ValueError(f"image_size must be (H, W) with both >= 96, got {image_size!r}")
    if not bits or any(b < 8 or b > 16 for b in bits):
        raise ValueError(f"bits_choices must be in 8..16, got {bits_choices!r}")
    if int(n_patients) < 1 or int(seed) < 0:
        raise ValueError("n_patients must be >= 1 and seed >= 0")
    for name, frac in (("rle_fraction", rle_fraction), ("monochrome1_fraction", monochrome1_fraction)):
        if not 0.0 <= float(frac) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {frac!r}")
    return {
        "n_patients": int(n_patients),
        "seed": int(seed),
        "image_size": size,
        "bits_choices": bits,
        "rle_fraction": float(rle_fraction),
        "monochrome1_fraction": float(monochrome1_fraction),
    }


def _read_info(out: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT else None


def _matches(info: dict[str, Any] | None, params: dict[str, Any]) -> bool:
    return bool(info) and info.get("generator_version") == GENERATOR_VERSION and info.get("parameters") == params


def _write_csv(path: Path, columns: list[str], rows: Iterable[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n", extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)


def _summary(params: dict[str, Any], rows: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """dataset.json content: parameters, versions and counts (no identifiers, no timestamps)."""
    breasts = rows["image_text.csv"][::2]  # CC row of each breast (CC and MLO share the labels)
    truth = rows["truth.csv"]
    counts = {
        "patients": len(rows["splits.csv"]),
        "images": len(rows["image_text.csv"]),
        "studies": len({r["study_id"] for r in rows["image_text.csv"]}),
        "splits": dict(sorted(Counter(r["split"] for r in rows["splits.csv"]).items())),
        "density": dict(sorted(Counter(r["density"] for r in breasts[::2]).items())),
        "breasts_with_mass": sum(int(r["mass"]) for r in breasts),
        "breasts_with_calcification": sum(int(r["calcification"]) for r in breasts),
        "breasts_with_cancer": sum(int(r["cancer"]) for r in breasts),
        "birads": dict(sorted(Counter(r["birads"] for r in breasts).items())),
        "finding_boxes": dict(sorted(Counter(r["kind"] for r in rows["truth_findings.csv"]).items())),
        "cbis_masks": len(rows["truth_findings.csv"]),
        "photometric_interpretation": dict(sorted(Counter(r["photometric_interpretation"] for r in truth).items())),
        "transfer_syntax": dict(sorted(Counter(r["transfer_syntax"] for r in truth).items())),
        "voi": dict(sorted(Counter(r["voi"] for r in truth).items())),
        "bits_stored": dict(sorted(Counter(r["bits_stored"] for r in truth).items())),
    }
    return {
        "format": FORMAT,
        "generator_version": GENERATOR_VERSION,
        "package_version": __version__,
        "parameters": params,
        "counts": counts,
        "files": sorted(COLUMNS),
    }


def _run_tasks(tasks: list[_Task], workers: int, progress: bool) -> Iterator[dict[str, list[dict[str, str]]]]:
    """Results in patient order, from a spawn pool (or in-process for one worker)."""
    start, last = time.monotonic(), 0.0
    n = len(tasks)
    tty = sys.stderr.isatty()

    def report(done: int) -> None:  # counts only: never a patient identifier
        nonlocal last
        now = time.monotonic() - start
        if progress and (done == n or now - last >= (2.0 if tty else 15.0)):
            last = now
            text = f"synthetic dataset: {done}/{n} patients ({now:.0f} s)"
            if tty:
                print("\r" + text, end="\n" if done == n else "", file=sys.stderr, flush=True)
            else:
                print(text, file=sys.stderr, flush=True)

    if workers <= 1:
        for done, task in enumerate(tasks, 1):
            yield _generate_patient(task)
            report(done)
        return
    with multiprocessing.get_context("spawn").Pool(processes=workers) as pool:
        for done, rows in enumerate(pool.imap(_generate_patient, tasks, chunksize=1), 1):
            yield rows
            report(done)


def _cleanup_stale(out: Path) -> None:
    """Remove temporary siblings left by killed runs of this host (their process is gone)."""
    for tmp in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse to replace a complete dataset without `overwrite`, or anything that is not ours."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    info = _read_info(out)
    if info is not None and not overwrite:
        raise FileExistsError(f"{out} already holds a synthetic dataset; "
                              "pass overwrite=True (mammoclip synth --overwrite) to replace it")
    if info is None and any(out.iterdir()):
        raise FileExistsError(
            f"{out} is a non-empty directory without a synthetic dataset.json; refusing to replace it"
        )


def _swap_into_place(tmp: Path, out: Path, params: dict[str, Any]) -> None:
    """Rename the finished temporary directory to `out` (replacing an old dataset)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is None and _matches(_read_info(out), params):  # a concurrent run finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_dataset(
    out_dir: str | os.PathLike[str],
    n_patients: int = 200,
    seed: int = 0,
    image_size: tuple[int, int] = (1024, 832),
    workers: int | None = None,
    bits_choices: Sequence[int] = (12, 14, 16),
    rle_fraction: float = 0.15,
    monochrome1_fraction: float = 0.3,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the synthetic dataset at `out_dir`; returns the summary written to dataset.json.

    `workers` processes (default: all CPUs) are started with the "spawn" method, so a calling
    script needs the usual `if __name__ == "__main__":` guard. The output does not depend on
    `workers` or `progress`. An existing complete dataset is only replaced with `overwrite=True`;
    a non-empty directory that is not a synthetic dataset is never replaced.
    """
    params = _parameters(n_patients, seed, image_size, bits_choices, rle_fraction, monochrome1_fraction)
    out = Path(out_dir).expanduser().absolute()
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        splits = split_patients(params["n_patients"], params["seed"])
        tasks = [_Task(i, splits[i], str(tmp), params) for i in range(params["n_patients"])]
        n_workers = max(1, min(int(workers or os.cpu_count() or 1), len(tasks)))
        rows: dict[str, list[dict[str, str]]] = {name: [] for name in COLUMNS}
        for patient_rows in _run_tasks(tasks, n_workers, progress):
            for name, items in patient_rows.items():
                rows[name].extend(items)
        for name, columns in COLUMNS.items():
            _write_csv(tmp / name, columns, rows[name])
        (tmp / "cbis_masks").mkdir(exist_ok=True)
        summary = _summary(params, rows)
        text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
        (tmp / "dataset.json").write_text(text, encoding="utf-8")  # written last: marks completeness
        _check_target(out, overwrite)
        _swap_into_place(tmp, out, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def ensure_dataset(
    out_dir: str | os.PathLike[str],
    n_patients: int = 200,
    seed: int = 0,
    image_size: tuple[int, int] = (1024, 832),
    workers: int | None = None,
    bits_choices: Sequence[int] = (12, 14, 16),
    rle_fraction: float = 0.15,
    monochrome1_fraction: float = 0.3,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Return `out_dir`, generating it only if dataset.json is missing or its parameters differ."""
    params = _parameters(n_patients, seed, image_size, bits_choices, rle_fraction, monochrome1_fraction)
    out = Path(out_dir).expanduser().absolute()
    if overwrite or not _matches(_read_info(out), params):
        generate_dataset(
            out, n_patients, seed, image_size, workers, bits_choices, rle_fraction,
            monochrome1_fraction, overwrite=True, progress=progress,
        )
    return Path(out_dir)
