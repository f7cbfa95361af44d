"""The error convention of every ``mammoclip`` command: one line per bad input, no traceback, the exit status.

0: every input done; 1: some inputs failed (listed, the rest done); 2: nothing done (usage error, no such
path, empty folder, invalid prompt / model / FActOR / CSV file); 3: internal error (traceback with -v).
Most cases run ``cli.main`` in-process (fast); the console script itself is run for a few.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mammoclip_monai import cli
from mammoclip_monai.interpret.factor import FActOR
from mammoclip_monai.interpret.features import FeatureMapExtractor
from mammoclip_monai.networks import create_model

SIZE = (96, 64)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("mammoclip ")]


def assert_one_line_error(code: int, err: str, expected_code: int, *needles: str) -> str:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_model")
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, image_size=SIZE).eval()
    model.save_pretrained(root / "pretrained")
    layer = "model.blocks.5"
    fmap = FeatureMapExtractor(model.image_encoder, layer)(torch.zeros(1, 1, *SIZE))
    factor = FActOR(["mass"], fmap.shape[-2:], model.config.embed_dim, channels=fmap.shape[1], layer=layer)
    torch.save(factor.state_dict(), root / "factor.pt")
    return root


@pytest.fixture(scope="module")
def images(synthetic_dataset, tmp_path_factory) -> Path:
    """Two readable MG DICOMs and a corrupt one."""
    folder = tmp_path_factory.mktemp("cli_images")
    for source in sorted((synthetic_dataset / "images").rglob("*.dicom"))[:2]:
        shutil.copy(source, folder / source.name)
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI")
    return folder


# ----------------------------------------------------------------------------- nothing to do: exit 2
COMMANDS_WITH_INPUTS = [["inspect"], ["preprocess", "--out", "{tmp}/pre"], ["predict", "--model", "{model}"],
                        ["embed", "--model", "{model}"],
                        ["explain", "--model", "{model}", "--factor", "{factor}", "--out", "{tmp}/exp"]]


@pytest.mark.parametrize("command", COMMANDS_WITH_INPUTS, ids=lambda c: c[0])
def test_a_path_that_does_not_exist_is_a_usage_error(command, model_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, model=model_dir / "pretrained", factor=model_dir / "factor.pt") for a in command]
    code, out, err = run([argv[0], str(tmp_path / "nope.dcm"), *argv[1:]], capsys)
    assert_one_line_error(code, err, 2, f"mammoclip {argv[0]}: error: nothing to read: {tmp_path / 'nope.dcm'}: "
                                        "no such file or folder")
    assert out == ""


@pytest.mark.parametrize("command", COMMANDS_WITH_INPUTS, ids=lambda c: c[0])
def test_an_empty_folder_is_a_usage_error(command, model_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, model=model_dir / "pretrained", factor=model_dir / "factor.pt") for a in command]
    (tmp_path / "empty").mkdir()
    code, _, err = run([argv[0], str(tmp_path / "empty"), *argv[1:]], capsys)
    assert_one_line_error(code, err, 2, "no DICOM/PNG/JPEG/TIFF file in this folder")


def test_argparse_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict"])
    assert stop.value.code == 2
    assert "the following arguments are required: inputs" in capsys.readouterr().err


# ----------------------------------------------------------------------------- some inputs failed: exit 1
def test_inspect_lists_the_missing_and_the_corrupt_and_reads_the_rest(images, tmp_path, capsys):
    missing = tmp_path / "typo.dcm"
    code, out, err = run(["inspect", str(images), str(missing)], capsys)
    assert code == 1 and "Traceback" not in err
    assert len([json.loads(line) for line in out.splitlines()]) == 2
    failed = sorted(line for line in error_lines(err) if line.count(": ") >= 2)
    assert failed[0].startswith(f"mammoclip inspect: {images / 'broken.dcm'}: ")
    assert failed[1] == f"mammoclip inspect: {missing}: file not found"


def test_preprocess_reports_the_reason_not_the_monai_wrapper_and_writes_the_rest(images, tmp_path, capsys):
    code, out, err = run(["preprocess", str(images), "--out", str(tmp_path / "pre"), "--height", "64",
                          "--width", "48", "--workers", "0"], capsys)
    assert code == 1, err
    line = [x for x in error_lines(err) if "broken.dcm" in x]
    assert len(line) == 1 and "applying transform" not in line[0] and "RuntimeError" not in line[0]
    cached = [json.loads(x) for x in out.splitlines()]
    assert len(cached) == 2 and all(Path(c["entry"]).is_file() and c["new"] for c in cached)
    assert "broken.dcm" not in out
    assert len(list((tmp_path / "pre").glob("*/entries/*/*.mce"))) == 2


def test_predict_goes_on_past_a_missing_path_and_names_the_head(images, model_dir, tmp_path, capsys):
    good = sorted(images.glob("*.dicom"))[0]
    missing = tmp_path / "gone.dcm"
    code, _, err = run(["predict", str(good), str(missing), "--model", str(model_dir / "pretrained"),
                        "--out", str(tmp_path / "pred"), "--quiet"], capsys)
    assert code == 1
    assert error_lines(err) == [f"mammoclip predict: {missing}: file not found"]  # --quiet: only the failure
    saved = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(saved["predictions"]) == 1 and saved["head"] == "zero_shot"
    assert saved["errors"] == [{"file": str(missing), "error": "file not found"}]
    header = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["file", "image_hash", "laterality", "view", "head"]


# ----------------------------------------------------------------------------- invalid configuring files: exit 2
@pytest.mark.parametrize("content, needle", [
    ('{"mass": 5}', "key 'mass'"),
    ('{"mass": ["no mass", 5]}', "key 'mass'"),
    ('{"tasks": []}', "'tasks'"),
    ('{"mass": {"a": 1}}', "key 'mass'"),
    ("not json", "line 1"),
    (b"\xff\xfe{", "UTF-8"),
])
def test_invalid_prompt_files_are_one_line(content, needle, images, model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = run(["predict", str(images), "--model", str(model_dir / "pretrained"), "--prompts", str(prompts),
                        "--out", str(tmp_path / "p")], capsys)
    assert_one_line_error(code, err, 2, str(prompts), needle)
    assert not (tmp_path / "p").exists()


def test_a_folder_as_prompt_file(images, model_dir, tmp_path, capsys):
    code, _, err = run(["predict", str(images), "--model", str(model_dir / "pretrained"), "--prompts", str(tmp_path)],
                       capsys)
    assert_one_line_error(code, err, 2, str(tmp_path), "folder")


def test_model_folders_that_are_not_models(images, model_dir, tmp_path, capsys):
    broken = tmp_path / "model"
    shutil.copytree(model_dir / "pretrained", broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "image_sise": [1, 2]}))
    for command in (["predict", str(images)], ["embed", str(images)], ["export", "--out", str(tmp_path / "x")]):
        code, _, err = run([*command, "--model", str(broken)], capsys)
        assert_one_line_error(code, err, 2, str(broken / "config.json"), "image_sise")
    code, _, err = run(["predict", str(images), "--model", str(tmp_path / "no_model")], capsys)
    assert_one_line_error(code, err, 2, str(tmp_path / "no_model"))


def test_a_factor_file_that_is_not_a_checkpoint(images, model_dir, tmp_path, capsys):
    fake = tmp_path / "factor.pt"
    fake.write_text("hello")
    code, _, err = run(["explain", str(images), "--model", str(model_dir / "pretrained"), "--factor", str(fake),
                        "--out", str(tmp_path / "e")], capsys)
    line = assert_one_line_error(code, err, 2, str(fake))
    assert "weights_only" not in line


def test_explain_lists_bad_inputs_with_their_reasons(images, model_dir, tmp_path, capsys):
    missing = tmp_path / "gone.png"
    code, _, err = run(["explain", str(images), str(missing), "--model", str(model_dir / "pretrained"),
                        "--factor", str(model_dir / "factor.pt"), "--out", str(tmp_path / "e"), "--no-overlays"],
                       capsys)
    assert code == 1, err
    failed = {line.split(": ")[1]: line for line in error_lines(err) if line.count(": ") >= 2}
    assert failed[str(missing)] == f"mammoclip explain: {missing}: file not found"
    assert "applying transform" not in failed[str(images / "broken.dcm")]
    saved = json.loads((tmp_path / "e" / "explanations.json").read_text())
    assert len(saved["images"]) == 2 and saved["head"] == "factor"
    assert "FActOR head" in err


def test_synth_refuses_an_existing_dataset_without_overwrite(tmp_path, capsys):
    target = tmp_path / "data"
    assert run(["synth", "--out", str(target), "--patients", "1", "--height", "160", "--width", "128",
                "--workers", "1", "-q"], capsys)[0] == 0
    code, out, err = run(["synth", "--out", str(target), "--patients", "1", "--height", "160", "--width", "128",
                          "--workers", "1"], capsys)
    assert_one_line_error(code, err, 2, str(target))


def test_data_efficiency_without_configs(tmp_path, capsys):
    code, _, err = run(["data-efficiency", "--configs", str(tmp_path)], capsys)
    assert_one_line_error(code, err, 2, "no bundle configs here")


# ----------------------------------------------------------------------------- internal errors: exit 3
def test_a_bug_is_one_line_with_exit_3_and_a_traceback_only_with_verbose(monkeypatch, images, capsys):
    def broken(args, session):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_inspect", broken)
    code, _, err = run(["inspect", str(images)], capsys)
    line = assert_one_line_error(code, err, 3, "internal error (KeyError)", "--verbose")
    assert line.startswith("mammoclip inspect: internal error")
    code, _, err = run(["-v", "inspect", str(images)], capsys)
    assert code == 3 and "Traceback" in err and "a bug" in err


# ----------------------------------------------------------------------------- the console script itself
def mammoclip() -> list[str]:
    script = Path(sys.executable).parent / "mammoclip"
    return [str(script) if script.exists() else shutil.which("mammoclip")]


@pytest.mark.slow
def test_console_script_exit_statuses_and_help(images, tmp_path):
    missing = subprocess.run([*mammoclip(), "inspect", str(tmp_path / "nope")], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and missing.stdout == ""
    partial = subprocess.run([*mammoclip(), "inspect", "-q", str(images)], capture_output=True, text=True, timeout=120)
    assert partial.returncode == 1 and len(partial.stdout.splitlines()) == 2
    assert len(error_lines(partial.stderr)) == 1  # -q: no progress, no summary, the failure still listed
    helped = subprocess.run([*mammoclip(), "predict", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "exit status:" in helped.stdout and "some inputs failed" in helped.stdout


# ----------------------------------------------------------------------------- --quiet is quiet
@pytest.mark.slow
def test_export_is_short_and_quiet_is_silent(model_dir, tmp_path):
    """The ONNX exporter logs every pass it runs and torch warns on export: none of it without --verbose."""
    loud = subprocess.run([*mammoclip(), "export", "--model", str(model_dir / "pretrained"), "--out",
                           str(tmp_path / "a")], capture_output=True, text=True, timeout=600)
    assert loud.returncode == 0, loud.stderr[-2000:]
    lines = (loud.stdout + loud.stderr).splitlines()
    summary = json.loads((tmp_path / "a" / "export.json").read_text())
    files = [entry for entry in summary.values() if isinstance(entry, dict) and "file" in entry]
    assert len(files) == 5  # three .pt2 programs, the traced text tower, the ONNX image tower
    assert len(lines) == len(files) + 1 and lines[-1].startswith(f"exported to {tmp_path / 'a'}"), lines[:10]
    quiet = subprocess.run([*mammoclip(), "export", "-q", "--model", str(model_dir / "pretrained"), "--out",
                            str(tmp_path / "b")], capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    summary = json.loads((tmp_path / "b" / "export.json").read_text())
    assert summary["text_tower"]["max_abs_difference"] <= 1e-4
    assert summary["image_size"] == list(SIZE) and summary["image_normalization"]["mode"] == "fixed"
