"""One run per output folder: a second training never silently replaces another run's weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mammoclip_monai.engines import RunDirectory, RunDirectoryInUse

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"preset": "tiny", "image_size": [96, 64], "seed": 0}


def _finished_run(folder: Path, settings: dict = SETTINGS) -> None:
    RunDirectory(folder, settings).claim()
    (folder / "model.pt").write_bytes(b"weights of a 25-minute model")
    (folder / "last.pt").write_bytes(b"resume state")
    (folder / "pretrained").mkdir()
    RunDirectory(folder, settings).finish()


def test_a_new_run_refuses_a_folder_with_a_finished_run(tmp_path):
    _finished_run(tmp_path)
    with pytest.raises(RunDirectoryInUse, match=r"holds a finished run's weights \(model.pt, last.pt, pretrained\)"):
        RunDirectory(tmp_path, SETTINGS).claim()
    assert (tmp_path / "model.pt").read_bytes() == b"weights of a 25-minute model"
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "finished"


def test_weights_from_before_run_records_are_protected_too(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"old")
    with pytest.raises(RunDirectoryInUse, match="another run's weights"):
        RunDirectory(tmp_path, SETTINGS).claim()


def test_overwrite_replaces_the_previous_run(tmp_path):
    _finished_run(tmp_path)
    RunDirectory(tmp_path, {**SETTINGS, "preset": "paper_b5"}, overwrite=True).claim()
    assert not any((tmp_path / name).exists() for name in ("model.pt", "last.pt", "pretrained"))
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "running" and record["settings"]["preset"] == "paper_b5"


def test_resume_auto_continues_only_the_same_run(tmp_path):
    _finished_run(tmp_path)
    RunDirectory(tmp_path, dict(SETTINGS), resume="auto").claim()  # same settings (tuples vs lists do not matter)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "running" and len(record["resumed"]) == 1
    with pytest.raises(RunDirectoryInUse, match=r"other settings \(image_size: \[96, 64\] there, \[448, 288\] here\)"):
        RunDirectory(tmp_path, {**SETTINGS, "image_size": (448, 288)}, resume="auto").claim()


def test_only_rank_zero_claims(tmp_path, monkeypatch):
    _finished_run(tmp_path)
    monkeypatch.setenv("RANK", "1")
    RunDirectory(tmp_path, SETTINGS).claim()  # rank 0 decides; the others would see its claim


def test_the_training_command_refuses_in_one_line_before_any_work(synthetic_dataset, tmp_path):
    """A second ``monai.bundle run training`` into a folder with a model: one line, exit 2, the model kept."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"a finished model")
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "bundle/configs/train.json",
         "--dataset_dir", str(synthetic_dataset), "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "logs")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"mammoclip bundle: error: {models} holds another run's weights (model.pt); a new run would "
                      "replace them. Continue that run with --resume auto, replace it with --overwrite true, or give "
                      "this run folders of its own with --ckpt_dir DIR --output_dir DIR"]
    assert "Traceback" not in result.stderr
    assert (models / "model.pt").read_bytes() == b"a finished model"


@pytest.mark.parametrize("text, expected", [("false", False), ("False", False), ("0", False), ("no", False),
                                            ("true", True), ("TRUE", True), ("1", True), (True, True), (0, False)])
def test_flags_from_the_command_line_mean_what_they_say(text, expected):
    """Fire hands ``--overwrite false`` to the config as the string 'false', which bool() takes as True."""
    from mammoclip_monai.utils import as_flag

    assert as_flag(text, "overwrite") is expected


def test_overwrite_false_as_typed_does_not_delete_anything(tmp_path):
    _finished_run(tmp_path)
    with pytest.raises(RunDirectoryInUse):
        RunDirectory(tmp_path, SETTINGS, overwrite="false").claim()
    assert (tmp_path / "model.pt").is_file()


def test_a_flag_that_is_neither_true_nor_false_is_a_usage_error(tmp_path):
    from mammoclip_monai.utils import UsageError

    with pytest.raises(UsageError, match=r"--overwrite must be true or false, got 'ja'"):
        RunDirectory(tmp_path, SETTINGS, overwrite="ja")


def test_multiview_false_as_typed_selects_single_view_training():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "train.json"))
    parser["multiview"] = "false"  # what `--multiview false` puts there
    assert parser.get_parsed_content("image_keys") == ["image"]
    assert parser.get_parsed_content("loss_name") == "clip"


def test_run_finished_marks_the_record(tmp_path):
    from ignite.engine import Engine

    from mammoclip_monai.engines import RunFinished

    RunDirectory(tmp_path, SETTINGS).claim()
    engine = Engine(lambda e, b: None)
    RunFinished(tmp_path).attach(engine)
    engine.run([0, 1], max_epochs=2)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "finished" and record["epochs"] == 2 and record["settings"] == SETTINGS


def test_the_logs_of_a_run_are_protected_too(tmp_path):
    """A new run with its own --ckpt_dir but the default --output_dir would replace the other run's metrics."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.json").write_text("{}")
    guard = RunDirectory(tmp_path / "models", SETTINGS, outputs=("model.pt", str(logs / "metrics.json")))
    with pytest.raises(RunDirectoryInUse, match=r"metrics\.json.*--ckpt_dir DIR --output_dir DIR"):
        guard.claim()


def _shared_check_rank(rank: int, port: int, folders: list[str], results: str) -> None:
    import torch.distributed as dist

    from mammoclip_monai.engines.runs import DirectoryNotShared, check_shared_directory

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        check_shared_directory(folders[rank])
        outcome = "ok"
    except DirectoryNotShared as err:
        outcome = str(err)
    finally:
        dist.destroy_process_group()
    Path(results, f"rank{rank}.txt").write_text(outcome)


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "one_folder_per_rank"])
def test_every_rank_must_see_the_checkpoint_folder(tmp_path, shared):
    """Two gloo ranks: one folder passes; a folder per rank (a node-local ckpt_dir) fails on both, at once."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folders = [str(tmp_path / "models")] * 2 if shared else [str(tmp_path / "node0"), str(tmp_path / "node1")]
    mp.spawn(_shared_check_rank, args=(port, folders, str(tmp_path)), nprocs=2, join=True)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    if shared:
        assert outcomes == ["ok", "ok"]
        assert not list((tmp_path / "models").glob(".shared-check-*"))  # the marker is removed
    else:
        for outcome in outcomes:
            assert "ckpt_dir" in outcome and "rank 1 on" in outcome and "shared file system" in outcome
            assert "rank 0 on" not in outcome
