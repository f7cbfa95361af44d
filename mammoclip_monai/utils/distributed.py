"""What every layer shares about running on several processes: the process group, unwrapping DDP, gathering.

Under ``torchrun`` these gather across ranks; in a single process they are plain concatenation. The
process-group helpers are what ``multi_gpu_train.json`` declares in its ``initialize`` and ``finalize``.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import ignite.distributed as idist
import torch
from monai.utils import evenly_divisible_all_gather

__all__ = ["unwrap", "gather_tensors", "is_rank_zero", "local_device", "init_process_group",
           "destroy_process_group"]


def unwrap(module: Any) -> Any:
    """The module inside DataParallel/DistributedDataParallel wrappers."""
    return getattr(module, "module", module)


def is_rank_zero() -> bool:
    """Whether this process writes shared outputs (rank 0, or the only process)."""
    return idist.get_rank() == 0


def gather_tensors(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate this rank's tensors, then across ranks.

    A DistributedSampler without padding gives ranks shards of different lengths, which a plain
    ``all_gather`` cannot take; MONAI's ``evenly_divisible_all_gather`` pads and trims. Raises
    ``ValueError`` for an empty list (callers turn it into their own "no batch yet" error).
    """
    if not tensors:
        raise ValueError("nothing to gather: no batch was accumulated")
    local = torch.cat(tensors)
    return evenly_divisible_all_gather(local, concat=True) if idist.get_world_size() > 1 else local


def local_device() -> torch.device:
    """This rank's device under ``torchrun``: the GPU of its ``LOCAL_RANK``, or the CPU when there is no GPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{os.environ['LOCAL_RANK']}")
    return torch.device("cpu")


def init_process_group(backend: str | None = None, timeout_minutes: float = 60.0) -> None:
    """Join ``torchrun``'s process group once (a no-op when already joined): ``backend`` defaults to
    nccl with GPUs, gloo without; ``timeout_minutes`` bounds every collective (a long cache fill on rank 0
    must not time the other ranks out)."""
    if torch.distributed.is_initialized():
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))


def destroy_process_group() -> None:
    """Leave the process group at the end of a run (a no-op without one).

    All ranks meet at a barrier first: a rank that tears its group down while a peer still talks to
    it can hang the teardown (pytorch/pytorch#75097), which a two-node test run once showed here.
    """
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
