"""What every layer shares about running on several processes: unwrapping DDP and gathering tensors.

Under ``torchrun`` these gather across ranks; in a single process they are plain concatenation.
"""

from __future__ import annotations

from typing import Any

import ignite.distributed as idist
import torch
from monai.utils import evenly_divisible_all_gather

__all__ = ["unwrap", "gather_tensors", "is_rank_zero"]


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
