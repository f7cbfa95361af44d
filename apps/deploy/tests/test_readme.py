"""Every command apps/deploy/README.md prints works as written, from the repository root.

The project's rule (tests/test_docs_commands.py covers the main READMEs): a printed command runs as
written. The MONAI Deploy app runs in its own environment (``.ci/deploy``), so its README is checked
here: the ``bash`` blocks are extracted from the Markdown and run in order with ``bash -c``, each one
verbatim except for the documented substitutions of ``EXAMPLE_FOLDERS`` (the README's example
folders under /tmp become folders of the test's tmp_path).

The README's set-up writes ``bundle/models/model.pt`` and ``model.ts``, where a user's trained model
lives, so the commands do not run in this checkout but in a copy of the parts they read
(``CHECKOUT_PARTS``; the library comes from the venv), and the test checks that the checkout's
``bundle/models`` is left as it was. What the commands produce is held to what the README says: one
Basic Text SR per study, without patient identifiers, and a printed report whose image blocks have
the shape the README shows (label, SOP Instance UID, ``finding: 0.dddd`` lines in the model's order).
A second run of the set-up keeps the existing ``model.pt``, as the README promises. A command that no
rule covers fails the test, so new README commands cannot slip through.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("MAMMOCLIP_REQUIRE_DEPLOY") == "1":
    import monai.deploy  # noqa: F401  (.ci/deploy: a missing SDK is a failure, never a skip)
else:
    pytest.importorskip("monai.deploy", reason="needs monai-deploy-app-sdk (run .ci/deploy)")
pydicom = pytest.importorskip("pydicom")
from pydicom.misc import is_dicom  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
README = REPO / "apps" / "deploy" / "README.md"
CI_SCRIPT = REPO / ".ci" / "deploy"
COMMAND_TIMEOUT_S = 600.0
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")

CHECKOUT_PARTS = ("bundle/configs", "apps/deploy")
"""What the README's commands read from the repository root; the copy holds only these (plus the
``bundle/models`` the commands write), so a command that starts to need another file fails here."""

EXAMPLE_FOLDERS = {  # README example folder -> folder under the test's tmp_path (same role)
    "/tmp/deploy-synth": "synth",
    "/tmp/deploy-sr": "sr",
}
HOLOSCAN_VARIABLES = ("HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH", "HOLOSCAN_MODEL_PATH")
"""Dropped from the commands' environment: the README's ``-i``/``-o``/``-m`` alone say where to read and write."""

ELSEWHERE = {  # command prefix -> why this test does not run it
    "python3 -m venv .venv-deploy": ".ci/deploy makes this virtual environment and runs this test in it",
    ". .venv-deploy/bin/activate": "this test runs inside that venv; its bin/ comes first on the commands' PATH",
    "pip install ": ".ci/deploy installs the same packages (test_readme_install_is_what_ci_installs)",
}
RUN = ("mkdir -p ", "python -m monai.bundle ckpt_export ", "mammoclip synth ")  # set-up: must exit 0
WEIGHTS = "torch.save("  # a `python -c` that writes bundle/models/model.pt: must keep an existing one
APP = ("python apps/deploy/app.py ", "python apps/deploy ")  # the app: its SR files are checked
SHOW = ".TextValue"  # a `python -c` that prints the SR's text: held to the README's example block
RERUN = ("mkdir -p ", "mammoclip synth ")  # set-up run a second time (with the WEIGHTS command)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(info string, content)`` of every fenced block, indented ones (inside a list item) dedented."""
    blocks, info, lines = [], None, []
    for line in text.splitlines():
        fence = line.strip()
        if info is None and fence.startswith("```"):
            info, lines, indent = fence[3:].strip(), [], len(line) - len(line.lstrip())
        elif info is not None and fence == "```":
            blocks.append((info, "\n".join(lines) + "\n"))
            info = None
        elif info is not None:
            lines.append(line[indent:] if line[:indent].strip() == "" else line)
    assert info is None, "an unclosed fenced block in the README"
    return blocks


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of each ``bash`` block: ``\\`` continuations joined, comment and empty lines dropped.

    A command stays one line of shell text (quotes as written), since bash runs it; joining
    ``\\``-newline with a space is what bash does outside quotes and harmless inside them here."""
    commands = []
    for info, block in fenced_blocks(text):
        if info == "bash":
            lines = [line.strip() for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines()]
            commands.append([line for line in lines if line and not line.startswith("#")])
    return commands


def readme_commands() -> list[str]:
    return [command for block in bash_blocks(README.read_text(encoding="utf-8")) for command in block]


def control_operators(command: str) -> list[str]:
    """``;``, ``|``, ``&&`` ... of ``command`` outside quotes: one would let a second command ride
    along on the first one's rule."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return [token for token in lexer if token and set(token) <= set(";|&()")]


def plan(command: str) -> str:
    """``elsewhere``, ``run``, ``weights``, ``app`` or ``show``: what the test does with one command."""
    operators = control_operators(command)
    if operators:
        raise AssertionError(f"{README.name}: no rule for the compound command {command!r} ({operators}): "
                             "write one command per line")
    if command.startswith(tuple(ELSEWHERE)):
        return "elsewhere"
    if command.startswith(RUN):
        return "run"
    if command.startswith("python -c ") and WEIGHTS in command:
        return "weights"
    if command.startswith(APP):
        return "app"
    if command.startswith("python -c ") and SHOW in command:
        return "show"
    raise AssertionError(f"{README.name}: no rule for the command {command!r}: "
                         "add one to apps/deploy/tests/test_readme.py")


def shown_report(text: str) -> dict:
    """The README's example SR text (the fenced block that starts with ``Image 1:``): the label, the
    UID prefix, the finding names it shows before ``...`` and the number of decimals."""
    examples = [block.strip().splitlines() for info, block in fenced_blocks(text)
                if not info and block.lstrip().startswith("Image 1:")]
    assert len(examples) == 1, "the README should show one example report block (Image 1: ...)"
    lines = examples[0]
    uid = lines[1].removeprefix("SOP Instance UID: ")
    assert uid != lines[1] and uid.endswith("..."), lines[1]
    assert lines[-1] == "...", "the example block ends with '...'"
    findings = [line.split(": ", 1) for line in lines[2:-1]]
    decimals = {len(value.split(".", 1)[1]) for _, value in findings}
    assert len(decimals) == 1, f"the example's numbers disagree on their format: {findings}"
    return {"label": lines[0].split(": ", 1)[1], "uid_prefix": uid.removesuffix("..."),
            "names": [name for name, _ in findings], "decimals": decimals.pop()}


def output_names(checkout: Path) -> list[str]:
    """What the report must list, read independently of the app: metadata.json's output channel_def."""
    metadata = json.loads((checkout / "bundle" / "configs" / "metadata.json").read_text(encoding="utf-8"))
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    return [channel_def[key] for key in sorted(channel_def, key=int)]


def substitute(command: str, folders: dict[str, Path]) -> str:
    """The command with the documented substitutions only; no other /tmp path may be left."""
    rest = command
    for example, folder in folders.items():
        command = command.replace(example, os.fspath(folder))
        rest = rest.replace(example, "")
    assert "/tmp/" not in rest, f"a README folder under /tmp that EXAMPLE_FOLDERS does not substitute: {rest!r}"
    return command


def option(command: str, flag: str) -> Path:
    """The value of ``flag`` in the (substituted) app command."""
    words = shlex.split(command)
    assert flag in words, f"{command!r} has no {flag}"
    return Path(words[words.index(flag) + 1])


def snapshot(folder: Path) -> dict[str, str]:
    """``{file: sha256}`` of a folder (empty when it does not exist): the checkout's bundle/models."""
    if not folder.exists():
        return {}
    return {os.fspath(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_checkout(root: Path) -> Path:
    """A stand-in repository root holding ``CHECKOUT_PARTS`` (no tests, no caches)."""
    for part in CHECKOUT_PARTS:
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    assert not (root / "bundle" / "models").exists()
    return root


def run_bash(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """One command as a user's shell runs it, from the (stand-in) repository root."""
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT_S)
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, f"{command}\n{result.stderr[-3000:]}"
    return result


def check_sr_files(input_dir: Path, output_dir: Path) -> None:
    """One Basic Text SR per input study, filed under its Study Instance UID, no patient identifiers."""
    studies = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID
               for p in input_dir.rglob("*") if p.is_file() and is_dicom(p)}
    assert studies, f"no DICOM input in {input_dir}"
    reports = [pydicom.dcmread(p) for p in sorted(output_dir.glob("*.dcm"))]
    assert sorted(sr.StudyInstanceUID for sr in reports) == sorted(studies), "expected one SR per study"
    for sr in reports:
        assert sr.SOPClassUID == BASIC_TEXT_SR and sr.Modality == "SR"
        for keyword in PATIENT_KEYWORDS:
            assert not str(sr.get(keyword) or ""), f"{keyword} written to the SR"  # the value is not shown


def check_report(printed: str, shown: dict, names: list[str], input_dir: Path) -> None:
    """The printed SR text has the README's image blocks: ``Image n: <side> <view>``, the SOP Instance
    UID of an input image, then every finding of the model, in order, as ``name: 0.dddd``."""
    number = re.compile(rf"^\d\.\d{{{shown['decimals']}}}$")
    assert re.fullmatch(r"[LR] [A-Z]+", shown["label"]), f"the README's label {shown['label']!r}"
    assert names[:len(shown["names"])] == shown["names"], "the README's finding names are not the model's"
    by_study: dict[str, set[str]] = {}
    for path in input_dir.rglob("*"):
        if path.is_file() and is_dicom(path):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            by_study.setdefault(ds.StudyInstanceUID, set()).add(ds.SOPInstanceUID)
    blocks = [b.strip().splitlines() for b in printed.split("\n\n") if b.strip().startswith("Image ")]
    assert blocks, f"no 'Image n:' block in the printed text:\n{printed}"
    for index, lines in enumerate(blocks, start=1):
        assert re.fullmatch(rf"Image {index}: [LR] [A-Z]+", lines[0]), lines[0]
        uid = lines[1].removeprefix("SOP Instance UID: ")
        assert uid != lines[1] and re.fullmatch(r"[0-9.]+", uid), lines[1]
        assert uid.startswith(shown["uid_prefix"]), f"{uid} does not start like the README's {shown['uid_prefix']}"
        findings = [line.split(": ", 1) for line in lines[2:]]
        assert [name for name, _ in findings] == names, lines
        for name, value in findings:
            assert number.match(value) and 0.0 <= float(value) <= 1.0, f"{name}: {value}"
    uids = {lines[1].removeprefix("SOP Instance UID: ") for lines in blocks}
    assert uids in by_study.values(), "the report's images are not the images of one input study"


def test_every_readme_command_has_a_rule() -> None:
    """Cheap and app-less: a new README command without a rule fails here first."""
    commands = readme_commands()
    kinds = [plan(command) for command in commands]
    assert set(kinds) == {"elsewhere", "run", "weights", "app", "show"}, kinds
    assert kinds.index("weights") < commands.index(next(c for c in commands if "ckpt_export" in c)), (
        "the README makes model.pt after exporting it")
    for example in EXAMPLE_FOLDERS:
        assert any(example in command for command in commands), (
            f"EXAMPLE_FOLDERS names {example}, the README no longer does")
    shown_report(README.read_text(encoding="utf-8"))


def test_readme_install_is_what_ci_installs() -> None:
    """The README's ``pip install`` is run elsewhere: .ci/deploy must install (at least) the same."""
    readme = [c for c in readme_commands() if c.startswith("pip install ")]
    ci = [line.strip() for line in CI_SCRIPT.read_text(encoding="utf-8").splitlines()
          if re.match(r"\s*(python -m )?pip install ", line) and "--upgrade pip" not in line]
    assert len(readme) == 1 and len(ci) == 1, (readme, ci)
    wanted = shlex.split(readme[0])[2:]
    installed = shlex.split(ci[0])
    pairs = {tuple(installed[i:i + 2]) for i in range(len(installed) - 1)}
    for i, word in enumerate(wanted):
        if word == "-e":
            assert ("-e", wanted[i + 1]) in pairs, f".ci/deploy does not install -e {wanted[i + 1]}"
        elif i == 0 or wanted[i - 1] != "-e":
            assert word in installed, f".ci/deploy does not install {word}"


def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "mammoclip").exists():
        pytest.fail(f"{venv_bin / 'mammoclip'} not found: run in the deploy venv (.ci/deploy)")
    text = README.read_text(encoding="utf-8")
    shown = shown_report(text)
    checkout = make_checkout(tmp_path / "checkout")
    folders = {example: tmp_path / name for example, name in EXAMPLE_FOLDERS.items()}
    # what `. .venv-deploy/bin/activate` does for the commands: this venv's python and mammoclip
    env = {k: v for k, v in os.environ.items() if k not in HOLOSCAN_VARIABLES}
    env.update(PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=os.fspath(venv_bin.parent),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    repo_models = snapshot(REPO / "bundle" / "models")
    ran: dict[str, int] = {}
    rerun: list[str] = []
    app_dirs: tuple[Path, Path] | None = None
    printed = None
    for command in readme_commands():
        kind = plan(command)
        ran[kind] = ran.get(kind, 0) + 1
        if kind == "elsewhere":
            continue
        command = substitute(command, folders)
        result = run_bash(command, checkout, env)
        if kind == "weights" or command.startswith(RERUN):
            rerun.append(command)
        if kind == "app":
            app_dirs = option(command, "-i"), option(command, "-o")
            check_sr_files(*app_dirs)
        elif kind == "show":
            printed = result.stdout
    assert ran.get("app") == 1 and ran.get("show") == 1 and ran.get("weights") == 1, ran
    assert app_dirs is not None and printed is not None
    check_report(printed, shown, output_names(checkout), app_dirs[0])

    models = checkout / "bundle" / "models"
    assert {"model.pt", "model.ts"} <= set(snapshot(models)), sorted(snapshot(models))
    made = snapshot(models)
    for command in rerun:  # the set-up again, as a user who already has a model.pt runs it
        run_bash(command, checkout, env)
    assert snapshot(models) == made, "a second run of the README's set-up replaced bundle/models/model.pt"
    assert snapshot(REPO / "bundle" / "models") == repo_models, "the test touched the checkout's bundle/models"
