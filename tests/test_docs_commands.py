"""Every command the READMEs print works as written, from the repository root.

The commands are extracted from the Markdown (``bash`` blocks of README.md and bundle/docs/README.md) and
each one is either run verbatim in a copy of the bundle (placeholders such as ``path/to/folder`` replaced
by real synthetic images; a tiny model stands in for a trained one) or, when it trains for minutes or hours,
checked to parse: its config files exist and every ``--key`` it sets is a key of the merged config (MONAI
would silently add a mistyped key). A command that no rule covers fails the test, so new documentation
cannot slip through untested. The apps' READMEs run in their own environments (.ci/monailabel, .ci/deploy).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "bundle/docs/README.md")
INFERENCE_SIZE = (448, 288)  # inference.json's image_size: the tiny model the commands load is built at it


def documented_commands(doc: str) -> list[str]:
    """The shell commands of the ``bash`` blocks of ``doc``: continuation lines joined, comments dropped,
    ``a && b`` split into its parts."""
    text = (REPO / doc).read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            part: list[str] = []
            for word in [*words, "&&"]:
                if word == "&&":
                    if part:
                        commands.append(shlex.join(part))
                    part = []
                else:
                    part.append(word)
    return commands


ELSEWHERE = {
    "python3 -m venv": ".ci/run makes this fresh virtual environment",
    ". .venv/bin/activate": ".ci/run activates it",
    "pip install": ".ci/run installs exactly this",
    "python -m pytest": "this suite",
    "python apps/deploy/app.py": ".ci/deploy runs the MONAI Deploy app end to end",
}
LONG = {  # trains, or reads the 800 default images: checked to parse
    "python -m monai.bundle run training": "trains a model (minutes to hours)",
    "torchrun": "trains on two processes",
    "mammoclip data-efficiency": "trains 18 probes and fine-tunings",
}


def plan(command: str) -> str:
    """``"run"``, ``"parse"`` or ``"elsewhere"`` for one documented command."""
    if any(command.startswith(prefix) for prefix in ELSEWHERE):
        return "elsewhere"
    if any(command.startswith(prefix) for prefix in LONG):
        return "parse"
    words = shlex.split(command)
    if words[:4] == ["python", "-m", "monai.bundle", "run"]:
        configs = words[words.index("--config_file") + 1]
        if "evaluate.json" in configs or "--input" not in words:
            return "parse"  # a trained model over the default dataset's 800 images
        return "run"
    if words[:3] == ["python", "-m", "monai.bundle"] or words[0] == "mammoclip":
        return "run"
    raise AssertionError(f"no rule for the documented command {command!r}: add one to tests/test_docs_commands.py")


ALL = [(doc, command) for doc in DOCS for command in documented_commands(doc)]
UNIQUE = list({command: doc for doc, command in reversed(ALL)}.items())  # (command, first doc printing it)


def test_the_docs_print_commands():
    assert len(ALL) >= 20 and {plan(c) for _, c in ALL} == {"run", "parse", "elsewhere"}


# ----------------------------------------------------------------------------- parse checks
def bundle_arguments(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """(config files, ``--key value`` overrides) of a ``monai.bundle`` command line."""
    start = words.index("run") + 1
    rest = words[start:]
    if rest and not rest[0].startswith("--"):
        rest = rest[1:]  # the run id
    options = dict(zip(rest[::2], rest[1::2]))
    files = options.pop("--config_file")
    configs = json.loads(files.replace("'", '"')) if files.startswith("[") else [files]
    return configs, {key[2:]: value for key, value in options.items()}


@pytest.mark.parametrize("command, doc", [(c, d) for c, d in UNIQUE if plan(c) == "parse"])
def test_long_commands_parse(command, doc):
    from monai.bundle import ConfigParser

    from mammoclip_monai import cli

    words = shlex.split(command)
    if words[0] == "mammoclip":
        cli.build_parser().parse_args(words[1:])
        return
    if words[0] == "torchrun":
        words = words[words.index("-m") + 1:]
        words = ["python", "-m", *words]
    configs, overrides = bundle_arguments(words)
    for config in configs:
        assert (REPO / config).is_file(), f"{doc}: {command}: {config} does not exist"
    parser = ConfigParser()
    parser.read_config([str(REPO / c) for c in configs])
    for key in overrides:
        assert key in parser, f"{doc}: {command}: --{key} is not a key of {configs}"
    assert parser.get("training") is not None or parser.get("run") is not None


# ----------------------------------------------------------------------------- verbatim runs
@pytest.fixture(scope="module")
def checkout(synthetic_dataset, tmp_path_factory) -> dict[str, Path]:
    """A copy of the bundle configs with a tiny model standing in for a trained one, and a few images."""
    from mammoclip_monai.interpret.factor import FActOR
    from mammoclip_monai.interpret.features import FeatureMapExtractor
    from mammoclip_monai.networks import create_model

    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(REPO / "bundle" / "configs", root / "bundle" / "configs")
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, image_size=INFERENCE_SIZE).eval()
    models = root / "bundle" / "models"
    models.mkdir()
    torch.save(model.state_dict(), models / "model.pt")
    model.save_pretrained(models / "pretrained")
    layer = "model.blocks.5"
    fmap = FeatureMapExtractor(model.image_encoder, layer)(torch.zeros(1, 1, *INFERENCE_SIZE))
    factor = FActOR(["mass", "calcification"], fmap.shape[-2:], model.config.embed_dim, channels=fmap.shape[1],
                    layer=layer)
    (root / "bundle" / "eval" / "factor").mkdir(parents=True)
    torch.save(factor.state_dict(), root / "bundle" / "eval" / "factor" / "factor.pt")
    from mammoclip_monai.detection import MammoDetector

    detector = MammoDetector(model.image_encoder, fpn_channels=16, model_config=model.config.to_dict())
    detector.save_pretrained(root / "bundle" / "eval" / "detection" / "mammoclip_100pct" / "pretrained")
    images = root / "images"
    images.mkdir()
    for source in sorted((synthetic_dataset / "images").rglob("*.dicom"))[:2]:
        shutil.copy(source, images / source.name)
    (root / "list.csv").write_text("image\n" + "".join(f"images/{p.name}\n" for p in sorted(images.iterdir())))
    (root / "my_prompts.json").write_text(json.dumps({"mass": ["no mass", "mass"]}))
    return {"root": root, "images": images}


PLACEHOLDERS = {"path/to/folder_or.csv": "images", "path/to/folder": "images", "path/to/images": "images",
                "/tmp/mammo-synth": "synth", "/tmp/mammo-cache": "cache"}  # example folders: kept in the copy


def verbatim(command: str, root: Path) -> list[str]:
    """The command's words with placeholders replaced; ``mammoclip`` is the console script installed here."""
    words = [PLACEHOLDERS.get(w, w) for w in shlex.split(command)]
    if words[0] == "mammoclip":
        script = Path(sys.executable).parent / "mammoclip"
        words[0] = str(script) if script.exists() else shutil.which("mammoclip")
    elif words[0] == "python":
        words[0] = sys.executable
    return words


def outputs(words: list[str], root: Path) -> list[Path]:
    """What a command promises to write (its --out / --output_dir / --filepath)."""
    found = []
    for flag in ("--out", "--output_dir", "--filepath"):
        if flag in words:
            found.append(root / words[words.index(flag) + 1])
    return found


@pytest.mark.slow
@pytest.mark.parametrize("command, doc", [(c, d) for c, d in UNIQUE if plan(c) == "run"])
def test_quick_commands_run_verbatim(command, doc, checkout):
    root = checkout["root"]
    words = verbatim(command, root)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(words, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{doc}: {command}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, f"{doc}: {command}\n{result.stderr[-3000:]}"
    for path in outputs(words, root):
        assert path.exists(), f"{doc}: {command}: {path} was not written"


# ----------------------------------------------------------------------------- Python examples
def documented_python(doc: str) -> list[str]:
    """The ``python`` blocks of ``doc``, in order."""
    return re.findall(r"```python\n(.*?)```", (REPO / doc).read_text(encoding="utf-8"), re.S)


def test_the_readme_opens_with_the_front_door():
    first = documented_python("README.md")[0]
    assert "create_model_and_transforms" in first and "import mammoclip_monai" in first


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(documented_python("README.md"))))
def test_python_examples_run(index, checkout):
    """Each Python block of README.md runs as printed (blocks share names, as in one session: earlier
    blocks run first), with the placeholder paths pointing at real synthetic images."""
    root = checkout["root"]
    image = next(iter(sorted(checkout["images"].iterdir())))
    blocks = documented_python("README.md")[: index + 1]
    source = "\n".join(blocks).replace("path/to/file.dcm", str(image)).replace("path/to/folder", "images")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", source], cwd=root, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, f"README.md python block {index + 1}:\n{result.stderr[-3000:]}"
