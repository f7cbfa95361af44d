"""The front door: ``mammoclip_monai.create_model_and_transforms`` / ``get_tokenizer`` / ``list_models`` and
the one loader behind ``pretrained`` (save_pretrained directory, bundle checkpoint, original .tar)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

import mammoclip_monai as mc
from mammoclip_monai.networks import weights
from mammoclip_monai.utils.errors import InvalidInputError

SMALL = (128, 96)


@pytest.fixture(scope="module")
def one_dicom(synthetic_dataset):
    with open(synthetic_dataset / "image_text.csv", newline="") as handle:
        return str(synthetic_dataset / next(csv.DictReader(handle))["image_path"])


def _embed(model, transform, path):
    with torch.no_grad():
        return model.eval().encode_image(transform({"image": path})["image"].as_tensor()[None])


def test_top_level_names_and_a_cheap_import():
    assert {"create_model_and_transforms", "create_model", "get_tokenizer", "list_models", "load_pretrained",
            "MammoCLIP", "Predictor"} <= set(mc.__all__)
    probe = "import sys, mammoclip_monai; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_list_models_is_the_preset_registry():
    models = mc.list_models()
    assert {"tiny", "paper_b5", "paper_b2", "original_b5", "original_b2", "default"} <= set(models)


@pytest.mark.parametrize("preset", ["tiny", "paper_b5", "paper_b2", "original_b5", "original_b2"])
def test_every_preset_builds_with_its_own_transforms(preset, tiny_text_dir, one_dicom):
    """Offline: hub text models replaced by a local directory, towers random, a small input size."""
    model, train_tf, eval_tf = mc.create_model_and_transforms(preset, init_towers=False, text_model=str(tiny_text_dir),
                                                              image_size=SMALL)
    image = eval_tf({"image": one_dicom})["image"]
    assert tuple(image.shape) == (1, *SMALL)
    normalization = model.config.image_normalization
    if normalization["mode"] == "fixed":  # the model's own constants, not a default
        step = eval_tf.transforms[-1]
        assert (step.mean, step.std) == (normalization["mean"], normalization["std"])
    assert tuple(train_tf({"image": one_dicom})["image"].shape) == (1, *SMALL)
    assert _embed(model, eval_tf, one_dicom).shape == (1, model.config.embed_dim)
    tokens = mc.get_tokenizer(preset, text_model=str(tiny_text_dir))(["no mass", "a spiculated mass"])
    assert tokens["input_ids"].shape == (2, model.config.text_max_length)
    assert model.encode_text(**tokens).shape == (2, model.config.embed_dim)


def test_paper_presets_keep_their_native_size(tiny_text_dir):
    model, _, eval_tf = mc.create_model_and_transforms("paper_b2", init_towers=False, text_model=str(tiny_text_dir))
    assert tuple(model.config.image_size) == (1520, 912)
    assert tuple(eval_tf.transforms[0].spatial_size) == (1520, 912)


def test_tiny_towers_are_initialised_by_default_and_random_without():
    initialised = mc.create_model("tiny", image_size=SMALL)
    again = mc.create_model("tiny", image_size=SMALL)
    random = mc.create_model("tiny", init_towers=False, image_size=SMALL)
    stem = "image_encoder.model.conv_stem.weight"
    assert torch.equal(initialised.state_dict()[stem], again.state_dict()[stem])  # packaged ImageNet weights
    assert not torch.equal(initialised.state_dict()[stem], random.state_dict()[stem])


def test_pretrained_is_trained_weights_not_a_flag():
    with pytest.raises(TypeError, match="init_towers=True"):
        mc.create_model("tiny", pretrained=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_dicom):
    """A 'trained' tiny model saved the two ways the bundle writes it (pretrained/ and model.pt + run.json)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(3)
    model = mc.create_model("tiny", init_towers=False, image_size=SMALL).eval()
    model.save_pretrained(root / "pretrained")
    torch.save({"model": model.state_dict()}, root / "model.pt")
    (root / "run.json").write_text(json.dumps({"settings": {"preset": "tiny", "image_size": list(SMALL)}}))
    _, _, eval_tf = mc.create_model_and_transforms("tiny", init_towers=False, image_size=SMALL)
    return root, _embed(model, eval_tf, one_dicom)


def test_one_loader_reads_a_save_pretrained_directory(trained, one_dicom):
    root, expected = trained
    for model, _, eval_tf in (mc.create_model_and_transforms(root / "pretrained"),
                              mc.create_model_and_transforms("tiny", pretrained=root / "pretrained")):
        assert not model.training
        assert torch.allclose(_embed(model, eval_tf, one_dicom), expected, atol=1e-6)
    assert mc.get_tokenizer(root / "pretrained")(["mass"])["input_ids"].shape == (1, 64)


def test_one_loader_reads_a_bundle_checkpoint(trained, one_dicom, tmp_path):
    root, expected = trained
    model, _, eval_tf = mc.create_model_and_transforms(root / "model.pt")  # preset and size from run.json
    assert tuple(model.config.image_size) == SMALL
    assert torch.allclose(_embed(model, eval_tf, one_dicom), expected, atol=1e-6)
    alone = tmp_path / "model.pt"
    alone.write_bytes((root / "model.pt").read_bytes())
    with pytest.raises(InvalidInputError, match="names its preset"):
        mc.create_model(alone)  # no run.json: the preset must be given
    model, _, eval_tf = mc.create_model_and_transforms("tiny", pretrained=alone, image_size=SMALL)
    assert torch.allclose(_embed(model, eval_tf, one_dicom), expected, atol=1e-6)
    with pytest.raises(InvalidInputError, match="does not fit"):
        mc.create_model("tiny", pretrained=alone, image_size=SMALL, embed_dim=256)


def test_one_loader_reads_an_original_mammoclip_tar(tmp_path):
    from test_checkpoints import _inputs, _make_reference, _original_layout

    reference = _make_reference("efficientnet-b0", heads=1)
    path = tmp_path / "b0-model-best-epoch-7.tar"
    torch.save(_original_layout(reference), path)
    assert mc.networks.checkpoint_layout(path) == "original"
    with pytest.warns(UserWarning, match="NO tokenizer"):
        model, _, eval_tf = mc.create_model_and_transforms(path)
    assert model.config.image_backend == "efficientnet_bn" and tuple(model.config.image_size) == (1520, 912)
    image, _, _ = _inputs(weights.fallback_tokenizer())
    with torch.no_grad():
        assert (reference.encode_image(image) - model.encode_image(image)).abs().max() < 1e-4
    assert eval_tf.transforms[-1].mean == model.config.image_normalization["mean"]
    with pytest.raises(InvalidInputError, match="not preset 'tiny'"):
        mc.create_model("tiny", pretrained=path)


def test_a_path_that_is_neither_is_refused(tmp_path):
    with pytest.raises(ValueError, match="neither a preset"):
        mc.create_model(tmp_path / "nothing-here")
    with pytest.raises(InvalidInputError, match="not a saved MammoCLIP"):
        mc.create_model(tmp_path)
