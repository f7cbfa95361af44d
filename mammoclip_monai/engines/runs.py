"""One run per output folder: a training run never silently replaces the weights of another run.

Bundle training writes fixed names (``models/model.pt``, ``last.pt``, ``pretrained/``), so a second
``monai.bundle run training`` (a smoke test, a torchrun launch, another preset) would overwrite a
finished model without a word. :class:`RunDirectory` claims the folder before anything is cached or
trained: it records the run's settings in ``run.json`` and refuses a folder that holds another
run's weights unless the run resumes that same run (``resume``) or is told to replace it
(``overwrite``). ``resume="auto"`` resumes only a run whose recorded settings equal this run's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from ..networks.pretrained import RUN_RECORD
from ..utils.errors import UsageError, as_flag
from ..utils.files import atomic_write_text

__all__ = ["RUN_RECORD", "DirectoryNotShared", "RunDirectory", "RunDirectoryInUse", "RunFinished",
           "check_shared_directory"]

logger = logging.getLogger("mammoclip_monai.engines")


class RunDirectoryInUse(UsageError, FileExistsError):
    """The output folder holds another run's weights (or a run with other settings)."""


def _plain(value: Any) -> Any:
    """JSON-normalised settings (tuples become lists, paths strings) so that records compare equal."""
    return json.loads(json.dumps(value, default=str))


def _is_rank_zero() -> bool:
    """Only one process of a torchrun launch claims the folder (the others would see its claim)."""
    return int(os.environ.get("RANK", "0")) == 0


class RunDirectory:
    """Claim ``directory`` for one training run (see the module docstring).

    Args:
        directory: the run's output folder (the bundle's ``ckpt_dir``).
        settings: what makes two runs the same run (preset, image size, data, seed, ...); recorded in
            ``run.json`` and compared by ``resume="auto"``.
        resume: the trainer's resume setting: ``None`` (a new run), ``"auto"`` or a checkpoint path.
        overwrite: replace another run's outputs (they are deleted when the run starts).
        outputs: the names in ``directory`` that belong to a run (an absolute path names a file elsewhere,
            e.g. the run's ``metrics.json`` in the logs folder).
    """

    def __init__(self, directory: str | os.PathLike, settings: Mapping[str, Any] | None = None,
                 resume: str | os.PathLike | None = None, overwrite: bool = False,
                 outputs: Sequence[str] = ("model.pt", "last.pt", "pretrained")) -> None:
        self.directory = Path(directory)
        self.settings = _plain(dict(settings or {}))
        self.resume = None if resume in (None, "") else os.fspath(resume)
        self.overwrite = as_flag(overwrite, "overwrite")
        self.outputs = tuple(outputs)

    @property
    def record_path(self) -> Path:
        return self.directory / RUN_RECORD

    def read_record(self) -> dict[str, Any] | None:
        """The folder's ``run.json``, or ``None`` (no run recorded, or a folder from before run records)."""
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def existing_outputs(self) -> list[str]:
        return [name for name in self.outputs if (self.directory / name).exists()]  # absolute names stay absolute

    def claim(self) -> RunDirectory:
        """Check the folder and record this run in it; raise :class:`RunDirectoryInUse` if it is another run's."""
        if not _is_rank_zero():
            return self
        existing, record = self.existing_outputs(), self.read_record()
        if self.resume is not None:
            self._check_resume(record)
        elif existing and not self.overwrite:
            owner = "a finished run" if (record or {}).get("status") == "finished" else "another run"
            raise RunDirectoryInUse(
                f"{self.directory} holds {owner}'s weights ({', '.join(existing)}); a new run would replace them. "
                "Continue that run with --resume auto, replace it with --overwrite true, "
                "or give this run folders of its own with --ckpt_dir DIR --output_dir DIR")
        elif existing:
            logger.warning("--overwrite: deleting the previous run's %s in %s", ", ".join(existing), self.directory)
            for name in existing:
                target = self.directory / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        self._write_record(record)
        return self

    def _check_resume(self, record: dict[str, Any] | None) -> None:
        """``resume="auto"`` continues only the same run; an explicit checkpoint path is the user's choice."""
        if self.resume != "auto" or record is None:
            if self.resume == "auto" and (self.directory / "last.pt").is_file():
                logger.warning("%s has no %s (written before run records): resuming its last.pt unchecked",
                               self.directory, RUN_RECORD)
            return
        recorded = record.get("settings", {})
        differing = sorted(k for k in set(recorded) | set(self.settings) if recorded.get(k) != self.settings.get(k))
        if differing:
            shown = "; ".join(f"{k}: {recorded.get(k)!r} there, {self.settings.get(k)!r} here" for k in differing[:4])
            raise RunDirectoryInUse(
                f"{self.directory} holds a run with other settings ({shown}); --resume auto continues only the "
                "same run: give this run folders of its own with --ckpt_dir DIR --output_dir DIR")

    def _write_record(self, previous: dict[str, Any] | None) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record = {"status": "running", "settings": self.settings, "started": now}
        if self.resume is not None and previous is not None:
            record["started"] = previous.get("started", now)
            record["resumed"] = [*previous.get("resumed", []), now]
        atomic_write_text(json.dumps(record, indent=2) + "\n", self.record_path)

    def finish(self, engine: Engine | None = None) -> None:
        """Record that the run completed (and after how many epochs)."""
        record = self.read_record() or {"settings": self.settings}
        record.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if engine is not None:
            record["epochs"] = int(engine.state.epoch)
        atomic_write_text(json.dumps(record, indent=2) + "\n", self.record_path)


class RunFinished:
    """Ignite handler: mark the run that claimed ``directory`` finished when the trainer completes.

    A handler of its own (not the claiming :class:`RunDirectory` itself) because MONAI's property
    check wants every ``train#handlers`` entry to be a component. Attach on rank 0 only.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.run = RunDirectory(directory)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self.run.finish)


class DirectoryNotShared(UsageError):
    """A folder that every rank must see (rank 0 writes it, all read it) is local to some machines."""


def check_shared_directory(directory: str | os.PathLike[str], name: str = "ckpt_dir") -> None:
    """Under ``torch.distributed``: fail at the start if some rank does not see ``directory`` as rank 0 does.

    Rank 0 writes the checkpoints and every rank loads the best one for the final test, so a
    ``ckpt_dir`` local to each node would fail (or load another run's stale ``model.pt``) only at
    the end of the training. Rank 0 writes a marker with a fresh token; every rank looks for it.
    A no-op without a process group or with one rank.
    """
    import secrets
    import socket

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    rank = dist.get_rank()
    token = [secrets.token_hex(8) if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    marker = Path(directory) / f".shared-check-{token[0]}"
    if rank == 0:
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(str(token[0]), marker)
    dist.barrier()
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, (rank, socket.gethostname(), marker.is_file()))
    dist.barrier()
    if rank == 0:
        marker.unlink(missing_ok=True)
    blind = [(r, host) for r, host, found in seen if not found]
    if blind:
        ranks = ", ".join(f"rank {r} on {host}" for r, host in blind)
        raise DirectoryNotShared(f"{name} {os.fspath(directory)} is not shared by every node ({ranks} cannot see "
                                 f"what rank 0 wrote there): give a folder on a shared file system")
