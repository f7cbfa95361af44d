"""Deployment paths: the single-input zero-shot network, bundle inference and export, the Python API and CLI."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mammoclip_monai.networks import ZeroShotClassifier, create_model
from mammoclip_monai.text.prompts import embed_prompt_sets, load_prompt_sets, zero_shot_probabilities

REPO = Path(__file__).resolve().parents[1]
FULL_SIZE = (448, 288)  # the default preset's input: exports are checked at the size they serve


def _bundle(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MammoCLIP with random (seeded) weights standing in for a trained one: ``model.pt`` + ``pretrained/``."""
    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, image_size=FULL_SIZE).eval()
    torch.save(model.state_dict(), root / "model.pt")
    model.save_pretrained(root / "pretrained")
    return root, model


@pytest.fixture(scope="module")
def images(synthetic_dataset, tmp_path_factory):
    """Three synthetic MG DICOMs and one corrupt file."""
    folder = tmp_path_factory.mktemp("images")
    for source in sorted((synthetic_dataset / "images").rglob("*.dicom"))[:3]:
        shutil.copy(source, folder / source.name)
    (folder / "broken.dcm").write_bytes(b"DICM but not really")
    return folder


def test_zero_shot_classifier_loads_the_training_checkpoint_and_matches_the_evaluation_rule(trained):
    root, model = trained
    torch.manual_seed(1)
    other = create_model("tiny", init_towers=False, image_size=FULL_SIZE).eval()  # different weights everywhere
    classifier = ZeroShotClassifier(other).eval()
    image = torch.randn(2, 1, *FULL_SIZE)
    before = classifier(image)
    classifier.load_state_dict(torch.load(root / "model.pt", weights_only=True), strict=True)
    after = classifier(image)
    assert classifier.output_names == ["mass", "calcification", "density_A", "density_B", "density_C", "density_D"]
    assert (after - before).abs().max() > 1e-3  # the load replaced both towers' effect, prompts re-embedded

    sets = load_prompt_sets(tasks=["mass", "calcification", "density"])
    embeddings = embed_prompt_sets(model, sets)
    with torch.no_grad():
        features = model.encode_image(image)
        scale = model.get_logit_scale()
        mass = zero_shot_probabilities(features, embeddings["mass"], scale)[:, 1]
        density = zero_shot_probabilities(features, embeddings["density"], scale)
    torch.testing.assert_close(after[:, 0], mass, atol=1e-5, rtol=0)
    torch.testing.assert_close(after[:, 2:], density, atol=1e-5, rtol=0)
    assert classifier.as_dicts(after)[0]["mass"] == pytest.approx(float(after[0, 0]))
    assert "text_encoder.model.embeddings.word_embeddings.weight" not in classifier.state_dict()


def test_zero_shot_classifier_rejects_bad_prompts_and_checkpoints(trained):
    root, model = trained
    with pytest.raises(ValueError, match="at least two classes"):
        ZeroShotClassifier(model, {"mass": ["mass"]})
    with pytest.raises(ValueError, match="empty"):
        ZeroShotClassifier(model, {"mass": ["no mass", " "]})
    classifier = ZeroShotClassifier(model, {"mass": ["no mass", ["mass", "a mass"]]})
    assert classifier.output_names == ["mass"]
    state = torch.load(root / "model.pt", weights_only=True)
    broken = {k: v for k, v in state.items() if "text_projection" not in k}
    with pytest.raises(ValueError, match="text-tower key"):
        classifier.load_state_dict(broken)


@pytest.mark.slow
def test_bundle_verify_export_and_torchscript_parity(trained, tmp_path):
    """The README's verify_net_in_out and ckpt_export commands; TorchScript == eager at full size."""
    root, model = trained
    _bundle("verify_net_in_out", "network_def", "--meta_file", "bundle/configs/metadata.json",
            "--config_file", "bundle/configs/inference.json")
    ts = tmp_path / "model.ts"
    _bundle("ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(root / "model.pt"),
            "--meta_file", "bundle/configs/metadata.json", "--config_file", "bundle/configs/inference.json")
    with zipfile.ZipFile(ts) as archive:
        names = {Path(n).name for n in archive.namelist() if "/extra/" in n}
        assert {"metadata.json", "inference.json"} <= names
        meta = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("extra/metadata.json"))))
    loaded = torch.jit.load(str(ts))
    eager = ZeroShotClassifier(model).eval()
    image = torch.randn(2, 1, *FULL_SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        difference = (loaded(image) - eager(image)).abs().max().item()
    assert difference <= 1e-4
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert [channels[str(i)] for i in range(len(channels))] == eager.output_names


@pytest.mark.slow
def test_bundle_inference_writes_predictions_and_reports_the_bad_file(trained, images, tmp_path):
    root, model = trained
    out = tmp_path / "predictions"
    # FActOR heads for the optional overlays (untrained: this checks the path, not their quality)
    from mammoclip_monai.interpret import FActOR, FeatureMapExtractor, attribute_embeddings

    fmap = FeatureMapExtractor(model.image_encoder)(torch.zeros(1, 1, *FULL_SIZE))
    factor = FActOR(["mass", "calcification"], fmap.shape[-2:], model.config.embed_dim, channels=fmap.shape[1])
    factor.set_attribute_embeddings(attribute_embeddings(model, load_prompt_sets(tasks=["mass", "calcification"])))
    torch.save(factor.state_dict(), tmp_path / "factor.pt")
    _bundle("run", "--config_file", "bundle/configs/inference.json", "--input", str(images),
            "--checkpoint", str(root / "model.pt"), "--output_dir", str(out), "--factor_overlays", "true",
            "--factor_file", str(tmp_path / "factor.pt"))
    explained = json.loads((out / "factor" / "explanations.json").read_text())
    assert len(explained["images"]) == 3 and [Path(e["image"]).name for e in explained["errors"]] == ["broken.dcm"]
    assert all((out / "factor" / r["overlay"]).is_file() for r in explained["images"])
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    good = sorted(p.name for p in images.iterdir() if p.name != "broken.dcm")
    assert sorted(Path(r["file"]).name for r in rows) == good
    record = json.loads((out / "predictions.json").read_text())
    assert [Path(e["file"]).name for e in record["errors"]] == ["broken.dcm"]
    density = [sum(float(r[f"density_{c}"]) for c in "ABCD") for r in rows]
    assert np.allclose(density, 1.0, atol=1e-4) and all(0 <= float(r["mass"]) <= 1 for r in rows)
    # the same numbers from the Python API (same preprocessing, same prompts, same weights)
    import mammoclip_monai as mc

    api = mc.Predictor(mc.create_model(root / "pretrained"), device="cpu")
    first = api.predict(rows[0]["file"])
    assert first["mass"] == pytest.approx(float(rows[0]["mass"]), abs=1e-5)


@pytest.mark.slow
def test_predict_and_embed_commands_and_custom_prompts(trained, images, tmp_path):
    root, model = trained
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"spiculated": ["a round mass", ["a spiculated mass", "a stellate lesion"]]}))
    listing = images.parent / "list.csv"  # paths relative to the CSV's folder
    listing.write_text("image\n" + "\n".join(f"{images.name}/{p.name}" for p in sorted(images.iterdir())) + "\n")
    cli = [sys.executable, "-m", "mammoclip_monai.cli"]
    result = subprocess.run([*cli, "predict", str(images), "--model", str(root / "pretrained"), "--prompts",
                             str(prompts), "--out", str(tmp_path / "pred"), "--quiet"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]  # one file failed, and the run says so
    assert "broken.dcm" in result.stderr  # stdout carries data only (the error convention)
    rows = list(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    assert len(rows) == 3 and set(rows[0]) >= {"file", "image_hash", "spiculated"}
    assert all(0.0 <= float(r["spiculated"]) <= 1.0 for r in rows)

    result = subprocess.run([*cli, "embed", str(listing), "--model", str(root / "pretrained"),
                             "--out", str(tmp_path / "emb"), "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "broken.dcm" in result.stderr, result.stderr[-3000:]
    vectors = np.load(tmp_path / "emb" / "embeddings.npy")
    index = list(csv.DictReader(open(tmp_path / "emb" / "index.csv")))
    assert vectors.shape == (3, model.config.embed_dim) and len(index) == 3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    from mammoclip_monai.inference import Predictor

    predictor = Predictor(model)
    expected = predictor.predict(index[1]["file"], prompts={"spiculated": ["a round mass", ["a spiculated mass",
                                                                                             "a stellate lesion"]]})
    by_file = {r["file"]: float(r["spiculated"]) for r in rows}
    assert expected["spiculated"] == pytest.approx(by_file[index[1]["file"]], abs=1e-5)
    from mammoclip_monai.data.reader import MammogramReadError

    with pytest.raises(MammogramReadError, match="broken.dcm"):
        predictor.predict(images / "broken.dcm")
    # prompt embeddings are cached, and recomputed once the text tower's weights change in place
    cached = predictor.classifier()
    assert predictor.classifier() is cached
    tuned = create_model("tiny", init_towers=False, image_size=FULL_SIZE).eval()
    predictor = Predictor(tuned)
    before = predictor.classifier().class_embeddings.clone()
    with torch.no_grad():
        tuned.text_projection.projection.weight.normal_()
    assert (predictor.classifier().class_embeddings - before).abs().max() > 1e-2
    # a prompt file in the packaged format keeps its class names as output columns
    from mammoclip_monai.text.prompts import load_prompt_file  # what the CLI's --prompts reads

    packaged = REPO / "mammoclip_monai" / "resources" / "zero_shot_prompts.json"
    columns = Predictor(model, prompts=load_prompt_file(packaged)).classifier().output_names
    assert columns[:3] == ["mass", "calcification", "density_A"]


@pytest.mark.slow
def test_text_tower_torchscript_and_image_tower_onnx_parity(trained, tmp_path):
    root, model = trained
    result = subprocess.run([sys.executable, "-m", "mammoclip_monai.cli", "export", "--model",
                             str(root / "pretrained"), "--out", str(tmp_path / "export")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "export" / "export.json").read_text())
    assert summary["text_tower"]["max_abs_difference"] <= 1e-4
    assert summary["image_tower_onnx"]["max_abs_difference"] <= 1e-4
    # free-text prompts through the exported text tower give the eager embeddings
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export" / "tokenizer")
    tokens = tokenizer(["a new free-text prompt about calcifications"], padding="max_length", truncation=True,
                       max_length=summary["text_tower"]["max_length"], return_tensors="pt")
    tower = torch.jit.load(str(tmp_path / "export" / "text_tower.ts"))
    with torch.no_grad():
        exported = tower(tokens["input_ids"], tokens["attention_mask"])
        eager = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    assert (exported - eager).abs().max().item() <= 1e-4


# ----------------------------------------------------------------------------- normalisation from the model config
SMALL = (128, 96)
BREAST = {"mode": "breast"}


def _breast_normalised_by_hand(path: Path) -> torch.Tensor:
    """The preprocessed image before normalisation, z-scored over its breast pixels (> 0.05) by hand."""
    from mammoclip_monai.data.pipelines import preprocessing

    raw = preprocessing(spatial_size=SMALL, normalize=False)({"image": str(path)})["image"].as_tensor()
    breast = raw[raw > 0.05]
    return (raw - breast.mean()) / breast.std()


def test_predictor_normalises_as_the_model_config_says(images):
    from mammoclip_monai.inference import Predictor

    path = sorted(images.glob("*.dicom"))[0]
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, image_size=SMALL, image_normalization=BREAST).eval()
    fixed = create_model("tiny", init_towers=False, image_size=SMALL).eval()
    fixed.load_state_dict(model.state_dict())  # the same weights, only the config's normalisation differs
    prompts = {"mass": ["no mass", "mass"]}
    by_hand = _breast_normalised_by_hand(path)[None]
    with torch.no_grad():
        expected_embedding = model.encode_image(by_hand)
        expected = ZeroShotClassifier(model, prompts).eval()(by_hand)[0, 0].item()
    got = Predictor(model, prompts=prompts, device="cpu").predict(path)["mass"]
    assert got == pytest.approx(expected, abs=1e-6)
    vectors, _, errors = Predictor(model, device="cpu").embed([path])
    assert not errors
    np.testing.assert_allclose(vectors[0], expected_embedding[0].numpy(), atol=1e-5)
    fixed_vectors, _, _ = Predictor(fixed, device="cpu").embed([path])
    assert np.abs(fixed_vectors[0] - vectors[0]).max() > 1e-3  # the fixed mode would have served it wrong


def test_explainer_and_bundle_inference_take_the_normalisation_from_the_model(images):
    from monai.bundle import ConfigParser

    from mammoclip_monai.data.transforms import NormalizeMammogramd
    from mammoclip_monai.interpret import FActOR
    from mammoclip_monai.interpret.explain import Explainer

    path = sorted(images.glob("*.dicom"))[0]
    model = create_model("tiny", init_towers=False, image_size=SMALL, image_normalization=BREAST).eval()
    factor = FActOR(["mass"], (4, 3), model.config.embed_dim, channels=1280)
    explainer = Explainer(model, factor, device="cpu")
    torch.testing.assert_close(explainer.preprocessing({"image": str(path)})["image"].as_tensor(),
                               _breast_normalised_by_hand(path))
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "inference.json"))
    parser["image_size"] = list(SMALL)
    parser["network_def#model#image_normalization"] = BREAST
    normalize = parser.get_parsed_content("preprocessing").transforms[-1]
    assert isinstance(normalize, NormalizeMammogramd) and normalize.mode == "breast"


def test_siglip_checkpoint_loads_into_the_zero_shot_classifier_and_the_export_records_the_normalisation(tmp_path):
    torch.manual_seed(0)
    siglip = create_model("tiny", init_towers=False, image_size=SMALL, logit_bias_init=-10.0,
                          image_normalization=BREAST).eval()
    classifier = ZeroShotClassifier(create_model("tiny", init_towers=False, image_size=SMALL,
                                                 image_normalization=BREAST)).eval()
    classifier.load_state_dict(siglip.state_dict(), strict=True)  # the training-only bias is dropped
    # re-embedding the prompts on load ran the held (train-mode) model: the shared image tower stays in eval
    assert not any(module.training for module in classifier.modules())
    image = torch.randn(1, 1, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(classifier(image), ZeroShotClassifier(siglip).eval()(image))
    torch.jit.save(torch.jit.script(classifier), str(tmp_path / "model.ts"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    # what the MONAI Deploy operator reads (apps/deploy/operators/bundle_model.py needs only the standard library)
    import importlib.util

    spec = importlib.util.spec_from_file_location("bundle_model", REPO / "apps/deploy/operators/bundle_model.py")
    bundle_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle_model)
    assert bundle_model.model_normalization(loaded) == BREAST
    assert bundle_model.model_normalization(torch.nn.Linear(1, 1)) is None  # an archive from before: the default
