"""What this process may use: CPU cores, free memory, and the DataLoader settings that follow from them.

Configs call these instead of fixing numbers, so one config fits a laptop, a 2-core CI machine and a
64-core GPU node. Nothing here imports another ``mammoclip_monai`` package.
"""

from __future__ import annotations

import os

from .errors import as_flag

__all__ = ["available_cores", "cache_fill_share", "loader_workers", "memory_available", "preprocess_workers"]


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a SLURM or container limit counts)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def loader_workers(max_workers: int = 8, min_cores: int = 4) -> int:
    """DataLoader worker processes for one training process: its share of the cores, less one for itself.

    Under torchrun the cores are split among the node's ranks (``LOCAL_WORLD_SIZE``). With fewer
    than ``min_cores`` cores per rank there are none: a worker runs with one torch thread beside the
    model's threads, and on 2 cores one worker did not help (a fresh-clone default run's first
    epoch: 5.5 s per iteration with it, 5.3 s without), so small machines read in the main process
    as every release before did.
    """
    cores = available_cores() // _local_ranks()
    return 0 if cores < min_cores else min(max_workers, cores - 1)


def _local_ranks() -> int:
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def preprocess_workers() -> int:
    """Processes one rank may use to fill the preprocessed cache: its share of this machine's cores."""
    return max(1, available_cores() // _local_ranks())


def cache_fill_share(shared: bool | str) -> tuple[int, int]:
    """``(rank, world_size)`` of this process's share of the images to cache, from torchrun's environment.

    One cache shared by every machine: the global ranks split the images. One cache per machine:
    the ranks of this machine (``LOCAL_RANK`` of ``LOCAL_WORLD_SIZE``) must fill all of it between them.
    ``shared`` may be a flag as typed on the command line (``"false"``).
    """
    if as_flag(shared, "cache_shared"):
        return int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1")))
    return int(os.environ.get("LOCAL_RANK", "0")), _local_ranks()


def memory_available() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or ``None`` when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
