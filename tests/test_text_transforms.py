"""MammoTextd on image-report and image-label items, and Tokenized with the offline MiniLM tokenizer."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, DeleteItemsd

from mammoclip_monai.data.transforms import ResizeKeepAspectd
from mammoclip_monai.text.reports import EmptyReportError
from mammoclip_monai.text.templates import load_vocabulary
from mammoclip_monai.text.transforms import NON_COLLATABLE_KEYS, MammoTextd, Tokenized, breast_area

REPORT = ("FINDINGS: The breasts are heterogeneously dense. There is an oval mass in the upper left breast. "
          "Scattered benign calcifications are seen. No skin thickening is present.\n"
          "IMPRESSION: Probably benign oval mass, short interval follow-up. BI-RADS 3.")
MAX_LENGTH = 32


def image_item(**fields) -> dict:
    """A canonical 200 x 100 image resized (keeping aspect) into 64 x 64: breast area 64 high, 32 wide."""
    image = MetaTensor(torch.rand(1, 200, 100), meta={"filename_or_obj": "/data/img_001.dcm", "laterality": "L",
                                                       "view": "MLO"})
    item = {"image": image, "laterality": "L", "view": "MLO", "findings": [], "boxes": np.zeros((0, 4), np.float32),
            "box_labels": [], "report": "", "source": "vindr", "mass": 0, "calcification": 0, "cancer": -1}
    item.update(fields)
    return ResizeKeepAspectd(keys="image", spatial_size=(64, 64), box_keys="boxes")(item)


def report_item(report: str = REPORT) -> dict:
    return image_item(report=report, source="image_text", mass=-1, calcification=-1)


def label_item() -> dict:
    # mass near the nipple (x 80..100 of 100 wide) and low (y 150..170 of 200): anterior, lower on MLO
    return image_item(findings=["Mass"], boxes=np.array([[80, 150, 100, 170]], np.float32), box_labels=["Mass"],
                      mass=1)


@pytest.fixture(scope="module")
def tokenizer():
    from mammoclip_monai.text.tokenizer import load_tokenizer

    return load_tokenizer(None)


# ----------------------------------------------------------------------------- MammoTextd
def test_breast_area_comes_from_the_resize_record():
    item = label_item()
    assert tuple(item["image"].shape) == (1, 64, 64)
    assert breast_area(item["image"]) == (0.0, 0.0, 32.0, 64.0)
    assert breast_area(torch.zeros(1, 10, 20)) == (0.0, 0.0, 20.0, 10.0)
    assert breast_area(None) is None


def test_report_item_texts():
    out = MammoTextd(train=False)(report_item())
    assert out["text_valid"] == 1 and out["text_source"] == "report"
    assert out["text"] == "the breasts are heterogeneously dense."
    assert out["text2"] == "there is an oval mass in the upper left breast."
    two = MammoTextd(train=False, sentences_per_text=2)(report_item())
    assert two["text"].count(".") == 2 and two["text"] != two["text2"]
    train = MammoTextd(train=True)
    outputs = {(o["text"], o["text2"]) for o in (train(report_item()) for _ in range(8))}
    assert len(outputs) > 1 and all(a != b for a, b in outputs)


def test_label_item_uses_canonical_geometry():
    out = MammoTextd(train=False)(label_item())
    assert out["text_valid"] == 1 and out["text_source"] == "labels"
    # the padded width (64) would put the box at mid depth; the breast area (32) puts it anterior
    assert out["text"].startswith("there is a suspicious mass in the lower left breast at anterior depth.")
    assert "no suspicious calcifications are seen." in out["text"] and out["text2"] == out["text"]
    assert MammoTextd(train=False)(label_item())["text"] == out["text"]


def test_boxes_in_original_pixels_can_be_mapped():
    item = label_item()
    item["boxes"] = np.array([[80, 150, 100, 170]], np.float32)  # file pixels again
    out = MammoTextd(train=False, box_space="original")(item)
    assert "lower left breast at anterior depth" in out["text"]


def test_set_random_state_makes_training_reproducible():
    def run(seed: int) -> list[tuple[str, str]]:
        transform = MammoTextd(train=True).set_random_state(seed=seed)
        outs = [transform(label_item()) for _ in range(3)] + [transform(report_item()) for _ in range(3)]
        return [(o["text"], o["text2"]) for o in outs]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_other_label_sources():
    rsna = image_item(source="rsna", mass=-1, calcification=-1, cancer=1)
    vocab = load_vocabulary()
    assert MammoTextd(train=False)(rsna)["text"] == vocab["malignancy"]["present"][0] + "."
    cbis = image_item(source="cbis_ddsm", findings=["Suspicious Calcification"],
                      box_labels=["Suspicious Calcification"] * 2, calcification=1, mass=0, cancer=0)  # no boxes
    text = MammoTextd(train=False)(cbis)["text"]
    assert text == "there are suspicious grouped calcifications in the left breast. no suspicious mass is seen."
    normal = MammoTextd(train=False, normal_negatives=False)(image_item())
    assert normal["text"] == vocab["normal"]["sentences"][0] + "."


def test_empty_report_error_names_the_image():
    with pytest.raises(EmptyReportError, match=r"/data/img_001\.dcm.*no usable sentences"):
        MammoTextd(train=False)(report_item("HISTORY: screening exam only."))
    with pytest.raises(EmptyReportError, match="img_001"):
        MammoTextd(train=False)(image_item(source="rsna", mass=-1, calcification=-1, cancer=-1))


def test_empty_report_skip_falls_back_to_labels_or_marks_invalid():
    transform = MammoTextd(train=True, empty_report="skip")
    fallback = transform(image_item(source="image_text", report="", mass=1, calcification=-1))
    assert fallback["text_valid"] == 1 and fallback["text_source"] == "labels"
    assert fallback["text"].startswith("there is") and "mass" in fallback["text"]
    invalid = transform(report_item("HISTORY: screening exam only."))
    assert invalid["text_valid"] == 0 and invalid["text"] == invalid["text2"] == ""
    assert transform.n_invalid == 1


# ----------------------------------------------------------------------------- tokenization
def test_tokenized_shapes_and_collation(tokenizer):
    chain = Compose([MammoTextd(train=False), Tokenized(tokenizer=tokenizer, max_length=MAX_LENGTH),
                     DeleteItemsd(keys=list(NON_COLLATABLE_KEYS))])
    items = [chain(label_item()), chain(report_item())]
    for item in items:
        for key in ("input_ids", "attention_mask", "input_ids2", "attention_mask2"):
            assert item[key].shape == (MAX_LENGTH,) and item[key].dtype == torch.long
        assert not set(NON_COLLATABLE_KEYS) & set(item)
    batch = list_data_collate(items)
    assert batch["input_ids"].shape == (2, MAX_LENGTH) and batch["text_valid"].tolist() == [1, 1]
    assert batch["attention_mask"][0].sum() == MAX_LENGTH  # the long label text is truncated
    assert batch["attention_mask"][1].sum() < MAX_LENGTH  # one report sentence is padded


def test_tokenized_loads_lazily_pickles_and_prefixes(tokenizer):
    lazy = Tokenized(keys="text", tokenizer=None, max_length=16, prefix="report_")
    assert lazy._tokenizer is None
    out = lazy({"text": "there is a mass"})
    assert set(out) >= {"report_input_ids", "report_attention_mask"} and out["report_input_ids"].shape == (16,)
    clone = pickle.loads(pickle.dumps(lazy))
    assert clone._tokenizer is None
    assert torch.equal(clone({"text": "there is a mass"})["report_input_ids"], out["report_input_ids"])
    given = pickle.loads(pickle.dumps(Tokenized(keys="text", tokenizer=tokenizer, max_length=16)))
    assert given._tokenizer is not None
    with pytest.raises(KeyError, match="text"):
        lazy({"other": "x"})


def test_hash_in_vocabulary_survives_to_the_tokens(tmp_path, tokenizer):
    import json

    vocab = load_vocabulary()
    vocab["categories"]["Mass"]["descriptors"] = ["#1"]
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(vocab))
    out = MammoTextd(train=False, vocabulary=str(path))(label_item())
    assert out["text"].startswith("there is a #1 mass in the lower left breast")
    ids = Tokenized(keys="text", tokenizer=tokenizer, max_length=MAX_LENGTH)(out)["input_ids"].tolist()
    assert tokenizer.convert_tokens_to_ids("#") in ids


# ----------------------------------------------------------------------------- real pipeline
def test_synthetic_vindr_items_through_the_preprocessing(request):
    """VinDr-format synthetic images with one lesion: file -> canonical -> templated text agrees with the truth."""
    pytest.importorskip("mammoclip_monai.data.synthetic")
    import csv
    from collections import Counter

    from mammoclip_monai.data.datalists import vindr_datalist
    from mammoclip_monai.data.pipelines import preprocessing

    root = request.getfixturevalue("synthetic_dataset")
    with open(root / "truth_findings.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    per_image = Counter(row["image_id"] for row in truth)
    rows = [row for row in truth if per_image[row["image_id"]] == 1 and len(row["region"].split()) == 2][:6]
    assert rows
    items = {item["image_id"]: item for item in vindr_datalist(root)}
    chain = Compose([preprocessing(spatial_size=(256, 208), box_keys=("boxes",), normalize=False),
                     MammoTextd(train=False, include_negatives=False)])
    depth_ok = 0
    for row in rows:
        text = chain(items[row["image_id"]])["text"]
        side = {"L": "left", "R": "right"}[row["laterality"]]
        vertical, horizontal = row["region"].split()
        expected = horizontal if row["view"] == "CC" else vertical
        assert text.startswith("there ") and f"{side} breast" in text
        for word in ("upper", "lower", "inner", "outer"):
            if f" {word} {side} breast" in text:
                assert word == expected, (row, text)
        depth_ok += f"at {row['depth']} depth" in text
    assert depth_ok >= 0.6 * len(rows)
