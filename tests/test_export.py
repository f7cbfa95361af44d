"""torch.export (``.pt2``) exports: image tower, zero-shot classifier and text tower, dynamic batch, parity."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from mammoclip_monai.export import (
    PT2_CHECK_BATCHES,
    PT2_EXAMPLE_BATCH,
    ExportParityError,
    export_image_pt2,
    export_text_tower_pt2,
    export_zero_shot_pt2,
    load_pt2,
)
from mammoclip_monai.networks import ZeroShotClassifier, create_model

SIZE = (128, 96)  # small: each export takes seconds
TOLERANCE = 1e-4


def _tiny(seed: int = 0, **overrides):
    """The offline tiny preset with random weights (``init_towers`` is the newer name of ``pretrained``)."""
    torch.manual_seed(seed)
    try:
        model = create_model("tiny", init_towers=False, image_size=list(SIZE), **overrides)
    except TypeError:
        model = create_model("tiny", pretrained=False, image_size=list(SIZE), **overrides)
    return model.eval()


def _images(batch: int, seed: int = 100) -> torch.Tensor:
    return torch.randn(batch, 1, *SIZE, generator=torch.Generator().manual_seed(seed + batch))


@pytest.fixture(scope="module")
def model():
    return _tiny()


def test_the_checked_batch_sizes_differ_from_the_export_example():
    assert PT2_EXAMPLE_BATCH not in PT2_CHECK_BATCHES and 1 in PT2_CHECK_BATCHES


def test_image_tower_pt2_reloads_with_a_dynamic_batch_and_matches_eager(model, tmp_path):
    path = tmp_path / "image_tower.pt2"
    model.train()  # the export runs in eval mode and gives every module its flag back
    try:
        entry = export_image_pt2(model, path)
        assert all(module.training for module in model.modules())
    finally:
        model.eval()
    assert entry["file"] == "image_tower.pt2" and entry["max_abs_difference"] <= TOLERANCE
    assert entry["inputs"] == {"image": ["batch", 1, *SIZE]}
    assert entry["outputs"] == {"embedding": ["batch", model.config.embed_dim]}
    program = torch.export.load(str(path))
    assert isinstance(program, torch.export.ExportedProgram)
    module = program.module()
    with torch.no_grad():
        for batch in (1, 3, 5):  # none of them is the export example's batch size
            assert batch != entry["example_batch"]
            image = _images(batch)
            exported = module(image)
            assert exported.shape == (batch, model.config.embed_dim)
            assert (exported - model.encode_image(image)).abs().max().item() <= TOLERANCE
        with pytest.raises(Exception):  # noqa: B017 - H and W are fixed: another width is refused, not padded
            module(torch.randn(2, 1, SIZE[0], SIZE[1] + 32))


def test_zero_shot_pt2_gives_the_classifier_probabilities_at_unseen_batch_sizes(model, tmp_path):
    classifier = ZeroShotClassifier(model).eval()  # what inference.json's network_def builds
    path = tmp_path / "zero_shot.pt2"
    entry = export_zero_shot_pt2(model, path)
    assert entry["max_abs_difference"] <= TOLERANCE
    assert entry["output_names"] == classifier.output_names
    assert entry["outputs"] == {"probabilities": ["batch", len(classifier.output_names)]}
    module, info = load_pt2(path)
    assert info["output_names"] == classifier.output_names
    assert info["image_normalization"] == model.config.image_normalization
    density = [i for i, name in enumerate(classifier.output_names) if name.startswith("density_")]
    with torch.no_grad():
        for batch in (1, 3):
            image = _images(batch, seed=7)
            exported, eager = module(image), classifier(image)
            assert exported.shape == (batch, len(classifier.output_names))
            assert (exported - eager).abs().max().item() <= TOLERANCE
            torch.testing.assert_close(exported[:, density].sum(1), torch.ones(batch))
    # other prompts are other constants: a one-set classifier has one column
    single = export_zero_shot_pt2(model, tmp_path / "mass.pt2", prompt_sets={"mass": ["no mass", "a mass"]})
    assert single["output_names"] == ["mass"] and single["outputs"]["probabilities"] == ["batch", 1]


def test_zero_shot_pt2_of_a_classifier_that_loaded_the_training_checkpoint(model, tmp_path):
    """The bundle's path: ZeroShotClassifier of other weights + the model.pt state dict, then export."""
    classifier = ZeroShotClassifier(_tiny(seed=1)).eval()
    classifier.load_state_dict(model.state_dict(), strict=True)
    entry = export_zero_shot_pt2(classifier, tmp_path / "zero_shot.pt2")
    module, _ = load_pt2(tmp_path / "zero_shot.pt2")
    image = _images(3, seed=11)
    with torch.no_grad():
        expected = ZeroShotClassifier(model).eval()(image)
        assert (module(image) - expected).abs().max().item() <= TOLERANCE
    assert entry["max_abs_difference"] <= TOLERANCE


def test_a_failed_parity_check_raises_and_leaves_no_file(model, tmp_path):
    path = tmp_path / "image_tower.pt2"
    with pytest.raises(ExportParityError, match="tolerance"):
        export_image_pt2(model, path, tolerance=-1.0)  # no difference passes a negative tolerance
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"\.pt2"):
        export_image_pt2(model, tmp_path / "image_tower.pt")


def test_grad_checkpointing_and_channels_last_export(tmp_path):
    """The paper presets train with timm grad checkpointing and channels_last; the export wrapper copes."""
    model = _tiny(seed=2, image_grad_checkpointing=True).to(memory_format=torch.channels_last)
    entry = export_image_pt2(model, tmp_path / "image_tower.pt2")
    assert entry["max_abs_difference"] <= TOLERANCE
    module, _ = load_pt2(tmp_path / "image_tower.pt2")
    image = _images(4, seed=3)
    with torch.no_grad():
        assert (module(image) - model.encode_image(image)).abs().max().item() <= TOLERANCE


def test_text_tower_pt2_takes_any_batch_of_max_length_tokens(model, tmp_path):
    entry = export_text_tower_pt2(model, tmp_path / "text_tower.pt2")
    assert entry["max_abs_difference"] <= TOLERANCE
    length = entry["max_length"]
    module, _ = load_pt2(tmp_path / "text_tower.pt2")
    for texts in (["a new free-text prompt about calcifications"], ["mass"] * 4 + ["no mass"]):
        tokens = model.tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        with torch.no_grad():
            exported = module(tokens["input_ids"], tokens["attention_mask"])
            eager = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        assert exported.shape == (len(texts), model.config.embed_dim)
        assert (exported - eager).abs().max().item() <= TOLERANCE


def _cli_export(folder, out, *flags: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mammoclip_monai.cli", "export", "--model", str(folder),
                             "--out", str(out), *flags], check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_cli_export_writes_pt2_programs_recorded_in_export_json(model, tmp_path):
    model.save_pretrained(tmp_path / "pretrained")
    no_onnx = [] if importlib.util.find_spec("onnxruntime") else ["--no-onnx"]
    _cli_export(tmp_path / "pretrained", tmp_path / "export", *no_onnx)
    out = tmp_path / "export"
    summary = json.loads((out / "export.json").read_text())
    for key, name in (("image_tower_pt2", "image_tower.pt2"), ("zero_shot_pt2", "zero_shot.pt2"),
                      ("text_tower_pt2", "text_tower.pt2")):
        assert summary[key]["file"] == name and (out / name).is_file()
        assert summary[key]["max_abs_difference"] <= TOLERANCE
        assert summary[key]["dynamic"]["batch"]["min"] == 1
    assert summary["image_tower_pt2"]["inputs"]["image"] == ["batch", 1, *SIZE]
    assert summary["zero_shot_pt2"]["inputs"]["image"] == ["batch", 1, *SIZE]
    assert (out / "text_tower.ts").is_file()  # the TorchScript text tower is still written
    # the CLI's program is the saved model's classifier
    module = torch.export.load(str(out / "zero_shot.pt2")).module()
    image = _images(1, seed=5)
    with torch.no_grad():
        assert (module(image) - ZeroShotClassifier(model).eval()(image)).abs().max().item() <= TOLERANCE
    # --no-pt2 skips them (and --no-onnx the ONNX file)
    _cli_export(tmp_path / "pretrained", tmp_path / "plain", "--no-pt2", "--no-onnx")
    plain = json.loads((tmp_path / "plain" / "export.json").read_text())
    assert not list((tmp_path / "plain").glob("*.pt2")) and not any(key.endswith("_pt2") for key in plain)
    assert (tmp_path / "plain" / "text_tower.ts").is_file()
