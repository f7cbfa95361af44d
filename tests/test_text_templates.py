"""Attribute vocabulary, box locations and templated sentences for image-label data."""

from __future__ import annotations

import csv
import itertools
import json
import re

import numpy as np
import pytest

from mammoclip_monai.data.datalists import VINDR_FINDINGS
from mammoclip_monai.text.templates import (
    AttributeSentenceSampler,
    load_vocabulary,
    location_of_box,
    view_axis,
)

VOCAB = load_vocabulary()
NOUNS = "|".join(re.escape(e["noun"]) for e in VOCAB["categories"].values())
LOCATIONS = "|".join(re.escape(w) for w in VOCAB["locations"].values())
SHAPE = re.compile(rf"^there (is (an? )?|are )([a-z-]+ )*({NOUNS}) in the (({LOCATIONS}) )?((right|left) )?breast"
                   rf"( at (anterior|mid|posterior) depth)?$")
HW = (300.0, 200.0)  # canonical breast area: height 300, width 200


def box_at(fx: float, fy: float, size: float = 10.0) -> list[float]:
    """A box centred at fractions (fx, fy) of the breast area."""
    cx, cy = fx * HW[1], fy * HW[0]
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


# ----------------------------------------------------------------------------- vocabulary
def test_vocabulary_covers_every_vindr_category():
    for name in VINDR_FINDINGS:
        if name == "No Finding":
            assert VOCAB["normal"]["category"] == name and VOCAB["normal"]["sentences"]
            continue
        entry = VOCAB["categories"][name]
        assert entry["descriptors"] and entry["negatives"] and entry["noun"]
    assert set(VOCAB["categories"]) == set(VINDR_FINDINGS) - {"No Finding"}
    mass = VOCAB["categories"]["Mass"]["descriptors"]
    for word in ("suspicious", "possible", "questioned", "questionable", "obscured", "indeterminate", "irregular",
                 "spiculated", "new"):
        assert word in mass
    calc = set(VOCAB["categories"]["Suspicious Calcification"]["descriptors"])
    expected = {f"{a} {b}" for a, b in itertools.product(("suspicious", "possible", "questionable", "indeterminate"),
                                                        ("new", "grouped", "clustered", "segmental", "linear"))}
    assert calc == expected
    assert "periareolar" in VOCAB["categories"]["Skin Thickening"]["locations"]
    negatives = " ".join(VOCAB["categories"]["Suspicious Calcification"]["negatives"])
    for morphology in ("vascular", "skin", "rod-like", "dystrophic", "popcorn", "rim", "eggshell", "punctate"):
        assert morphology in negatives


def test_bad_vocabulary_is_rejected(tmp_path):
    broken = json.loads(json.dumps(VOCAB))
    del broken["categories"]["Mass"]["negatives"]
    with pytest.raises(ValueError, match="Mass"):
        AttributeSentenceSampler(broken)
    path = tmp_path / "v.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_vocabulary(path)


# ----------------------------------------------------------------------------- locations
@pytest.mark.parametrize("fx, fy, view, expected", [
    (0.5, 0.15, "CC", ("outer", "mid")),
    (0.5, 0.85, "CC", ("inner", "mid")),
    (0.5, 0.15, "MLO", ("upper", "mid")),
    (0.5, 0.85, "MLO", ("lower", "mid")),
    (0.1, 0.8, "MLO", ("lower", "posterior")),
    (0.9, 0.2, "CC", ("outer", "anterior")),
    (0.5, 0.52, "CC", ("", "mid")),
    (0.9, 0.5, "MLO", ("subareolar", "anterior")),
    (0.7, 0.5, "CC", ("", "anterior")),
    (0.5, 0.1, "unknown", ("", "mid")),
    (0.5, 0.1, "XCCL", ("outer", "mid")),
    (0.5, 0.1, "ml", ("upper", "mid")),
])
def test_location_of_box(fx, fy, view, expected):
    assert location_of_box(box_at(fx, fy), HW, view) == expected


def test_depth_thirds_and_degenerate_sizes():
    depths = [location_of_box(box_at(fx, 0.2), HW, "CC")[1] for fx in (0.05, 0.32, 0.34, 0.65, 0.67, 0.99)]
    assert depths == ["posterior", "posterior", "mid", "mid", "anterior", "anterior"]
    assert location_of_box([0, 0, 10, 10], (0, 0), "CC") == ("", "")
    assert view_axis("CC") == "lateral" and view_axis("MLO") == "superior" and view_axis("") is None


def test_locations_agree_with_the_synthetic_truth(request):
    """Truth regions/depths (stored pixels) vs boxes canonicalised by hand: crop to the breast, mirror."""
    root = request.getfixturevalue("synthetic_dataset")
    with open(root / "truth.csv", newline="") as f:
        images = {row["image_id"]: row for row in csv.DictReader(f)}
    with open(root / "truth_findings.csv", newline="") as f:
        lesions = list(csv.DictReader(f))
    assert lesions
    depth_ok = contradictions = 0
    for lesion in lesions:
        image = images[lesion["image_id"]]
        bx0, by0, bx1, by1 = (float(image[f"breast_{k}"]) for k in ("xmin", "ymin", "xmax", "ymax"))
        box = np.array([float(lesion[k]) for k in ("xmin", "ymin", "xmax", "ymax")]) - [bx0, by0, bx0, by0]
        width, height = bx1 - bx0, by1 - by0
        if image["chest_wall_side"] == "right":
            box = np.array([width - box[2], box[1], width - box[0], box[3]])
        region, depth = location_of_box(box, (height, width), lesion["view"])
        depth_ok += depth == lesion["depth"]
        words = lesion["region"].split()
        if len(words) == 2 and region and region != "subareolar":
            contradictions += region not in words
    assert depth_ok >= 0.8 * len(lesions)
    assert contradictions <= 0.1 * len(lesions)


# ----------------------------------------------------------------------------- sentences
def test_every_category_sentence_has_the_documented_shape():
    sampler = AttributeSentenceSampler()
    rng = np.random.default_rng(0)
    for name in sampler.categories:
        for fx, fy in ((0.1, 0.1), (0.5, 0.9), (0.9, 0.5), (0.5, 0.5)):
            for side, view in (("L", "CC"), ("R", "MLO"), ("", "CC")):
                for train in (False, True):
                    sentence = sampler.finding_sentence(name, box_at(fx, fy), side, view, HW, rng=rng, train=train)
                    assert SHAPE.match(sentence), sentence
        assert SHAPE.match(sampler.finding_sentence(name, None, "R", "CC", None, train=False))


def test_example_sentence_and_validation_choices():
    sampler = AttributeSentenceSampler()
    sentences = sampler.sentences(["Mass"], [box_at(0.5, 0.8)], ["Mass"], "R", "MLO", HW, train=False)
    assert sentences[0] == "there is a suspicious mass in the lower right breast at mid depth"
    assert sentences[1:] == [VOCAB["categories"][c]["negatives"][0] for c in sampler.categories if c != "Mass"]
    calc = sampler.finding_sentence("Suspicious Calcification", box_at(0.2, 0.2), "L", "CC", HW, train=False)
    assert calc == "there are suspicious grouped calcifications in the outer left breast at posterior depth"
    assert sampler.finding_sentence("Mass", box_at(0.9, 0.5), "L", "CC", HW, train=False) == \
        "there is a suspicious mass in the subareolar left breast"
    skin = sampler.finding_sentence("Skin Thickening", box_at(0.9, 0.5), "L", "CC", HW, train=False)
    assert skin == "there is skin thickening in the periareolar left breast"
    assert sampler.finding_sentence("Nipple Retraction", box_at(0.9, 0.2), "R", "CC", HW, train=False) == \
        "there is nipple retraction in the right breast"


def test_unknown_laterality_and_missing_boxes():
    sampler = AttributeSentenceSampler()
    assert sampler.finding_sentence("Mass", box_at(0.5, 0.1), "", "MLO", HW, train=False) == \
        "there is a suspicious mass in the upper breast at mid depth"
    assert sampler.finding_sentence("Mass", None, "unknown", "MLO", HW, train=False) == \
        "there is a suspicious mass in the breast"
    # a box clipped to nothing by the crop gives no location
    assert sampler.sentences(["Mass"], [[5, 5, 5, 40]], ["Mass"], "L", "CC", HW, train=False)[0] == \
        "there is a suspicious mass in the left breast"


def test_no_finding_studies():
    default = AttributeSentenceSampler()
    normal = default.sentences(["No Finding"], None, [], "L", "CC", HW, train=False)
    assert normal[0] == VOCAB["normal"]["sentences"][0]
    assert "no suspicious mass is seen" in normal and len(normal) == 1 + len(default.categories)
    assert default.sentences([], None, [], "L", "CC", HW, train=False) == normal  # exhaustive: nothing = normal
    original = AttributeSentenceSampler(normal_negatives=False)  # the original Mammo-CLIP policy
    assert original.sentences(["No Finding"], None, [], "L", "CC", HW, train=False) == normal[:1]
    assert len(original.sentences(["Mass"], None, [], "L", "CC", HW, train=False)) == len(default.categories)
    assert default.sentences(["No Finding"], include_negatives=False, train=False) == normal[:1]


def test_partial_labels_and_malignancy():
    sampler = AttributeSentenceSampler()
    # non-exhaustive labels: negatives only for what is known to be absent, no normal sentence
    assert sampler.sentences(["mass"], None, [], "R", "CC", None, train=False, absent=["calcification"]) == [
        "there is a suspicious mass in the right breast", "no suspicious calcifications are seen"]
    assert sampler.sentences([], absent=[], malignancy=1, train=False) == [VOCAB["malignancy"]["present"][0]]
    assert sampler.sentences([], absent=[], malignancy=0, train=False) == [VOCAB["malignancy"]["absent"][0]]
    assert sampler.sentences([], absent=[], train=False) == []
    with pytest.raises(ValueError, match="unknown finding category"):
        sampler.sentences(["Tumour"], train=False)
    with pytest.raises(ValueError, match="boxes"):
        sampler.sentences(["Mass"], [[0, 0, 1, 1]], [], train=False)


def test_training_is_seeded_and_positives_come_first():
    sampler = AttributeSentenceSampler()
    args = (["Mass", "Suspicious Calcification"], [box_at(0.2, 0.2), box_at(0.8, 0.8)],
            ["Mass", "Suspicious Calcification"], "L", "CC", HW)
    a = sampler.text(*args, rng=np.random.default_rng(5))
    assert a == sampler.text(*args, rng=np.random.default_rng(5))
    texts = {sampler.text(*args, rng=np.random.default_rng(s)) for s in range(10)}
    assert len(texts) > 5
    for seed in range(10):
        sentences = sampler.sentences(*args, rng=np.random.RandomState(seed))  # MONAI's self.R kind
        assert len(sentences) == 2 + 8
        assert all(SHAPE.match(s) for s in sentences[:2]) and not any(SHAPE.match(s) for s in sentences[2:])
    mixed = AttributeSentenceSampler(positives_first=False)
    firsts = {bool(SHAPE.match(mixed.sentences(*args, rng=np.random.default_rng(s))[0])) for s in range(20)}
    assert firsts == {True, False}
    assert sampler.text(*args, train=False) == sampler.text(*args, train=False)


def test_max_negatives_and_detail_dropout():
    few = AttributeSentenceSampler(max_negatives=2)
    assert len(few.sentences(["Mass"], train=False)) == 3
    assert len(few.sentences(["Mass"], rng=np.random.default_rng(0))) == 3
    always = AttributeSentenceSampler(detail_dropout=1.0)
    bare = always.finding_sentence("Mass", box_at(0.5, 0.1), "L", "MLO", HW, rng=np.random.default_rng(0))
    assert bare.endswith("in the left breast")
    assert always.finding_sentence("Mass", box_at(0.5, 0.1), "L", "MLO", HW, train=False).endswith("at mid depth")


def test_hash_in_vocabulary_text_survives(tmp_path):
    custom = json.loads(json.dumps(VOCAB))
    custom["categories"]["Mass"]["negatives"] = ["no mass #1 is seen"]
    custom["categories"]["Mass"]["descriptors"] = ["#suspicious"]
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(custom))
    sampler = AttributeSentenceSampler(str(path))
    assert "no mass #1 is seen" in sampler.sentences([], train=False)
    assert sampler.sentences(["Mass"], train=False)[0] == "there is a #suspicious mass in the breast"
