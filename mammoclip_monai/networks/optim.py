"""Optimiser parameter groups for MammoCLIP: per-tower learning rates, no decay on gains and biases.

As in open_clip, weight decay applies only to weight matrices and convolution kernels: biases,
normalisation gains, the logit scale and the SigLIP logit bias (a model parameter, so it is in
these groups) are left undecayed (decaying the temperature drags it to 1). Pretrained towers
often want a lower learning rate than the freshly initialised projection
heads; ``image_lr`` / ``text_lr`` set them apart (default: ``lr``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["param_groups"]

_TOWERS = (("image_encoder.", "image"), ("text_encoder.", "text"))


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or name.endswith(".bias") or "logit_scale" in name or "logit_bias" in name


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, image_lr: float | None = None,
                 text_lr: float | None = None) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` optimisers (frozen parameters left out).

    Groups are named (``"name"`` key: ``image/decay``, ``text/no_decay``, ``head/decay``, ...) so
    logs and schedulers can tell them apart; empty groups are dropped.
    """
    model = getattr(model, "module", model)  # DDP
    lrs = {"image": lr if image_lr is None else image_lr, "text": lr if text_lr is None else text_lr, "head": lr}
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tower = next((t for prefix, t in _TOWERS if name.startswith(prefix)), "head")
        decay = "no_decay" if _no_decay(name, param) else "decay"
        key = f"{tower}/{decay}"
        group = groups.setdefault(key, {"name": key, "params": [], "lr": lrs[tower],
                                        "weight_decay": 0.0 if decay == "no_decay" else weight_decay})
        group["params"].append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return list(groups.values())
