"""The training bundle as users run it: metadata, properties, the CLI command, resume, torchrun."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

pytestmark = pytest.mark.slow  # subprocess trainings (bundle runs, torchrun): seconds to minutes each

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
TRAIN = CONFIGS / "train.json"
SCHEMA = Path(__file__).parent / "data" / "meta_schema_20240725.json"


def tiny_overrides(dataset_dir: Path, out: Path, **extra) -> dict:
    """Small images, few epochs, a capped datalist: the real configs at test scale."""
    overrides = {
        "dataset_dir": str(dataset_dir), "ckpt_dir": str(out / "models"), "output_dir": str(out / "logs"),
        "image_size": [96, 64], "max_epochs": 2, "batch_size": 4,
        "train#datalist": "$mammoclip_monai.data.datalists.group_views(@train#datalist_by_image)[:12]",
    }
    overrides.update(extra)
    return overrides


def cli_args(overrides: dict) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return args


def test_metadata_verifies_offline():
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
                             str(CONFIGS / "metadata.json"), "--filepath", str(SCHEMA)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_no_prompt_text_or_hash_inside_config_strings():
    """MONAI rewrites '#' in config strings: only reference separators may contain it."""
    for path in CONFIGS.glob("*.json"):
        def walk(node):
            if isinstance(node, dict):
                for value in node.values():
                    yield from walk(value)
            elif isinstance(node, list):
                for value in node:
                    yield from walk(value)
            elif isinstance(node, str):
                yield node
        for text in walk(json.loads(path.read_text())):
            stripped = re.sub(r"@[\w#]+", "", text)
            assert "#" not in stripped, f"{path.name}: {text!r}"


def test_train_config_is_property_complete(synthetic_dataset, tmp_path):
    workflow = ConfigWorkflow(config_file=str(TRAIN), workflow_type="train", meta_file=str(CONFIGS / "metadata.json"),
                              logging_file=str(CONFIGS / "logging.conf"), **tiny_overrides(synthetic_dataset, tmp_path))
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    for required in ("training", "run", "initialize"):
        assert workflow.parser.get(required) is not None


def collect_losses(workflow: ConfigWorkflow) -> list[float]:
    losses: list[float] = []
    workflow.trainer.add_event_handler(Events.ITERATION_COMPLETED,
                                       lambda e: losses.append(float(e.state.output["loss"])))
    return losses


@pytest.mark.parametrize("augment_on_device", [False, True], ids=["loader_augmentation", "device_augmentation"])
def test_resumed_run_continues_the_same_loss_curve(synthetic_dataset, tmp_path, augment_on_device):
    extra = {"augment_on_device": augment_on_device}
    straight = ConfigWorkflow(config_file=str(TRAIN), workflow_type="train", run_id="training",
                              **tiny_overrides(synthetic_dataset, tmp_path / "a", **extra))
    straight.initialize()
    full = collect_losses(straight)
    straight.run()

    # the same run, interrupted after its first epoch (its checkpoint is written before the stop)
    first = ConfigWorkflow(config_file=str(TRAIN), workflow_type="train", run_id="training",
                           **tiny_overrides(synthetic_dataset, tmp_path / "b", **extra))
    first.initialize()
    part1 = collect_losses(first)
    first.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())
    first.run()
    resumed = ConfigWorkflow(config_file=str(TRAIN), workflow_type="train", run_id="training",
                             **tiny_overrides(synthetic_dataset, tmp_path / "b", resume="auto", **extra))
    resumed.initialize()
    part2 = collect_losses(resumed)
    if augment_on_device:
        assert resumed.trainer.batch_transform is not None
        assert not any(type(t).__name__ == "RandMammoAugmentd" for t in resumed.parser.get_parsed_content(
            "train#preprocessing").transforms)
    resumed.run()
    assert len(full) == len(part1) + len(part2) and len(part2) > 0
    assert part1 == pytest.approx(full[: len(part1)], abs=1e-6)
    assert part2 == pytest.approx(full[len(part1):], abs=1e-5)
    history = json.loads((tmp_path / "b" / "logs" / "metrics.json").read_text())["history"]
    assert [e["epoch"] for e in history] == [1, 2]


def test_training_command_writes_model_logs_and_metrics(synthetic_dataset, tmp_path):
    overrides = tiny_overrides(synthetic_dataset, tmp_path, max_epochs=1)
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                             "bundle/configs/train.json", *cli_args(overrides)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "last.pt").is_file()
    state = torch.load(models / "model.pt", weights_only=True)
    assert "logit_scale" in state and not any(k.startswith("module.") for k in state)
    assert (models / "pretrained" / "model.safetensors").is_file()
    record = json.loads((models / "run.json").read_text())  # the folder now belongs to this finished run
    assert record["status"] == "finished" and record["epochs"] == 1 and record["settings"]["image_size"] == [96, 64]
    metrics = json.loads((tmp_path / "logs" / "metrics.json").read_text())
    assert metrics["history"][0]["epoch"] == 1 and "val_zs_auroc_mass" in metrics["history"][0]
    assert "test_zs_auroc_mass" in metrics["test"] and "test_i2t_recall1" in metrics["test"]
    assert list((tmp_path / "logs" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_single_view_training_command(synthetic_dataset, tmp_path, loss_name):
    """``--multiview False`` (one image per sample; the data still has a second text) with each single-view
    loss; SigLIP's learnable bias is the model's: the bundle's optimiser trains it and model.pt keeps it."""
    overrides = tiny_overrides(synthetic_dataset, tmp_path, max_epochs=1,
                               **{"train#datalist": "$@train#datalist_by_image[:8]"})
    # "False", not "false": Fire hands a lower-case false over as the string 'false'
    extra = ["--multiview", "False"] + (["--loss_name", "siglip"] if loss_name == "siglip" else [])
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                             "bundle/configs/train.json", *cli_args(overrides), *extra],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    if loss_name == "siglip":
        assert state["logit_bias"].item() != -10.0  # initial -10: one optimiser step with lr > 0 moved it
        from mammoclip_monai.networks import MammoCLIP

        pretrained = MammoCLIP.from_pretrained(tmp_path / "models" / "pretrained")
        assert pretrained.config.logit_bias_init == -10.0
        assert pretrained.logit_bias.item() == pytest.approx(state["logit_bias"].item())
    else:
        assert "logit_bias" not in state


def test_siglip_bias_is_in_the_bundles_optimiser():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser["loss_name"] = "siglip"
    network, optimizer = parser.get_parsed_content("network"), parser.get_parsed_content("optimizer")
    loss = parser.get_parsed_content("loss")
    assert not list(loss.parameters())
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(network.logit_bias) in optimised
    before = network.logit_bias.item()
    features = torch.nn.functional.normalize(torch.randn(4, network.config.embed_dim), dim=-1)
    loss(features, features.roll(1, 0), network.get_logit_scale(), network.logit_bias).backward()
    optimizer.step()
    assert network.logit_bias.item() != before


def test_configs_normalise_as_the_model_config_says():
    """Training, validation and the probe/FActOR chains take NormalizeMammogramd from @network_def.config."""
    from monai.bundle import ConfigParser

    from mammoclip_monai.data.transforms import NormalizeMammogramd

    for extra in ([], [CONFIGS / "linear_probe.json"]):
        parser = ConfigParser()
        parser.read_config([str(TRAIN), *map(str, extra)])
        parser["network_def#image_normalization"] = {"mode": "breast", "foreground": 0.1}
        keys = ["train#preprocessing", "validate#preprocessing"] if not extra else ["probe#preprocessing"]
        for key in keys:
            last = parser.get_parsed_content(key).transforms[-1]
            assert isinstance(last, NormalizeMammogramd), key
            assert (last.mode, last.foreground) == ("breast", 0.1), key


def test_torchrun_two_cpu_processes(synthetic_dataset, tmp_path):
    overrides = tiny_overrides(synthetic_dataset, tmp_path, max_epochs=1)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    configs = "['bundle/configs/train.json','bundle/configs/multi_gpu_train.json']"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(torchrun + ["-m", "monai.bundle", "run", "training", "--config_file", configs,
                                        *cli_args(overrides)], cwd=REPO, capture_output=True, text=True,
                            timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "models" / "last.pt").is_file()
    state = torch.load(tmp_path / "models" / "last.pt", weights_only=True)
    assert state["trainer"]["iteration"] >= 1
    assert "test" in json.loads((tmp_path / "logs" / "metrics.json").read_text())


@pytest.mark.parametrize("name", ["paper_b5", "paper_b2"])
def test_paper_preset_override_files(name):
    """The override files select the preset and the original hyper-parameters (hub weights not needed to parse)."""
    from monai.bundle import ConfigParser

    from mammoclip_monai.networks import get_preset

    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(CONFIGS / f"{name}.json")])
    assert parser["preset"] == name and parser["network_def"]["name_or_path"] == "@preset"
    assert list(parser["image_size"]) == list(get_preset(name).image_size) == [1520, 912]
    assert parser["learning_rate"] == 5e-5 and parser["weight_decay"] == 1e-4 and parser["amp"] is True
    assert parser.get_parsed_content("max_epochs") == 15
    assert parser["augment_on_device"] is True  # the loader only reads; the GPU augments the batch
