"""Process-group helpers for contrastive losses: gather a batch from every rank, keeping gradients.

A contrastive loss needs every rank's samples as negatives. ``gather_with_grad`` all-gathers
along dim 0 through an autograd-aware collective, so the gradient reaching a rank's features
is the sum of what every rank's loss sends back to them; together with DDP's averaging this
makes N ranks compute the same update as one process on the concatenated batch. Batches of
unequal size across ranks (a last, short batch) are padded for the collective and trimmed
after it. Every helper is an identity (or a constant) when no process group with more than
one rank is running, so single-process code needs no branches.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

# torch marks the autograd all_gather as deprecated in favour of a private API; it still is
# the public, documented collective with a correct backward on gloo and NCCL.
warnings.filterwarnings(
    "ignore", message=r".*torch\.distributed\.nn\.functional\.all_gather is deprecated.*", category=FutureWarning
)

__all__ = [
    "is_distributed",
    "world_size",
    "rank",
    "gather_sizes",
    "local_offset",
    "gather_with_grad",
    "gather_no_grad",
]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """True when a process group with more than one rank is running (gathering is needed)."""
    return _initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if _initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if _initialized() else 0


def gather_sizes(n: int, device: torch.device | str | None = None) -> list[int]:
    """Batch size of every rank, in rank order (``[n]`` when not distributed).

    ``device`` must suit the backend (a CUDA device for NCCL); pass the features' device.
    """
    if not is_distributed():
        return [int(n)]
    local = torch.tensor([int(n)], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def local_offset(sizes: list[int]) -> int:
    """Index of this rank's first row in the gathered (concatenated) batch."""
    return int(sum(sizes[: rank()]))


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad], dim=0)


def _trim_cat(parts: list[torch.Tensor] | tuple[torch.Tensor, ...], sizes: list[int]) -> torch.Tensor:
    if len(set(sizes)) == 1:
        return torch.cat(list(parts), dim=0)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """All-gather ``x`` along dim 0 so that gradients flow back to every rank's slice.

    ``sizes`` (from :func:`gather_sizes`) saves one small collective when several tensors of
    the same batch are gathered. Returns ``x`` itself when not distributed.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather as _all_gather_autograd

    sizes = sizes if sizes is not None else gather_sizes(x.shape[0], x.device)
    parts = _all_gather_autograd(_pad_rows(x, max(sizes)))
    return _trim_cat(parts, sizes)


def gather_no_grad(x: torch.Tensor, sizes: list[int] | None = None, keep_local_grad: bool = False) -> torch.Tensor:
    """All-gather ``x`` along dim 0 without gradients (labels, token ids, cheap negatives).

    With ``keep_local_grad`` this rank's slice is ``x`` itself, so gradients still reach the
    local rows (open_clip's ``gather_with_grad=False``). Boolean tensors are supported.
    Returns ``x`` itself when not distributed.
    """
    if not is_distributed():
        return x
    sizes = sizes if sizes is not None else gather_sizes(x.shape[0], x.device)
    is_bool = x.dtype == torch.bool
    with torch.no_grad():
        buf = _pad_rows(x.detach().to(torch.uint8) if is_bool else x.detach(), max(sizes))
        parts = [torch.empty_like(buf) for _ in sizes]
        dist.all_gather(parts, buf)
    if is_bool:
        parts = [p.bool() for p in parts]
    if keep_local_grad:
        parts[rank()] = _pad_rows(x, max(sizes))
    return _trim_cat(parts, sizes)
