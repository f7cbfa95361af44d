"""Atomic writes: no truncated file behind a final name, no temporary file left by a failed or killed writer."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mammoclip_monai.utils import files
from mammoclip_monai.utils.files import (
    atomic_path,
    atomic_torch_save,
    atomic_write_text,
    remove_stale_temporaries,
    temporary_name,
)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text("old", target)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert _temporaries(tmp_path) == []


def test_a_failing_torch_save_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    atomic_torch_save({"w": torch.ones(3)}, target)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_torch_save({"w": torch.zeros(3), "bad": lambda: None}, target)  # lambdas do not pickle
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    assert _temporaries(tmp_path) == []


def test_stale_temporaries_of_dead_writers_are_removed_by_the_next_save(tmp_path):
    target = tmp_path / "last.pt"
    dead = _dead_pid()
    stale = [tmp_path / f".last.pt.tmp-{files._HOST}-{dead}", tmp_path / f".last.pt.tmp-{dead}"]  # new and old naming
    alive = tmp_path / f".last.pt.tmp-{files._HOST}-{os.getppid()}"  # a writer that still runs
    other_host = tmp_path / f".last.pt.tmp-elsewhere-{dead}"  # maybe alive on a shared file system
    other_file = tmp_path / f".model.pt.tmp-{files._HOST}-{dead}"  # another target's: its own save cleans it
    for path in [*stale, alive, other_host, other_file]:
        path.write_bytes(b"x" * 100)
    atomic_torch_save({"w": torch.ones(2)}, target)
    left = _temporaries(tmp_path)
    assert left == sorted([alive.name, other_host.name, other_file.name])
    assert remove_stale_temporaries(tmp_path / "model.pt") == [other_file]


def test_the_rename_is_made_durable_by_syncing_the_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    monkeypatch.setattr(files, "fsync_directory", lambda folder: synced.append(os.fspath(folder)))
    atomic_write_text("x", tmp_path / "sub" / "a.txt")
    assert synced == [os.fspath(tmp_path / "sub")]


WRITER = """
import sys, torch
from mammoclip_monai.utils.files import atomic_torch_save
big = torch.arange(4_000_000, dtype=torch.float32)  # 16 MB: a write takes a while
print("ready", flush=True)
i = 0
while True:
    i += 1
    atomic_torch_save({"i": torch.tensor(i), "w": big}, sys.argv[1])
"""


def test_kills_during_checkpoint_writes_never_leave_a_truncated_checkpoint(tmp_path):
    """SIGKILL a writer mid-loop several times: the checkpoint always loads, and the next save cleans up."""
    target = tmp_path / "last.pt"
    atomic_torch_save({"i": torch.tensor(0), "w": torch.zeros(1)}, target)
    delays = [0.05, 0.13, 0.31]
    for delay in delays:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        state = torch.load(target, weights_only=True)  # old or new, never truncated
        assert int(state["i"]) >= 0
    atomic_torch_save({"i": torch.tensor(-1), "w": torch.zeros(1)}, target)
    assert _temporaries(tmp_path) == []
    assert int(torch.load(target, weights_only=True)["i"]) == -1


STALLED_WRITER = """
import sys, time, torch
import mammoclip_monai.utils.files as files
real_save = torch.save
def stalled_save(obj, handle):
    real_save(obj, handle)
    handle.flush()
    print("inside the write", flush=True)  # written, not yet renamed: the worst moment to die
    time.sleep(120)
torch.save = stalled_save
files.atomic_torch_save({"i": torch.tensor(99)}, sys.argv[1])
"""


def test_a_writer_killed_inside_its_write_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    target = tmp_path / "model.pt"
    atomic_torch_save({"i": torch.tensor(1)}, target)
    writer = subprocess.Popen([sys.executable, "-c", STALLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "inside the write"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert _temporaries(tmp_path) == [f".model.pt.tmp-{files._HOST}-{writer.pid}"]
    assert int(torch.load(target, weights_only=True)["i"]) == 1  # the old checkpoint, intact
    atomic_torch_save({"i": torch.tensor(2)}, target)
    assert _temporaries(tmp_path) == []


def test_temporary_names_carry_host_and_process():
    name = temporary_name("/x/model.pt").name
    assert name == f".model.pt.tmp-{files._HOST}-{os.getpid()}"
