"""Atomic file writes: a crash or a kill mid-write never leaves a truncated file behind a final name.

Every writer goes through :func:`atomic_path`: write a temporary file beside the target, flush and
fsync it, rename it over the target, fsync the folder (so the rename itself survives a power cut).
A failed write removes its temporary file; a writer that was killed (SIGKILL, OOM) cannot, so each
write first removes the temporary files of dead writers of the same target
(:func:`remove_stale_temporaries`). Temporary names carry the host and the process id
(``.<name>.tmp-<host>-<pid>``), so only files of processes known to be dead on this host are removed.

Nothing here imports torch at module level or another ``mammoclip_monai`` package.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_torch_save", "fsync_directory",
           "remove_stale_temporaries", "temporary_name"]

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<host>[A-Za-z0-9_.]+)-)?(?P<pid>\d+)$")


def temporary_name(path: str | os.PathLike[str]) -> Path:
    """The temporary file this process writes before renaming it to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}")


def _alive(pid: int) -> bool:
    """Whether a process with this id exists here (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files of ``path`` left by dead writers on this host; return what was removed.

    A temporary file of another host, or of a process that still runs (it may be writing right now),
    is kept. Files of the older ``.<name>.tmp-<pid>`` naming are taken as this host's.
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or match["name"] != path.name or match["host"] not in (None, _HOST):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` durably, on failure it is removed.

    The caller writes and closes the temporary file inside the ``with`` block; this fsyncs it, renames
    it over ``path`` and fsyncs the folder. Creates the folder when needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike[str], encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(text.encode(encoding), path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (torch is imported only here); returns the path."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)
