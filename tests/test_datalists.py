"""Datalists from hand-made CSVs in each schema: columns, labels, boxes, errors, patient-level splits."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mammoclip_monai.data import datalists as dl


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_image_text_schema(tmp_path):
    touch(tmp_path / "img" / "a.dcm")
    touch(tmp_path / "img" / "b.dcm")
    csv_path = write_csv(tmp_path / "image_text.csv", [
        {"patient_id": "P1", "image_path": "img/a.dcm", "report": "FINDINGS: mass.", "laterality": "left",
         "view": "cc", "mass": "1", "calcification": "0", "density": "C", "birads": "4", "split": "train"},
        {"patient_id": "P2", "image_path": str(tmp_path / "img" / "b.dcm"), "report": "", "laterality": "",
         "view": "", "mass": "", "calcification": "", "density": "", "birads": "", "split": ""},
    ])
    items = dl.image_text_datalist(csv_path)
    assert items[0]["image"] == str(tmp_path / "img" / "a.dcm")
    assert (items[0]["laterality"], items[0]["view"], items[0]["mass"], items[0]["density"], items[0]["birads"]) == \
        ("L", "CC", 1, 2, 4)
    assert (items[1]["mass"], items[1]["density"], items[1]["birads"], items[1]["split"]) == (-1, -1, -1, "")
    assert items[1]["image"] == str(tmp_path / "img" / "b.dcm")  # absolute paths kept
    assert all(item["source"] == "image_text" for item in items)


def test_missing_column_is_named(tmp_path):
    csv_path = write_csv(tmp_path / "x.csv", [{"patient_id": "P1", "image_path": "a.dcm"}])
    with pytest.raises(dl.DatalistError, match=r"x\.csv: missing column\(s\) \['report'\]"):
        dl.image_text_datalist(csv_path)


def test_missing_file_is_named(tmp_path):
    csv_path = write_csv(tmp_path / "x.csv", [{"patient_id": "P1", "image_path": "nope.dcm", "report": "r"}])
    with pytest.raises(dl.DatalistError, match="nope.dcm"):
        dl.image_text_datalist(csv_path)
    assert dl.image_text_datalist(csv_path, check_files=False)[0]["image"].endswith("nope.dcm")


def test_missing_csv_is_named(tmp_path):
    with pytest.raises(dl.DatalistError, match="absent.csv: no such file; expected a CSV file"):
        dl.image_text_datalist(tmp_path / "absent.csv")


def vindr_fixture(root: Path) -> None:
    base = {"series_id": "s", "height": "100", "width": "80", "breast_birads": "BI-RADS 1",
            "breast_density": "DENSITY B", "split": "training"}
    breast = [
        dict(base, study_id="S1", image_id="i1", laterality="L", view_position="CC"),
        dict(base, study_id="S1", image_id="i2", laterality="L", view_position="MLO", breast_birads="BI-RADS 4"),
        dict(base, study_id="S2", image_id="i3", laterality="R", view_position="CC", split="test",
             breast_density="DENSITY D"),
    ]
    write_csv(root / "breast-level_annotations.csv", breast)
    finding = [
        dict(breast[0], finding_categories="['No Finding']", finding_birads="", xmin="", ymin="", xmax="", ymax=""),
        dict(breast[1], finding_categories="['Mass', 'Suspicious Calcification']", finding_birads="BI-RADS 4",
             xmin="10", ymin="20", xmax="30", ymax="40"),
        dict(breast[1], finding_categories="['Focal Asymmetry']", finding_birads="BI-RADS 3",
             xmin="1", ymin="2", xmax="3", ymax="4"),
        dict(breast[2], finding_categories="['No Finding']", finding_birads="", xmin="", ymin="", xmax="", ymax=""),
    ]
    write_csv(root / "finding_annotations.csv", finding)
    for row in breast:
        touch(root / "images" / row["study_id"] / f"{row['image_id']}.dicom")


def test_vindr_schema_joins_findings(tmp_path):
    vindr_fixture(tmp_path)
    items = {it["image_id"]: it for it in dl.vindr_datalist(tmp_path)}
    assert items["i1"]["findings"] == [] and items["i1"]["mass"] == 0 and items["i1"]["boxes"].shape == (0, 4)
    i2 = items["i2"]
    assert i2["findings"] == ["Mass", "Suspicious Calcification", "Focal Asymmetry"]
    assert (i2["mass"], i2["calcification"], i2["birads"], i2["density"]) == (1, 1, 4, 1)
    np.testing.assert_array_equal(i2["boxes"], [[10, 20, 30, 40], [10, 20, 30, 40], [1, 2, 3, 4]])
    assert i2["box_labels"] == ["Mass", "Suspicious Calcification", "Focal Asymmetry"]
    assert items["i3"]["split"] == "test" and items["i1"]["split"] == "train"
    assert items["i1"]["patient_id"] == "S1" and items["i3"]["density"] == 3
    assert items["i1"]["image"] == str(tmp_path / "images" / "S1" / "i1.dicom")


def test_vindr_split_overrides_from_csv(tmp_path):
    vindr_fixture(tmp_path)
    write_csv(tmp_path / "splits.csv", [{"patient_id": "S1", "split": "val"}])
    items = dl.vindr_datalist(tmp_path, splits=tmp_path / "splits.csv")
    assert {it["image_id"]: it["split"] for it in items} == {"i1": "val", "i2": "val", "i3": "test"}


def test_splits_by_study_reach_study_keyed_sources(tmp_path):
    """A splits CSV keyed by patient ids reaches VinDr rows (keyed by study) through its study_id column."""
    vindr_fixture(tmp_path)
    write_csv(tmp_path / "splits.csv", [{"patient_id": "P1", "study_id": "S1", "split": "val"},
                                        {"patient_id": "P2", "study_id": "S2", "split": "train"}])
    items = dl.vindr_datalist(tmp_path, splits=tmp_path / "splits.csv")
    assert {it["image_id"]: it["split"] for it in items} == {"i1": "val", "i2": "val", "i3": "train"}
    assert {it["image_id"]: it["patient_id"] for it in items} == {"i1": "P1", "i2": "P1", "i3": "P2"}
    assert dl.read_splits(tmp_path / "splits.csv") == {"P1": "val", "P2": "train"}
    write_csv(tmp_path / "splits.csv", [{"patient_id": "P1", "study_id": "S1", "split": "val"},
                                        {"patient_id": "P2", "study_id": "S1", "split": "train"}])
    with pytest.raises(dl.DatalistError, match="study 'S1' already belongs to patient 'P1'"):
        dl.vindr_datalist(tmp_path, splits=tmp_path / "splits.csv")


def test_synthetic_validation_patients_never_train(synthetic_dataset):
    """Every source of the default bundle gives a patient's images one key and one split; mixing never repeats one."""
    splits = dl.read_splits(synthetic_dataset / "splits.csv")
    text = dl.image_text_datalist(synthetic_dataset / "image_text.csv", splits=synthetic_dataset / "splits.csv")
    vindr = dl.vindr_datalist(synthetic_dataset, splits=synthetic_dataset / "splits.csv")
    patient_of_study = {it["study_id"]: it["patient_id"] for it in text}
    assert {splits[patient_of_study[it["study_id"]]] for it in vindr} >= {"train", "val", "test"}
    for it in vindr:
        assert it["split"] == splits[patient_of_study[it["study_id"]]], it["image_id"]
        assert it["patient_id"] == patient_of_study[it["study_id"]], it["image_id"]
    training = dl.mix_by_patient([text, vindr], [0.5, 0.5], split="train", seed=0)
    assert {it["study_id"] for it in training}.isdisjoint(
        {it["study_id"] for it in text if it["split"] != "train"})
    from_text = {it["patient_id"] for it in training if it["source"] != "vindr"}
    from_vindr = {it["patient_id"] for it in training if it["source"] == "vindr"}
    assert from_text and from_vindr and from_text.isdisjoint(from_vindr)
    assert from_text | from_vindr == {p for p, split in splits.items() if split == "train"}


def test_vindr_bad_categories_named(tmp_path):
    vindr_fixture(tmp_path)
    rows = dl.read_csv(tmp_path / "finding_annotations.csv")
    rows[0]["finding_categories"] = "['Mass'"
    write_csv(tmp_path / "finding_annotations.csv", rows)
    with pytest.raises(dl.DatalistError,
                       match=r"finding_annotations.csv: line 2, column 'finding_categories': cannot parse"):
        dl.vindr_datalist(tmp_path)


def test_rsna_schema(tmp_path):
    rows = [
        {"site_id": "1", "patient_id": "10", "image_id": "100", "laterality": "L", "view": "CC", "age": "61",
         "cancer": "1", "biopsy": "1", "invasive": "1", "BIRADS": "", "implant": "0", "density": "",
         "machine_id": "49", "difficult_negative_case": "False"},
        {"site_id": "1", "patient_id": "11", "image_id": "101", "laterality": "R", "view": "MLO", "age": "55",
         "cancer": "0", "biopsy": "0", "invasive": "0", "BIRADS": "1", "implant": "0", "density": "B",
         "machine_id": "49", "difficult_negative_case": "False"},
    ]
    csv_path = write_csv(tmp_path / "train.csv", rows)
    touch(tmp_path / "train_images" / "10" / "100.dcm")
    touch(tmp_path / "train_images" / "11" / "101.dcm")
    items = dl.rsna_datalist(csv_path)
    assert [(it["cancer"], it["birads"], it["density"]) for it in items] == [(1, -1, -1), (0, 1, 1)]
    assert items[0]["image"] == str(tmp_path / "train_images" / "10" / "100.dcm")


def test_cbis_schema_merges_abnormalities(tmp_path):
    touch(tmp_path / "full" / "a.dcm")
    touch(tmp_path / "roi" / "a1.dcm")
    touch(tmp_path / "roi" / "a2.dcm")
    mass = [{"patient_id": "P_00001", "breast_density": "3", "left or right breast": "LEFT", "image view": "CC",
             "abnormality id": "1", "abnormality type": "mass", "mass shape": "OVAL", "mass margins": "SPICULATED",
             "assessment": "4", "pathology": "MALIGNANT", "subtlety": "4", "image file path": "full/a.dcm",
             "cropped image file path": "crop/a.dcm", "ROI mask file path": "roi/a1.dcm"}]
    calc = [{"patient_id": "P_00001", "breast density": "3", "left or right breast": "LEFT", "image view": "CC",
             "abnormality id": "2", "abnormality type": "calcification", "calc type": "PLEOMORPHIC",
             "calc distribution": "CLUSTERED", "assessment": "5", "pathology": "BENIGN", "subtlety": "3",
             "image file path": "full/a.dcm", "cropped image file path": "crop/a2.dcm",
             "ROI mask file path": "roi/a2.dcm"}]
    paths = [write_csv(tmp_path / "mass_case_description_train_set.csv", mass),
             write_csv(tmp_path / "calc_case_description_train_set.csv", calc)]
    items = dl.cbis_ddsm_datalist(paths)
    assert len(items) == 1
    item = items[0]
    assert (item["mass"], item["calcification"], item["cancer"], item["birads"], item["density"], item["split"]) == \
        (1, 1, 1, 5, 2, "train")
    assert item["findings"] == ["Mass", "Suspicious Calcification"] and len(item["roi_masks"]) == 2


def test_mask_box():
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:9] = 255
    np.testing.assert_array_equal(dl.mask_box(mask), [[3, 2, 9, 5]])
    assert dl.mask_box(np.zeros((4, 4))).shape == (0, 4)


def many_items(n_patients: int = 50, images_per_patient: int = 4) -> list[dict]:
    return [{"patient_id": f"P{p:03d}", "image": f"{p}_{i}", "split": ""}
            for p in range(n_patients) for i in range(images_per_patient)]


def test_split_by_patient_never_splits_a_patient():
    parts = dl.split_by_patient(many_items(), seed=1)
    seen = {name: set(dl.patients_of(items)) for name, items in parts.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert (len(seen["train"]), len(seen["val"]), len(seen["test"])) == (35, 5, 10)
    assert all(len([i for i in parts["train"] if i["patient_id"] == p]) == 4 for p in seen["train"])


def test_split_respects_existing_assignments():
    items = many_items(10)
    for item in items[:8]:  # patients 0 and 1 pinned to test
        item["split"] = "test"
    parts = dl.split_by_patient(items, {"train": 1.0}, seed=0)
    assert set(dl.patients_of(parts["test"])) == {"P000", "P001"}
    assert len(dl.patients_of(parts["train"])) == 8


def test_patient_subsets_are_nested_and_by_patient():
    items = many_items(40)
    ten, fifty = dl.patient_subset(items, 0.1, seed=7), dl.patient_subset(items, 0.5, seed=7)
    p10, p50 = set(dl.patients_of(ten)), set(dl.patients_of(fifty))
    assert len(p10) == 4 and len(p50) == 20 and p10 <= p50
    assert len(ten) == 4 * 4  # every image of a chosen patient comes along
    assert set(dl.patients_of(dl.patient_subset(items, 0.1, seed=8))) != p10


def test_cbis_boxes_come_from_the_roi_masks(synthetic_dataset):
    import csv

    from mammoclip_monai.data.geometry import box_iou

    items = dl.with_mask_boxes(dl.cbis_ddsm_datalist(sorted(synthetic_dataset.glob("*_case_description_*_set.csv"))))
    truth: dict[str, list[list[float]]] = {}
    for row in csv.DictReader(open(synthetic_dataset / "truth_findings.csv")):
        truth.setdefault(row["image_id"], []).append([float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")])
    with_boxes = [it for it in items if len(it["boxes"])]
    assert with_boxes and all(len(it["boxes"]) == len(it["box_labels"]) == len(it["roi_masks"]) for it in with_boxes)
    for item in with_boxes:  # every mask box matches a rendered finding of that image
        assert box_iou(item["boxes"], truth[item["image_id"]]).max(axis=1).min() > 0.5
