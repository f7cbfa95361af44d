"""Every command apps/monailabel/README.md prints works as written, from the repository root.

The project's rule (tests/test_docs_commands.py covers the main READMEs): a printed command runs as
written. This app runs in its own environment (``.ci/monailabel``), so its README is checked here:
the ``bash`` blocks are extracted from the Markdown and run in order with ``bash -c``, each one
verbatim except for the documented substitutions below (the example folders under /tmp become
folders of the test's tmp_path; port 8000 becomes a free port only if 8000 is taken). The
``monailabel start_server`` command runs in the background, is waited for and always stopped; the
answers of the ``curl`` commands are held to what the README shows (the scores' names, the JSON
shape). A command that no rule covers fails the test, so new README commands cannot slip through.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
README = REPO / "apps" / "monailabel" / "README.md"
MODEL = "mammoclip"
N_STUDIES = 2  # the README copies two synthetic DICOMs into the studies folder
STARTUP_TIMEOUT_S = 300.0
COMMAND_TIMEOUT_S = 300.0

EXAMPLE_FOLDERS = {  # README example folder -> folder under the test's tmp_path (same role)
    "/tmp/mammoclip-bundle": "bundle",
    "/tmp/mammo-synth": "synth",
    "/tmp/mammo-studies": "studies",
}
DOCUMENTED_PORT = 8000
PORT_FORMS = ("--port {port}", "127.0.0.1:{port}")  # where the README names the port; substituted only if taken

ELSEWHERE = {  # command prefix -> why this test does not run it
    ".ci/monailabel": "the CI script that builds .venv-monailabel and runs this test",
    ". .venv-monailabel/bin/activate": "this test runs inside that venv; its bin/ comes first on the commands' PATH",
}
RUN = ("mkdir -p ", "cp ", "python -c ", "mammoclip synth ")  # set-up commands: run, must exit 0
SERVER = "monailabel start_server "  # runs in the background until the test ends
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=\S")  # NAME=value: exported to the later commands
CURL = re.compile(r"""^curl -s (?:-X POST )?"?http://127\.0\.0\.1:\d+(/[^?"\s]*)""")  # answer checked by path


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of each ``bash`` block: ``\\`` continuations joined, comment and empty lines dropped.

    A command stays one line of shell text (``$(...)``, quotes, ``&&`` as written), since bash runs it."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines = [line.strip() for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def top_level_operators(command: str) -> list[str]:
    """The control operators of ``command`` outside quotes and ``$(...)``: ``a; b`` or ``a | b`` would let
    a second command ride along on the first one's rule."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    depth, found = 0, []
    for token in lexer:
        depth += token.count("(") - token.count(")")
        if depth == 0 and token and set(token) <= set(";|&"):
            found.append(token)
    return found


def plan(command: str) -> str:
    """``elsewhere``, ``run``, ``server``, ``assign`` or ``curl``: what the test does with one command.

    Every part of an ``a && b`` line must be covered by the same rule, so no command rides along."""
    operators = top_level_operators(command)
    parts = command.split(" && ")
    if set(operators) - {"&&"} or len(parts) != len(operators) + 1:
        raise AssertionError(f"{README.name}: no rule for the compound command {command!r} ({operators}): "
                             "write one command per line, or join set-up commands with ' && '")
    if any(command.startswith(prefix) for prefix in ELSEWHERE) and not operators:
        return "elsewhere"
    kinds = set()
    for part in parts:
        if part.startswith(RUN):
            kinds.add("run")
        elif part.startswith(SERVER):
            kinds.add("server")
        elif ASSIGNMENT.match(part):
            kinds.add("assign")
        elif CURL.match(part):
            kinds.add("curl")
        else:
            kinds.add(f"no rule for {part!r}")
    if len(kinds) != 1 or next(iter(kinds)).startswith("no rule") or (" && " in command and kinds != {"run"}):
        raise AssertionError(f"{README.name}: no rule for the command {command!r} ({sorted(kinds)}): "
                             "add one to apps/monailabel/tests/test_readme.py")
    return kinds.pop()


def shown_answer(text: str) -> dict[str, Any]:
    """The README's ``json`` block made valid JSON: its ``...`` elisions dropped (``{...}`` is ``{}``)."""
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "the README should show one JSON answer"
    return json.loads(re.sub(r",\s*\.\.\.", "", blocks[0]).replace("{...}", "{}"))


def output_names(bundle: Path) -> list[str]:
    """What the server must score, read independently of the app: metadata.json's output channel_def."""
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    return [channel_def[k] for k in sorted(channel_def, key=int)]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def substitute(command: str, folders: dict[str, Path], port: int) -> str:
    """The command with the documented substitutions only; no other /tmp path may be left."""
    rest = command
    for example, folder in folders.items():
        command = command.replace(example, os.fspath(folder))
        rest = rest.replace(example, "")
    assert "/tmp/" not in rest, f"a README folder under /tmp that EXAMPLE_FOLDERS does not substitute: {rest!r}"
    for form in PORT_FORMS:
        command = command.replace(form.format(port=DOCUMENTED_PORT), form.format(port=port))
    return command


def check_info(answer: Any, names: list[str], shown: dict[str, Any]) -> None:
    """``/info/``: the one classification model, its labels in the bundle's order, the two studies."""
    assert list(answer["models"]) == [MODEL]
    model = answer["models"][MODEL]
    assert model["type"] == "classification"
    assert model["labels"] == {name: i for i, name in enumerate(names)}
    assert answer["datastore"]["total"] == N_STUDIES


def check_infer(answer: Any, names: list[str], shown: dict[str, Any]) -> None:
    """``/infer/mammoclip``: the keys, score names and value types the README shows."""
    assert sorted(answer) == sorted(shown), "the README's answer shows other keys"
    assert list(answer["scores"]) == list(shown["scores"]) == names, "the README's score names"
    for key, value in shown.items():
        assert type(answer[key]) is type(value), key
    for name, score in answer["scores"].items():
        assert isinstance(score, float) and 0.0 <= score <= 1.0, (name, score)
    density = [score for name, score in answer["scores"].items() if name.startswith("density_")]
    assert density and sum(density) == pytest.approx(1.0, abs=1e-4), "the density classes are one soft-max"
    assert [sorted(p) for p in answer["prediction"]] == [sorted(shown["prediction"][0])] * len(names)
    assert answer["prediction"][0] | {"score": None} == shown["prediction"][0] | {"score": None}
    assert [(p["idx"], p["label"], p["score"]) for p in answer["prediction"]] == [
        (i, name, answer["scores"][name]) for i, name in enumerate(names)
    ]
    assert answer["label_names"] == {name: i for i, name in enumerate(names)}
    assert shown["label_names"].items() <= answer["label_names"].items()
    assert answer["centroids"] == shown["centroids"] == {}


ANSWER_CHECKS: dict[str, Callable[[Any, list[str], dict[str, Any]], None]] = {
    "/info/": check_info,
    f"/infer/{MODEL}": check_infer,
}


def test_every_readme_command_has_a_rule() -> None:
    """Cheap and server-less: a new README command without a rule fails here first."""
    text = README.read_text(encoding="utf-8")
    commands = [c for block in bash_blocks(text) for c in block]
    kinds = [plan(c) for c in commands]
    assert set(kinds) == {"elsewhere", "run", "server", "assign", "curl"}, kinds
    assert kinds.count("server") == 1
    for command, kind in zip(commands, kinds):
        if kind == "curl":
            assert CURL.match(command)[1] in ANSWER_CHECKS, f"no check of the answer of {command!r}"
    for example in EXAMPLE_FOLDERS:
        assert any(example in c for c in commands), f"EXAMPLE_FOLDERS names {example}, the README no longer does"
    shown_answer(text)


def run_bash(command: str, env: dict[str, str]) -> str:
    """One command as a user's shell runs it, from the repository root; its stdout."""
    result = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT_S)
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, f"{command}\n{result.stderr[-3000:]}"
    return result.stdout


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def wait_ready(process: subprocess.Popen, port: int, log: Path) -> None:
    """Until ``/info/`` answers JSON; fails at once if the server exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"the README's server exited with code {process.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/info/", timeout=5) as r:
                json.loads(r.read())
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the README's server did not answer after {STARTUP_TIMEOUT_S:.0f} s:\n{tail(log)}")
        time.sleep(1.0)


def stop(process: subprocess.Popen) -> None:
    """The server's own process group (started with start_new_session), by its id."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen]]:
    """Processes the README starts in the background: stopped at the end, also when the test fails."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for process in started:
            stop(process)


def test_readme_commands_run_as_written(tmp_path: Path, background: list[subprocess.Popen]) -> None:
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "monailabel").exists():
        pytest.fail(f"{venv_bin / 'monailabel'} not found: run in the MONAI Label venv (.ci/monailabel)")
    text = README.read_text(encoding="utf-8")
    shown = shown_answer(text)
    folders = {example: tmp_path / name for example, name in EXAMPLE_FOLDERS.items()}
    port = DOCUMENTED_PORT if port_is_free(DOCUMENTED_PORT) else free_port()
    # what `. .venv-monailabel/bin/activate` does for the commands: this venv's python, mammoclip, monailabel
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
               VIRTUAL_ENV=os.fspath(venv_bin.parent), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log = tmp_path / "server.log"
    ran: dict[str, int] = {}
    for command in [c for block in bash_blocks(text) for c in block]:
        kind = plan(command)
        ran[kind] = ran.get(kind, 0) + 1
        if kind == "elsewhere":
            continue
        command = substitute(command, folders, port)
        if kind == "run":
            run_bash(command, env)
        elif kind == "assign":
            name = ASSIGNMENT.match(command)[1]
            env[name] = run_bash(f'{command}\nprintf %s "${name}"', env)
            assert env[name], f"{command} set {name} to nothing"
        elif kind == "server":
            assert port_is_free(port), f"port {port} was taken before the README's server started"
            with open(log, "wb") as out:
                background.append(subprocess.Popen(["bash", "-c", command], cwd=REPO, env=env, stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True))
            wait_ready(background[-1], port, log)
        else:  # curl: the answer as the README shows it
            path = CURL.match(command)[1]
            check = ANSWER_CHECKS.get(path)
            assert check is not None, f"no check of the answer of {command!r}: add one to ANSWER_CHECKS"
            output = run_bash(command, env)
            try:
                answer = json.loads(output)
            except json.JSONDecodeError:
                pytest.fail(f"{command} answered no JSON: {output[:500]!r}\n{tail(log)}")
            check(answer, output_names(folders["/tmp/mammoclip-bundle"]), shown)
    assert ran.get("server") == 1 and ran.get("curl", 0) >= 2, ran
    assert len(list(folders["/tmp/mammo-studies"].glob("*.dicom"))) == N_STUDIES
