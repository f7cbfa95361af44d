"""Configuring inputs that are wrong in every way a review found: each is one InvalidInputError line.

Prompt files, model directories, FActOR files and every CSV schema. Each message must name the
file, where in it (key; line as an editor shows it, header = line 1; column) and what was expected.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mammoclip_monai.data import datalists as dl
from mammoclip_monai.inference.data import inference_datalist
from mammoclip_monai.interpret.factor import FActOR, load_factor
from mammoclip_monai.networks import MammoCLIP, create_model
from mammoclip_monai.text.prompts import PromptSet, load_prompt_file, load_prompt_sets
from mammoclip_monai.utils import InvalidInputError
from mammoclip_monai.utils.errors import EXIT_USAGE, exit_code

TINY_TEXT = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


def raises_one_line(match: str):
    """``pytest.raises(InvalidInputError, match=...)`` whose message must also be a single line."""
    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(InvalidInputError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            if handled:
                message = str(self.info.value)
                assert "\n" not in message, message
                assert "weights_only=False" not in message, message
                assert exit_code(self.info.value) == EXIT_USAGE
            return handled

    return _Check()


# ============================================================================ prompt files
BAD_PROMPTS = [
    ({"mass": 5}, r"key 'mass': expected a list of at least two classes .*found the number 5"),
    ({"mass": ["no mass", 5]},
     r"key 'mass'\[1\]: expected a prompt \(a string\) or a list of prompts, found the number 5"),
    ({"mass": {"a": 1}}, r"key 'mass': expected a list of at least two classes.*found an object"),
    ({"tasks": []}, r"key 'tasks': expected an object of prompt sets"),
    ({"mass": ["mass"]}, r"key 'mass': expected at least two classes"),
    ({"mass": ["", "mass"]}, r"key 'mass'\[0\]: expected a prompt, found an empty string"),
    ({"mass": [["a mass", "  "], "no"]}, r"key 'mass'\[0\]\[1\]: expected a prompt, found an empty string"),
    ({"mass": [[], "mass"]}, r"key 'mass'\[0\]: expected at least one prompt"),
    ({"mass": ["mass", "Mass"]}, r"key 'mass': classes 0 and 1 are both named 'Mass'"),
    ({}, r"expected a JSON object of prompt sets, found an empty object"),
    (["no mass", "mass"], r"expected a JSON object of prompt sets, found a list"),
    ({"tasks": {"mass": {"classes": {"0": ["a"], "1": ["b"]}}}}, r"key 'tasks.mass': missing 'label_key'"),
    ({"tasks": {"mass": {"label_key": "mass", "classes": {"0": ["a"], "one": ["b"]}}}},
     r"key 'tasks.mass.classes.one': a class value must be a whole number"),
    ({"tasks": {"mass": {"label_key": "mass", "classes": {"0": ["a"]}}}},
     r"key 'tasks.mass.classes': expected at least two classes, found 1"),
    ({"tasks": {"mass": {"label_key": "mass", "classes": {"0": ["a"], "1": ["b"]}, "labels": {}}}},
     r"key 'tasks.mass.labels': unknown key"),
    ({"tasks": {"d": {"label_key": "density", "classes": {"0": "a", "1": "b"}, "class_names": {"0": "A", "2": "C"}}}},
     r"key 'tasks.d.class_names.2': no class 2 in 'classes'"),
    ({"tasks": {"d": {"label_key": "density", "classes": {"0": "a", "1": "b"}, "class_names": {"0": "A", "1": "A"}}}},
     r"key 'tasks.d.class_names': classes 0 and 1 are both named 'A'"),
    ({"tasks": {}, "mass": ["a", "b"]}, r"key 'mass': unknown key next to 'tasks'"),
]


@pytest.mark.parametrize(("document", "expected"), BAD_PROMPTS)
def test_bad_prompt_documents_name_the_key_and_the_expectation(tmp_path, document, expected):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with raises_one_line(rf"prompts\.json: {expected}"):
        load_prompt_file(path)
    with raises_one_line(r"prompts\.json: "):  # every reader of prompt files goes through the same checks
        load_prompt_sets(path)


def test_prompt_files_that_are_not_json_objects(tmp_path):
    with raises_one_line(r"nowhere\.json: no such file; expected a prompt file"):
        load_prompt_file(tmp_path / "nowhere.json")
    with raises_one_line(r"is a folder; expected a prompt file"):
        load_prompt_file(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"mass": ["no mass", "mass"],\n  "calcification": [}', encoding="utf-8")
    with raises_one_line(r"broken\.json: line 2, column 21: not valid JSON"):
        load_prompt_file(broken)
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"mass": ["pas de masse",\n "une masse \xe9vidente"]}'.encode("latin-1"))
    with raises_one_line(r"latin\.json: line 2, byte 13: byte 0xe9 .* is not UTF-8"):
        load_prompt_file(latin)
    twice = tmp_path / "twice.json"
    twice.write_text('{"mass": ["a", "b"], "mass": ["c", "d"]}', encoding="utf-8")
    with raises_one_line(r"twice\.json: key 'mass' appears twice"):
        load_prompt_file(twice)


def test_valid_prompt_files_in_both_formats(tmp_path):
    simple = tmp_path / "simple.json"
    simple.write_text(json.dumps({"mass": ["no mass", ["a mass", "there is a mass"]],
                                  "density": ["fatty", "scattered", "heterogeneous", "dense"]}), encoding="utf-8")
    sets = load_prompt_file(simple)
    assert sets["mass"] == PromptSet("mass", "mass", (0, 1), (("no mass",), ("a mass", "there is a mass")),
                                     ("no mass", "a mass"))
    assert sets["density"].values == (0, 1, 2, 3) and sets["density"].names[-1] == "dense"
    packaged = load_prompt_sets()
    copy = tmp_path / "packaged.json"
    shutil.copy(Path(__import__("mammoclip_monai").__file__).parent / "resources" / "zero_shot_prompts.json", copy)
    assert load_prompt_file(copy) == packaged
    assert list(load_prompt_file(copy, tasks=["density", "mass"])) == ["density", "mass"]
    with raises_one_line(r"packaged\.json: no prompt set for task\(s\) \['spiculation'\]"):
        load_prompt_file(copy, tasks=["spiculation"])


# ============================================================================ model directories
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, image_size=(64, 48), text_config=TINY_TEXT)
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "saved")


@pytest.fixture()
def model_dir(saved_model, tmp_path) -> Path:
    return Path(shutil.copytree(saved_model, tmp_path / "model"))


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_model_directory_problems_are_one_line(model_dir, tmp_path):
    assert not MammoCLIP.from_pretrained(model_dir).training  # the copy is fine as it is
    with raises_one_line(r"absent: no such directory; expected a saved MammoCLIP directory"):
        MammoCLIP.from_pretrained(tmp_path / "absent")
    with raises_one_line(r"config\.json: is a file; expected a saved MammoCLIP directory"):
        MammoCLIP.from_pretrained(model_dir / "config.json")
    (model_dir / "model.safetensors").rename(tmp_path / "weights.safetensors")
    with raises_one_line(r"model: no model\.safetensors here"):
        MammoCLIP.from_pretrained(model_dir)
    (tmp_path / "weights.safetensors").rename(model_dir / "model.safetensors")
    text = (model_dir / "config.json").read_text()
    (model_dir / "config.json").write_text(text.replace('"embed_dim"', '"embed_dim":', 1))
    with raises_one_line(r"config\.json: line \d+, column \d+: not valid JSON"):
        MammoCLIP.from_pretrained(model_dir)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"text_modle": "x"}, r"key 'text_modle': unknown MammoCLIPConfig key; valid keys: \[.*'text_model'"),
    ({"embed_dim": "16"}, r"key 'embed_dim': expected a whole number, found the string '16'"),
    ({"image_size": [64]}, r"key 'image_size': expected a list of 2 whole numbers, found a list of 1"),
    ({"image_grad_checkpointing": 1}, r"key 'image_grad_checkpointing': expected true or false, found the number 1"),
    ({"image_drop_rate": "0.2"}, r"key 'image_drop_rate': expected a number or null"),
    ({"text_pooling": "max"}, r"key 'text_pooling': text_pooling must be one of"),
    ({"image_size": [64, 0]}, r"key 'image_size': image_size must be \(H, W\) of positive sizes"),
    ({"projection_dropout": 1.5}, r"key 'projection_dropout': projection_dropout must be in \[0, 1\)"),
])
def test_model_config_keys_and_values_are_checked(model_dir, changes, expected):
    _edit_config(model_dir, **changes)
    with raises_one_line(rf"model/config\.json: {expected}"):
        MammoCLIP.from_pretrained(model_dir)


def test_model_config_that_is_not_an_object(model_dir):
    (model_dir / "config.json").write_text("[1, 2]")
    with raises_one_line(r"config\.json: expected a JSON object of MammoCLIPConfig fields, found a list of 2"):
        MammoCLIP.from_pretrained(model_dir)


def test_weights_that_are_not_safetensors_or_do_not_fit(model_dir):
    from safetensors.torch import load_file, save_file

    weights = model_dir / "model.safetensors"
    state = {k: v.clone() for k, v in load_file(str(weights)).items()}  # not memory-mapped: the file is rewritten
    weights.write_bytes(b"PK\x03\x04 not a safetensors file")
    with raises_one_line(r"model\.safetensors: not a safetensors weights file"):
        MammoCLIP.from_pretrained(model_dir)
    dropped = ["logit_scale", "image_projection.projection.bias"]
    save_file({k: v for k, v in state.items() if k not in dropped} | {"extra.weight": torch.zeros(1)}, str(weights))
    with raises_one_line(r"model\.safetensors: the weights do not fit the model its config\.json describes; "
                         r"2 missing key\(s\): .*logit_scale.*; 1 unexpected key\(s\): extra\.weight"):
        MammoCLIP.from_pretrained(model_dir)
    save_file(state, str(weights))
    _edit_config(model_dir, embed_dim=16)
    with raises_one_line(r"shape mismatch\(es\) \(file vs model\): image_projection\.projection\.weight "
                         r"\(512, \d+\) vs \(16, \d+\)"):
        MammoCLIP.from_pretrained(model_dir)


# ============================================================================ FActOR files
def _peak_factor(feature_size=(2, 3), channels=4) -> FActOR:
    torch.manual_seed(0)
    return FActOR(["mass", "calcification"], feature_size, embed_dim=8, channels=channels, peak_values=2,
                  layer="model.blocks.5")


class NotWeights:
    """A class a weights file never contains (weights_only refuses to rebuild it)."""


def test_factor_files_that_are_not_factor_weights(tmp_path):
    good = tmp_path / "factor.pt"
    torch.save({"model": _peak_factor().state_dict()}, good)
    assert load_factor(good).attributes == ("mass", "calcification")
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    with raises_one_line(r"notes\.pt: not a FActOR weights file .*: torch cannot read it as a checkpoint"):
        load_factor(text)
    pickled = tmp_path / "object.pt"
    torch.save({"model": NotWeights()}, pickled)
    with raises_one_line(r"object\.pt: not a FActOR weights file .*: it is a pickle that needs the Python class "
                         r".*NotWeights"):
        load_factor(pickled)
    other = tmp_path / "classifier.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    with raises_one_line(r"classifier\.pt: not a FActOR state dict .*found keys weight, bias.*another model"):
        load_factor(other)
    with raises_one_line(r"missing\.pt: no such file; expected a FActOR weights file"):
        load_factor(tmp_path / "missing.pt")
    with raises_one_line(r"is a folder; expected a FActOR weights file"):
        load_factor(tmp_path)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with raises_one_line(r"tensor\.pt: not a FActOR weights file .*: it holds Tensor, expected a state dict"):
        load_factor(tensor)


def test_factor_state_without_extra_state_or_with_tensors_that_do_not_fit(tmp_path):
    state = _peak_factor().state_dict()
    path = tmp_path / "factor.pt"
    torch.save({k: v for k, v in state.items() if k != "_extra_state"}, path)
    with raises_one_line(r"factor\.pt: key '_extra_state': missing: the readout settings"):
        load_factor(path)
    torch.save(state | {"_extra_state": {"readout": "peak", "layer": None}}, path)
    with raises_one_line(r"factor\.pt: key '_extra_state': peak_values must be a whole number >= 1, found None"):
        load_factor(path)
    torch.save(state | {"_extra_state": {"readout": "sideways"}}, path)
    with raises_one_line(r"key '_extra_state': readout 'sideways' is not one of"):
        load_factor(path)
    torch.save(state | {"mappers.calcification.3.weight": torch.zeros(8, 5)}, path)
    with raises_one_line(r"factor\.pt: the tensors do not fit together as a FActOR of \['mass', 'calcification'\]: "
                         r"1 shape mismatch\(es\) \(file vs model\): "
                         r"mappers\.calcification\.3\.weight \(8, 5\) vs \(8, 6\)"):
        load_factor(path)
    map_state = FActOR(["mass"], (2, 3), embed_dim=8, readout="map").state_dict()
    torch.save(map_state, path)
    with raises_one_line(r"the mappers read 6 positions per channel, but the feature map is \(4, 3\)"):
        load_factor(path, (4, 3))


def test_explainer_refuses_a_factor_file_that_does_not_fit_the_model(tmp_path, saved_model):
    from mammoclip_monai.interpret.explain import Explainer

    model = MammoCLIP.from_pretrained(saved_model)
    path = tmp_path / "factor.pt"
    path.write_bytes(b"\x80\x04garbage")
    with raises_one_line(r"factor\.pt: not a FActOR weights file"):
        Explainer(model, path)
    factor = _peak_factor(feature_size=(9, 9), channels=4)
    factor.layer = None
    torch.save(factor.state_dict(), path)
    with raises_one_line(r"factor\.pt: does not fit this model's feature maps: FActOR expects feature maps "
                         r"\(B, 4, 9, 9\)"):
        Explainer(model, path)
    factor.layer = "no.such.layer"
    torch.save(factor.state_dict(), path)
    with raises_one_line(r"factor\.pt: FActOR was trained on the encoder layer 'no\.such\.layer'"):
        Explainer(model, path)


# ============================================================================ CSV schemas
def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


IMAGE_TEXT_HEADER = "patient_id,image_path,report,density,birads,mass,split\n"


def image_text(tmp_path: Path, *rows: str, header: str = IMAGE_TEXT_HEADER) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    for name in ("a.dcm", "b.dcm"):
        (tmp_path / "img" / name).write_bytes(b"")
    return write(tmp_path / "image_text.csv", header + "".join(rows))


GOOD_A = 'P1,img/a.dcm,"FINDINGS: a mass.\nIMPRESSION: BI-RADS 4.",C,4,1,train\n'  # two lines on disk
GOOD_B = "P2,img/b.dcm,FINDINGS: normal.,A,1,0,test\n"


def test_well_formed_image_text_csv_still_loads(tmp_path):
    items = dl.image_text_datalist(image_text(tmp_path, GOOD_A, "\n", GOOD_B))  # a blank line is skipped
    labels = [(i["density"], i["birads"], i["mass"], i["split"]) for i in items]
    assert labels == [(2, 4, 1, "train"), (0, 1, 0, "test")]


@pytest.mark.parametrize(("bad_row", "expected"), [
    ("P3,img/b.dcm,r,A,1,0\n", r"line 4: 6 field\(s\) but the header has 7 column\(s\)"),
    ("P3,img/b.dcm,r,A,1,0,test,extra\n", r"line 4: 8 field\(s\) but the header has 7"),
    ("P3,img/b.dcm,r,E,1,0,test\n", r"line 4, column 'density': 'E' is not a breast density; expected A-D"),
    ("P3,img/b.dcm,r,A,7,0,test\n", r"line 4, column 'birads': '7' is not a BI-RADS category; expected 0-6"),
    ("P3,img/b.dcm,r,A,1,yes,test\n", r"line 4, column 'mass': 'yes' is not a 0/1 label"),
    ("P3,img/b.dcm,r,A,1,0,tset\n", r"line 4, column 'split': 'tset' is not a split; expected train, val or test"),
    (",img/b.dcm,r,A,1,0,test\n", r"line 4, column 'patient_id': empty; every row needs a patient key"),
    ("P3,,r,A,1,0,test\n", r"line 4, column 'image_path': empty; every row needs the path of its image"),
    ("P3,../../../etc/hostname,r,A,1,0,test\n", r"line 4, column 'image_path': the image path "
                                                r"'\.\./\.\./\.\./etc/hostname' resolves to a file outside the "
                                                r"dataset folder .*allow_outside=True"),
    ("P3,/etc/hostname,r,A,1,0,test\n", r"line 4, column 'image_path': the image path '/etc/hostname' resolves"),
])
def test_bad_image_text_rows_are_named_by_line_and_column(tmp_path, bad_row, expected):
    # the report of line 2 spans lines 2-3, so the bad row is on line 4 as an editor counts
    csv_path = image_text(tmp_path, GOOD_A, bad_row)
    with raises_one_line(rf"image_text\.csv: {expected}"):
        dl.image_text_datalist(csv_path, check_files=False)


def test_image_paths_are_confined_to_the_dataset_unless_allowed(tmp_path):
    outside = write(tmp_path / "elsewhere" / "x.dcm", b"")
    root = tmp_path / "dataset"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.dcm").write_bytes(b"")
    os.symlink(outside, root / "img" / "link.dcm")
    rows = f"P1,{root / 'img' / 'a.dcm'},r,,,,\n"  # absolute inside the dataset: fine
    csv_path = write(root / "image_text.csv", IMAGE_TEXT_HEADER + rows)
    assert dl.image_text_datalist(csv_path)[0]["image"] == str(root / "img" / "a.dcm")
    # a link inside the dataset is the dataset owner's choice (link farms into an archive are common)
    write(csv_path, IMAGE_TEXT_HEADER + rows + "P2,img/link.dcm,r,,,,\n")
    assert dl.image_text_datalist(csv_path)[1]["image"] == str(root / "img" / "link.dcm")
    # so is an absolute path into the dataset's real location, reached through a link to the folder
    os.symlink(root, tmp_path / "dataset_link")
    assert dl.image_text_datalist(csv_path, dataset_dir=tmp_path / "dataset_link")[0]["image"] == \
        str(root / "img" / "a.dcm")
    write(csv_path, IMAGE_TEXT_HEADER + "P1,../elsewhere/x.dcm,r,,,,\n")
    with raises_one_line(r"line 2, column 'image_path': the image path '\.\./elsewhere/x\.dcm' resolves to a file "
                         r"outside .*allow_outside_dataset"):
        dl.image_text_datalist(csv_path)
    assert dl.image_text_datalist(csv_path, allow_outside=True)[0]["image"] == str(root / "../elsewhere/x.dcm")


def test_file_level_csv_problems(tmp_path):
    header_only = image_text(tmp_path)
    with raises_one_line(r"image_text\.csv: has a header but no data rows; an empty datalist cannot be used"):
        dl.image_text_datalist(header_only)
    empty = write(tmp_path / "empty.csv", "")
    with raises_one_line(r"empty\.csv: the file is empty; expected a CSV file with the columns"):
        dl.image_text_datalist(empty)
    latin = write(tmp_path / "latin.csv", (IMAGE_TEXT_HEADER + GOOD_B + "P3,img/a.dcm,Masse \xe9vidente,A,1,0,test\n")
                  .encode("latin-1"))
    with raises_one_line(r"latin\.csv: line 3, byte 20: byte 0xe9 \(file offset \d+\) is not UTF-8"):
        dl.image_text_datalist(latin)
    missing = write(tmp_path / "cols.csv", "patient_id,image\nP1,a.dcm\n")
    with raises_one_line(r"cols\.csv: missing column\(s\) \['image_path', 'report'\]; found \['patient_id', 'image'\]"):
        dl.image_text_datalist(missing)
    twice = write(tmp_path / "twice.csv", "patient_id,image_path,report,report\nP1,a.dcm,r,s\n")
    with raises_one_line(r"twice\.csv: line 1: column 'report' appears twice in the header"):
        dl.image_text_datalist(twice)
    nul = write(tmp_path / "nul.csv", IMAGE_TEXT_HEADER.encode() + b"P1,img/a.dcm,r\x00,A,1,0,test\n")
    with raises_one_line(r"nul\.csv: line 2: contains a NUL byte"):
        dl.image_text_datalist(nul)
    with raises_one_line(r"nowhere\.csv: no such file; expected a CSV file"):
        dl.image_text_datalist(tmp_path / "nowhere.csv")
    assert issubclass(dl.DatalistError, InvalidInputError)


VINDR_BREAST = ("study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split\n"
                "S1,s,i1,L,CC,100,80,BI-RADS 1,DENSITY B,training\n"
                "S1,s,i2,L,MLO,100,80,BI-RADS 4,DENSITY B,training\n")
FINDING_HEADER = "study_id,image_id,finding_categories,finding_birads,xmin,ymin,xmax,ymax\n"


def vindr(tmp_path: Path, *finding_rows: str, breast: str = VINDR_BREAST) -> Path:
    write(tmp_path / "breast-level_annotations.csv", breast)
    write(tmp_path / "finding_annotations.csv", FINDING_HEADER + "".join(finding_rows))
    return tmp_path


def test_vindr_findings_boxes_and_categories(tmp_path):
    root = vindr(tmp_path, "S1,i1,['No Finding'],,,,,\n", "S1,i2,\"['Mass', 'Focal Asymmetry']\",BI-RADS 4,1,2,3.5,4\n")
    items = {i["image_id"]: i for i in dl.vindr_datalist(root, check_files=False)}
    assert items["i2"]["findings"] == ["Mass", "Focal Asymmetry"]
    assert items["i2"]["boxes"].tolist() == [[1, 2, 3.5, 4]] * 2
    assert items["i1"]["mass"] == 0 and items["i2"]["density"] == 1 and items["i2"]["birads"] == 4


@pytest.mark.parametrize(("row", "expected"), [
    ("S1,i2,['Mass'],BI-RADS 4,abc,2,3,4\n", r"line 3, column 'xmin': 'abc' is not a number"),
    ("S1,i2,['Mass'],BI-RADS 4,1,2,inf,4\n", r"line 3, column 'xmax': 'inf' is not a finite number"),
    ("S1,i2,['Mass'],BI-RADS 4,1,,3,4\n", r"line 3, column 'ymin': empty while \['xmin', 'xmax', 'ymax'\] are given"),
    ("S1,i2,['Mass'],BI-RADS 4,5,2,3,4\n", r"line 3, columns 'xmin/ymin/xmax/ymax': the box \[5\.0, 2\.0, 3\.0, 4\.0\] "
                                           r"has xmax < xmin"),
    ("S1,i2,5,,,,,\n", r"line 3, column 'finding_categories': found '5'; expected a list such as \['Mass'\]"),
    ("S1,i2,Mass,,,,,\n", r"line 3, column 'finding_categories': cannot parse 'Mass'; expected a list"),
    ("S1,i2,['Mas'],,,,,\n", r"line 3, column 'finding_categories': unknown finding category 'Mas'; known: \['Mass'"),
    ("S1,i2,[5],,,,,\n", r"line 3, column 'finding_categories': unknown finding category 5"),
    ("S1,i2,,,,,,\n", r"line 3, column 'finding_categories': found an empty cell; expected a list"),
    ("S1,i2,['Mass'],1,2,3,4\n", r"line 3: 7 field\(s\) but the header has 8 column\(s\)"),
])
def test_bad_vindr_findings_are_named(tmp_path, row, expected):
    root = vindr(tmp_path, "S1,i1,['No Finding'],,,,,\n", row)
    with raises_one_line(rf"finding_annotations\.csv: {expected}"):
        dl.vindr_datalist(root, check_files=False)


def test_bad_vindr_breast_rows_and_ids_that_leave_the_image_folder(tmp_path):
    bad_density = VINDR_BREAST.replace("DENSITY B,training\nS1,s,i2", "DENSITY E,training\nS1,s,i2")
    root = vindr(tmp_path, "S1,i1,['No Finding'],,,,,\n", breast=bad_density)
    with raises_one_line(r"breast-level_annotations\.csv: line 2, column 'breast_density': 'DENSITY E' is not a "
                         r"breast density"):
        dl.vindr_datalist(root, check_files=False)
    escaping = VINDR_BREAST.replace("S1,s,i2", "../../..,s,i2")
    root = vindr(tmp_path, "S1,i1,['No Finding'],,,,,\n", breast=escaping)
    with raises_one_line(r"breast-level_annotations\.csv: line 3, columns 'study_id/image_id': the image path "
                         r"'\.\./\.\./\.\./i2\.dicom' resolves to a file outside the dataset folder"):
        dl.vindr_datalist(root, check_files=False)
    header_only = vindr(tmp_path, breast=VINDR_BREAST.splitlines(keepends=True)[0])
    with raises_one_line(r"breast-level_annotations\.csv: has a header but no data rows"):
        dl.vindr_datalist(header_only, check_files=False)


def test_bad_rsna_and_cbis_rows_are_named(tmp_path):
    header = "patient_id,image_id,laterality,view,cancer,BIRADS,density\n"
    rsna = write(tmp_path / "train.csv", header + "10,100,L,CC,1,,\n11,101,R,MLO,maybe,1,B\n")
    with raises_one_line(r"train\.csv: line 3, column 'cancer': 'maybe' is not a 0/1 label"):
        dl.rsna_datalist(rsna, check_files=False)
    write(rsna, header + "10,100,L,CC,1,,\n11,101,X,MLO,0,1,B\n")
    with raises_one_line(r"train\.csv: line 3, column 'laterality': 'X' is not a laterality"):
        dl.rsna_datalist(rsna, check_files=False)
    write(rsna, header + "10,100,L,CC,1,,\n11,101,R,MLO,0,1,B\n")
    assert [(i["cancer"], i["birads"], i["density"]) for i in dl.rsna_datalist(rsna, check_files=False)] == \
        [(1, -1, -1), (0, 1, 1)]

    cbis_header = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
                   "assessment,pathology,image file path,ROI mask file path\n")
    good = "P_1,3,LEFT,CC,1,mass,4,MALIGNANT,full/a.dcm,roi/a1.dcm\n"
    cbis = write(tmp_path / "mass_case_description_train_set.csv", cbis_header + good +
                 "P_1,3,LEFT,CC,2,mass,four,BENIGN,full/a.dcm,roi/a2.dcm\n")
    with raises_one_line(r"mass_case_description_train_set\.csv: line 3, column 'assessment': 'four' is not a BI-RADS"):
        dl.cbis_ddsm_datalist(cbis, check_files=False)
    write(cbis, cbis_header + good + "P_1,3,LEFT,CC,2,mass,4,BENING,full/a.dcm,roi/a2.dcm\n")
    with raises_one_line(r"line 3, column 'pathology': 'BENING' is not a pathology; expected one of \['MALIGNANT'"):
        dl.cbis_ddsm_datalist(cbis, check_files=False)
    write(cbis, cbis_header + good + "P_1,3,LEFT,CC,2,mass,4,BENIGN,full/a.dcm,../../roi/a2.dcm\n")
    with raises_one_line(r"line 3, column 'ROI mask file path': the image path '\.\./\.\./roi/a2\.dcm' resolves"):
        dl.cbis_ddsm_datalist(cbis, check_files=False)
    write(cbis, cbis_header + good + "P_1,9,LEFT,CC,2,mass,4,BENIGN,full/a.dcm,roi/a2.dcm\n")
    assert dl.cbis_ddsm_datalist(cbis, check_files=False)[0]["density"] == 2  # first row of the image decides
    write(cbis, cbis_header + "P_1,9,LEFT,CC,2,mass,4,BENIGN,full/a.dcm,roi/a2.dcm\n")
    with raises_one_line(r"line 2, column 'breast_density': '9' is not a breast density"):
        dl.cbis_ddsm_datalist(cbis, check_files=False)


def test_splits_files_are_checked(tmp_path):
    csv_path = image_text(tmp_path, GOOD_A, GOOD_B)
    splits = write(tmp_path / "splits.csv", "patient_id,split\nP1,val\nP2,tst\n")
    with raises_one_line(r"splits\.csv: line 3, column 'split': 'tst' is not a split"):
        dl.image_text_datalist(csv_path, splits=splits)
    write(splits, "patient_id,split\nP1,val\nP1,test\n")
    with raises_one_line(r"splits\.csv: line 3, column 'split': patient 'P1' is already in split 'val' \(line 2\)"):
        dl.image_text_datalist(csv_path, splits=splits)
    write(splits, "patient_id,split\n")
    with raises_one_line(r"splits\.csv: has a header but no data rows"):
        dl.image_text_datalist(csv_path, splits=splits)
    write(splits, "patient_id,split\nP1,validation\n")
    assert [i["split"] for i in dl.image_text_datalist(csv_path, splits=splits)] == ["val", "test"]


def test_inference_csvs_are_checked_like_datalists(tmp_path):
    write(tmp_path / "a.dcm", b"")
    good = write(tmp_path / "list.csv", "image,note\na.dcm,x\n")
    assert inference_datalist(good) == [{"image": str(tmp_path / "a.dcm")}]
    write(good, "image,note\na.dcm,x,y\n")
    with raises_one_line(r"list\.csv: line 2: 3 field\(s\) but the header has 2"):
        inference_datalist(good)
    write(good, "image,note\n")
    with raises_one_line(r"list\.csv: has a header but no data rows"):
        inference_datalist(good)
    write(good, "picture\na.dcm\n")
    with raises_one_line(r"list\.csv: needs one of the columns \['image', 'path', 'file', 'filename'\]"):
        inference_datalist(good)
    write(good, "image,note\na.dcm,x\n,y\n")
    with raises_one_line(r"list\.csv: line 3, column 'image': empty; every row needs the path of an image"):
        inference_datalist(good)
    write(good, b"image\nf\xf6o.dcm\n")
    with raises_one_line(r"list\.csv: line 2, byte 2: byte 0xf6"):
        inference_datalist(good)


def test_the_synthetic_dataset_loads_with_the_defaults(synthetic_dataset):
    """What the bundle configs call, with their defaults: the default training must keep working."""
    splits = synthetic_dataset / "splits.csv"
    text_items = dl.image_text_datalist(synthetic_dataset / "image_text.csv", splits=splits)
    vindr_items = dl.vindr_datalist(synthetic_dataset, splits=splits)
    cbis = dl.cbis_ddsm_datalist(sorted(synthetic_dataset.glob("*_case_description_*_set.csv")))
    assert len(text_items) == len(vindr_items) == 52 and cbis
    assert dl.select_split(dl.with_validation(vindr_items, 0.15), "val", required=True)
