"""Export the two towers on their own: the text tower as traced TorchScript (free-text prompts at
deployment), the image tower as ONNX (checked with onnxruntime, an optional extra).

The single-input zero-shot classifier is exported by MONAI's own ``ckpt_export`` from
``bundle/configs/inference.json`` (see README); this module covers what a bundle export cannot:
Hugging Face BERT is traced, not scripted, and ONNX is a different runtime. Every export is
loaded back and compared with the eager model; the measured differences are returned and written
to ``export.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .utils.files import atomic_write_text

__all__ = ["TextTower", "ImageTower", "export_text_tower", "export_image_onnx", "export_towers"]

PARITY_PROMPTS = ("there is a suspicious mass in the left breast",
                  "no calcifications",
                  "the breasts are heterogeneously dense, which may obscure small masses")


class TextTower(nn.Module):
    """``(input_ids, attention_mask) -> (B, D)`` L2-normalised text embeddings of a MammoCLIP."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.text_encoder = model.text_encoder
        self.text_projection = model.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_encoder(input_ids, attention_mask)), dim=-1)


class ImageTower(nn.Module):
    """``image (B, 1, H, W) -> (B, D)`` L2-normalised image embeddings of a MammoCLIP."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.image_projection = model.image_projection

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(self.image_encoder(image)), dim=-1)


def _tokens(model: nn.Module, texts: tuple[str, ...] | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens padded to the model's fixed ``text_max_length``: the traced graph is built for that length."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer: the text tower cannot be traced or checked")
    batch = model.tokenizer(list(texts), padding="max_length", truncation=True,
                            max_length=int(model.config.text_max_length), return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


@torch.no_grad()
def export_text_tower(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Trace the text tower to ``path`` (and its tokenizer beside it); return the parity measured on reload.

    Inputs of the traced module are padded to ``config.text_max_length`` tokens (``padding="max_length"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tower = TextTower(model).eval()
    ids, mask = _tokens(model, PARITY_PROMPTS[:2])
    traced = torch.jit.trace(tower, (ids, mask), check_trace=False)
    traced.save(str(path))
    model.tokenizer.save_pretrained(str(path.parent / "tokenizer"))
    loaded = torch.jit.load(str(path))
    ids, mask = _tokens(model, PARITY_PROMPTS)  # a different batch size from the one traced
    difference = float((loaded(ids, mask) - tower(ids, mask)).abs().max())
    return {"file": path.name, "inputs": {"input_ids": list(ids.shape), "attention_mask": list(mask.shape)},
            "max_length": int(model.config.text_max_length), "tokenizer": "tokenizer",
            "max_abs_difference": difference}


@torch.no_grad()
def export_image_onnx(model: nn.Module, path: str | os.PathLike, image_size: tuple[int, int] | None = None,
                      opset: int = 18) -> dict[str, Any]:
    """Export the image tower to ONNX (dynamic batch) and check it with onnxruntime.

    Needs the ``onnx`` extra (``pip install "mammoclip-monai[onnx]"``): onnx, onnxscript, onnxruntime.
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("ONNX export needs the onnx extra: pip install \"mammoclip-monai[onnx]\" "
                          "(onnx, onnxscript, onnxruntime)") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = tuple(image_size or model.config.image_size)
    tower = ImageTower(model).eval()
    example = torch.randn(2, 1, height, width)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(tower, (example,), dynamo=True, input_names=["image"], output_names=["embedding"],
                                dynamic_shapes={"image": {0: batch}}, opset_version=opset)
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = torch.randn(3, 1, height, width, generator=torch.Generator().manual_seed(0))
    onnx_out = torch.from_numpy(session.run(["embedding"], {"image": check.numpy()})[0])
    difference = float((onnx_out - tower(check)).abs().max())
    return {"file": path.name, "inputs": {"image": ["batch", 1, height, width]}, "outputs": {"embedding": ["batch",
            int(model.config.embed_dim)]}, "opset": opset, "max_abs_difference": difference}


def export_towers(model: nn.Module, out_dir: str | os.PathLike, onnx: bool = True) -> dict[str, Any]:
    """``text_tower.ts`` + ``tokenizer/`` (+ ``image_tower.onnx``) and ``export.json`` with the parity figures.

    ``export.json`` also records the input the image tower expects (size and intensity normalisation,
    from the model config): an ONNX graph cannot say how its input was normalised in training.
    """
    out = Path(out_dir)
    model = model.eval()
    summary: dict[str, Any] = {"embed_dim": int(model.config.embed_dim),
                               "image_size": list(model.config.image_size),
                               "image_normalization": dict(model.config.image_normalization),
                               "logit_scale": float(model.get_logit_scale().detach()),
                               "text_tower": export_text_tower(model, out / "text_tower.ts")}
    if onnx:
        summary["image_tower_onnx"] = export_image_onnx(model, out / "image_tower.onnx")
    atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "export.json")
    return summary
