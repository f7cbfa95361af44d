"""Feature maps of the frozen image encoder: which layer, how to read it, and caching them once.

FActOR and the saliency baselines read the same layer: by default the one whose output *is* the
encoder's last feature map (found by running the encoder once, whatever the backbone), or any
named layer. Because the encoder is frozen and in eval mode, a training set's feature maps are
computed once and the FActOR heads train on the cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..data.datalists import batchable
from ..engines.evaluator import image_paths
from ..utils.progress import progress as show_progress

__all__ = ["FeatureMapExtractor", "default_feature_layer", "cache_feature_maps"]


def default_feature_layer(encoder: nn.Module, input_size: Sequence[int] = (64, 64)) -> str:
    """Name (within ``encoder``) of the last module whose output is ``encoder.forward_features``'s output."""
    outputs: list[tuple[str, torch.Tensor]] = []
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs.append((name, out)))
             for name, module in encoder.named_modules() if name]
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            param = next(encoder.parameters())
            x = torch.zeros(1, int(getattr(encoder, "in_chans", 1)), *input_size,
                            device=param.device, dtype=param.dtype)
            final = encoder.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()
        encoder.train(was_training)
    for name, out in reversed(outputs):
        if isinstance(out, torch.Tensor) and out.shape == final.shape and torch.equal(out, final):
            return name
    raise ValueError(f"{type(encoder).__name__}: no single layer produces the final feature map; name one")


class FeatureMapExtractor(nn.Module):
    """``image -> (B, C, h, w)``: the encoder's last feature map, or the output of ``layer``.

    The encoder is not copied: it stays part of the MammoCLIP model it came from.
    """

    def __init__(self, encoder: nn.Module, layer: str | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.layer = layer or default_feature_layer(encoder)
        self._module = encoder.get_submodule(self.layer)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = self._module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.encoder.forward_features(image)
        finally:
            hook.remove()
        if not captured or captured[-1].ndim != 4:
            raise ValueError(f"layer {self.layer!r} did not give a (B, C, h, w) feature map")
        return captured[-1]


@torch.no_grad()
def cache_feature_maps(extractor: nn.Module, items: Sequence[Mapping[str, Any]], transform: Any,
                       label_keys: Sequence[str], device: torch.device | str = "cpu", batch_size: int = 8,
                       num_workers: int = 0, dtype: torch.dtype = torch.float16, progress: bool = True,
                       desc: str = "caching feature maps") -> list[dict[str, Any]]:
    """Run every item through ``transform`` and the frozen ``extractor`` once (with a progress bar).

    Returns a datalist ``{"image": (C, h, w) feature map, "label": (A,) long, "image_path"}`` with
    one label per ``label_keys`` entry (-1 unknown). Maps are stored as ``dtype`` (half the memory).
    """
    from monai.data import DataLoader, Dataset

    if not items:
        raise ValueError("the datalist to cache is empty")
    loader = DataLoader(Dataset(batchable(items, label_keys), transform), batch_size=batch_size,
                        num_workers=num_workers)
    was_training = extractor.training
    extractor.eval()
    out = []
    for batch in show_progress(loader, desc, total=len(loader), unit="batch", enabled=progress):
        image = batch["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        maps = extractor(image.to(device)).to("cpu", dtype)
        labels = torch.stack([torch.as_tensor(batch[k]).reshape(-1).long() for k in label_keys], dim=1)
        for fmap, label, path in zip(maps, labels, image_paths(batch)):
            out.append({"image": fmap, "label": label, "image_path": path})
    extractor.train(was_training)
    return out
