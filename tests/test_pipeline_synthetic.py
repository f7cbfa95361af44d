"""The whole chain on synthetic MG DICOMs, checked against the generator's ground truth."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose

from mammoclip_monai.data import geometry
from mammoclip_monai.data.datalists import image_text_datalist, vindr_datalist
from mammoclip_monai.data.pipelines import preprocessing
from mammoclip_monai.data.transforms import (
    CanonicalLateralityd,
    CropBreastd,
    LoadMammogramd,
    ResizeKeepAspectd,
)

SIZE = (256, 160)


def truth_rows(root: Path) -> list[dict]:
    with (root / "truth.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def box_of(row: dict, prefix: str) -> np.ndarray:
    return np.array([[float(row[f"{prefix}_{k}"]) for k in ("xmin", "ymin", "xmax", "ymax")]], np.float32)


def test_breast_crop_matches_the_true_breast_on_50_images(synthetic_dataset):
    rows = truth_rows(synthetic_dataset)[:50]
    assert len(rows) == 50
    load = LoadMammogramd(keys="image")
    crop = CropBreastd(keys="image", margin_fraction=0.0)
    ious, labels_seen = [], []
    for row in rows:
        out = crop(load({"image": str(synthetic_dataset / row["image_path"])}))
        record = geometry.geometry_records(out["image"].applied_operations)[-1]
        found = np.array([[record["x0"], record["y0"], record["x1"], record["y1"]]], np.float32)
        ious.append(geometry.box_iou(found, box_of(row, "breast"))[0, 0])
        # labels and markers outside the breast never stretch the crop: it stays within the true box
        true_box = box_of(row, "breast")[0]
        slack = 0.02 * max(int(row["width"]), int(row["height"]))
        assert found[0, 0] >= true_box[0] - slack and found[0, 1] >= true_box[1] - slack
        assert found[0, 2] <= true_box[2] + slack and found[0, 3] <= true_box[3] + slack
        for prefix in ("label", "marker"):
            x0, y0, x1, y1 = box_of(row, prefix)[0]
            outside_true = x0 >= true_box[2] or x1 <= true_box[0] or y0 >= true_box[3] or y1 <= true_box[1]
            if outside_true:
                labels_seen.append(prefix)
    assert min(ious) >= 0.9, f"worst crop IoU {min(ious):.3f}"
    assert labels_seen.count("label") >= 25  # the check above really met labels beside the breast


def analytic_boxes(boxes: np.ndarray, crop: tuple[int, int, int, int], flipped: bool, size: tuple[int, int]
                   ) -> np.ndarray:
    """Crop -> mirror -> resize written out by hand (independent of mammoclip_monai.data.geometry)."""
    x0, y0, x1, y1 = crop
    out = boxes - [x0, y0, x0, y0]
    w, h = x1 - x0, y1 - y0
    if flipped:
        out = np.stack([w - out[:, 2], out[:, 1], w - out[:, 0], out[:, 3]], 1)
    scale = min(size[0] / h, size[1] / w)
    new_h, new_w = round(h * scale), round(w * scale)
    return out * [new_w / w, new_h / h, new_w / w, new_h / h]


def test_lesion_boxes_follow_the_chain_and_map_back(synthetic_dataset):
    items = [it for it in vindr_datalist(synthetic_dataset) if len(it["boxes"])]
    assert len(items) >= 5
    chain = Compose([
        LoadMammogramd(keys="image"),
        CropBreastd(keys="image", box_keys="boxes"),
        CanonicalLateralityd(keys="image", box_keys="boxes"),
        ResizeKeepAspectd(keys="image", spatial_size=SIZE, box_keys="boxes"),
    ])
    for item in items:
        original = item["boxes"].copy()
        out = chain(dict(item))
        crop, flip, _ = geometry.geometry_records(out["image"].applied_operations)
        # right breasts (chest wall on the right in the file) and only they are mirrored
        assert flip["flipped"] == (item["laterality"] == "R")
        expected = analytic_boxes(original, (crop["x0"], crop["y0"], crop["x1"], crop["y1"]), flip["flipped"], SIZE)
        assert np.diag(geometry.box_iou(out["boxes"], expected)).min() >= 0.95
        back = geometry.boxes_to_original(out["boxes"], out["image"])
        assert np.diag(geometry.box_iou(back, original)).min() >= 0.95
        # an activation placed on the lesion at network resolution lands on it in the file
        heat = torch.zeros(1, *SIZE)
        bx0, by0, bx1, by1 = out["boxes"][0]
        heat[0, int(by0):int(np.ceil(by1)), int(bx0):int(np.ceil(bx1))] = 1.0
        mapped = geometry.image_to_original(heat, out["image"])[0]
        rows, cols = torch.nonzero(mapped > 0.5, as_tuple=True)
        found = np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], np.float32)
        assert geometry.box_iou(found, original[:1])[0, 0] >= 0.5


def mirrored_twin(src: Path, dst: Path) -> Path:
    """The same DICOM with its pixels mirrored left-right and the laterality swapped."""
    ds = pydicom.dcmread(src)
    pixels = np.ascontiguousarray(ds.pixel_array[:, ::-1])
    ds.set_pixel_data(pixels, photometric_interpretation=ds.PhotometricInterpretation, bits_stored=ds.BitsStored)
    ds.ImageLaterality = "R" if ds.ImageLaterality == "L" else "L"
    ds.save_as(dst)
    return dst


def test_left_view_and_mirrored_right_view_are_identical_after_canonicalisation(synthetic_dataset, tmp_path):
    chain = preprocessing(spatial_size=SIZE, normalize=False)
    rows = [r for r in truth_rows(synthetic_dataset) if r["laterality"] == "L"][:4]
    for row in rows:
        src = synthetic_dataset / row["image_path"]
        twin = mirrored_twin(src, tmp_path / f"{row['image_id']}_mirror.dcm")
        left = chain({"image": str(src)})["image"]
        right = chain({"image": str(twin)})["image"]
        assert right.meta["laterality"] != left.meta["laterality"]
        # the same crop (mirrored), the same resize; the one-pass chain mirrors after resampling, so
        # the two agree to float rounding (measured: at most 4.3e-6), not bit for bit
        crop_left, _, resize_left = geometry.geometry_records(left.applied_operations)
        crop_right, _, resize_right = geometry.geometry_records(right.applied_operations)
        width = crop_left["orig_width"]
        assert (crop_right["x0"], crop_right["x1"]) == (width - crop_left["x1"], width - crop_left["x0"])
        assert resize_left == resize_right
        torch.testing.assert_close(left.as_tensor(), right.as_tensor(), atol=1e-5, rtol=0)


def test_every_breast_ends_up_with_its_chest_wall_on_the_left(synthetic_dataset):
    chain = preprocessing(spatial_size=SIZE, normalize=False)
    for item in image_text_datalist(synthetic_dataset / "image_text.csv")[:24]:
        image = chain({"image": item["image"]})["image"].as_tensor()[0]
        assert image[:, :8].mean() > image[:, -40:].mean() + 0.05, item["image"]


def test_cached_training_loader_yields_batches(synthetic_dataset):
    items = image_text_datalist(synthetic_dataset / "image_text.csv")[:8]
    data = [{"image": it["image"]} for it in items]
    ds = CacheDataset(data, transform=preprocessing(spatial_size=SIZE, train=True), cache_rate=1.0,
                      progress=False, num_workers=1)
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["image"].shape == (4, 1, *SIZE)
    assert torch.isfinite(batch["image"]).all()


@pytest.mark.parametrize("voi", ["auto", "minmax"])
def test_monochrome1_files_match_their_rendered_appearance(synthetic_dataset, voi):
    """MONOCHROME1 files come out with a dark background like MONOCHROME2 ones."""
    rows = truth_rows(synthetic_dataset)
    load = LoadMammogramd(keys="image", voi=voi)
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        row = next(r for r in rows if r["photometric_interpretation"] == photometric)
        image = load({"image": str(synthetic_dataset / row["image_path"])})["image"].as_tensor()[0]
        x0, y0, x1, y1 = box_of(row, "breast")[0].astype(int)
        inside = image[y0:y1, x0:x1].mean()
        corner = image[-20:, -20:].mean() if row["chest_wall_side"] == "left" else image[-20:, :20].mean()
        assert inside > corner + 0.1, (photometric, float(inside), float(corner))
