"""Export MammoCLIP for deployment, three formats side by side (see ``docs/export.md``).

* ``torch.export`` programs (``.pt2``, the forward-looking PyTorch format, TorchScript being
  deprecated upstream): the image tower, the single-input zero-shot classifier and the text tower, each with a
  dynamic batch dimension, saved with ``torch.export.save`` and read back with ``torch.export.load``.
* TorchScript: the text tower traced (free-text prompts at deployment). The zero-shot classifier's
  ``model.ts`` is written by MONAI's own ``ckpt_export`` from ``bundle/configs/inference.json``
  (see README): MONAI Deploy and MONAI Label still load TorchScript.
* ONNX: the image tower, checked with onnxruntime (an optional extra), for other runtimes.

Every export is loaded back and compared with the eager model on a batch of another size than the
export example; the measured differences are returned and written to ``export.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .utils.files import atomic_path, atomic_write_text

__all__ = ["PT2_TOLERANCE", "ExportParityError", "ImageTower", "TextTower", "export_image_onnx", "export_image_pt2",
           "export_text_tower", "export_text_tower_pt2", "export_towers", "export_zero_shot_pt2", "load_pt2"]

PT2_TOLERANCE = 1e-4
"""Largest ``max |reloaded .pt2 - eager|`` an export accepts (float32, same device)."""
PT2_EXAMPLE_BATCH = 2
"""Batch size of the example a ``.pt2`` is exported with; it is checked at other sizes (``PT2_CHECK_BATCHES``)."""
PT2_CHECK_BATCHES = (1, 3)
DEFAULT_TASKS = ("mass", "calcification", "density")
"""The zero-shot prompt sets of ``bundle/configs/inference.json`` (``inference_tasks``)."""

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


# ----------------------------------------------------------------------------- torch.export (.pt2)
class ExportParityError(RuntimeError):
    """A reloaded export does not reproduce the eager model within the tolerance."""


@contextlib.contextmanager
def _inference_mode_for_export(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd while exporting (dropout, drop-path, BatchNorm statistics and
    checkpointing in train mode would be baked into the graph); every module's flag is restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, training in modes:
            m.training = training


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def load_pt2(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """``(module, info)``: the program of a ``.pt2`` written here, as a callable module, and the
    ``mammoclip.json`` saved inside it (input spec, image normalisation, output names).

    ``torch.export.load`` unpickles parts of the archive: load only files you trust (docs/security.md).
    """
    extra = {"mammoclip.json": ""}
    program = torch.export.load(os.fspath(path), extra_files=extra)
    return program.module(), json.loads(extra["mammoclip.json"] or "{}")


def _export_pt2(module: nn.Module, path: str | os.PathLike, make_inputs: Any, dynamic_shapes: Mapping[str, Any],
                info: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Export ``module`` with a dynamic batch, save it atomically, reload it, compare with eager.

    ``make_inputs(batch)`` returns the positional inputs for a batch size (deterministic); the
    program is exported with ``PT2_EXAMPLE_BATCH`` and checked at each of ``PT2_CHECK_BATCHES``.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"a torch.export archive is named *.pt2, got {path.name!r}")
    with _inference_mode_for_export(module):
        start = time.perf_counter()
        example = tuple(make_inputs(PT2_EXAMPLE_BATCH))
        program = torch.export.export(module, example, dynamic_shapes=dict(dynamic_shapes))
        with atomic_path(path) as tmp, tmp.open("wb+") as handle:
            torch.export.save(program, handle, extra_files={"mammoclip.json": json.dumps(info, sort_keys=True)})
        seconds = time.perf_counter() - start
        loaded, _ = load_pt2(path)
        differences, problem = [], ""
        for batch in PT2_CHECK_BATCHES:
            inputs = make_inputs(batch)
            exported, eager = loaded(*inputs), module(*inputs)
            if exported.shape != eager.shape:
                problem = f"gives shape {list(exported.shape)} for batch {batch}, eager {list(eager.shape)}"
                break
            differences.append(float((exported.float() - eager.float()).abs().max()))
    difference = float("nan") if any(math.isnan(d) for d in differences) else max(differences, default=float("nan"))
    if not problem and not difference <= tolerance:  # NaN fails too
        problem = (f"differs from the eager model by {difference:.3g} (max abs, batches {list(PT2_CHECK_BATCHES)}), "
                   f"more than the tolerance {tolerance:g}")
    if problem:
        path.unlink(missing_ok=True)  # never leave a program behind that does not compute what the model does
        raise ExportParityError(f"{path.name}: the reloaded torch.export program {problem}; the file was removed")
    return {"file": path.name, "format": "torch.export", **info,
            "dynamic": {"batch": {"min": 1, "max": None}}, "example_batch": PT2_EXAMPLE_BATCH,
            "checked_batches": list(PT2_CHECK_BATCHES), "max_abs_difference": difference,
            "export_seconds": round(seconds, 2), "torch": torch.__version__}


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1)


def _image_inputs(height: int, width: int, device: torch.device) -> Any:
    def make(batch: int) -> tuple[torch.Tensor]:
        generator = torch.Generator().manual_seed(batch)
        return (torch.randn(batch, 1, height, width, generator=generator).to(device),)
    return make


def export_image_pt2(model: nn.Module, path: str | os.PathLike, image_size: Sequence[int] | None = None,
                     tolerance: float = PT2_TOLERANCE) -> dict[str, Any]:
    """The image tower ``image (batch, 1, H, W) -> (batch, D)`` as a ``torch.export`` program (``.pt2``).

    Exported at ``image_size`` (default: the model's ``config.image_size``) with a dynamic batch
    (``torch.export.Dim``, min 1); H and W are fixed (timm's TF "same" padding is computed for them).
    Reloaded and checked against eager at batch sizes other than the export example; raises
    :class:`ExportParityError` above ``tolerance``. Returns the ``export.json`` entry.
    """
    height, width = (int(v) for v in (image_size or model.config.image_size))
    info = {"inputs": {"image": ["batch", 1, height, width]},
            "outputs": {"embedding": ["batch", int(model.config.embed_dim)]},
            "image_normalization": dict(model.config.image_normalization)}
    return _export_pt2(ImageTower(model), path, _image_inputs(height, width, _device(model)),
                       {"image": {0: _batch_dim()}}, info, tolerance)


def export_zero_shot_pt2(model: nn.Module, path: str | os.PathLike, prompt_sets: Mapping[str, Any] | str | None = None,
                         tasks: Sequence[str] | None = DEFAULT_TASKS, image_size: Sequence[int] | None = None,
                         tolerance: float = PT2_TOLERANCE) -> dict[str, Any]:
    """The single-input zero-shot classifier ``image (batch, 1, H, W) -> probabilities (batch, N)`` as ``.pt2``.

    ``model`` is a :class:`~mammoclip_monai.networks.ZeroShotClassifier` (exported as it is) or a
    MammoCLIP, from which one is built with ``prompt_sets`` / ``tasks`` as ``inference.json``'s
    ``network_def`` does (default: the packaged mass, calcification and density prompts). The class
    embeddings are constants of the program: other prompts need another export (or the text tower).
    The output columns (``output_names``) and the input normalisation are saved in the archive's
    ``mammoclip.json`` (:func:`load_pt2`) and in the returned entry.
    """
    from .networks.zero_shot import ZeroShotClassifier

    model = getattr(model, "module", model)
    classifier = model if isinstance(model, ZeroShotClassifier) else ZeroShotClassifier(model, prompt_sets, tasks)
    config = classifier.text_model.config
    height, width = (int(v) for v in (image_size or config.image_size))
    info = {"inputs": {"image": ["batch", 1, height, width]},
            "outputs": {"probabilities": ["batch", len(classifier.output_names)]},
            "output_names": list(classifier.output_names),
            "image_normalization": dict(classifier.image_normalization)}
    return _export_pt2(classifier, path, _image_inputs(height, width, _device(classifier)),
                       {"image": {0: _batch_dim()}}, info, tolerance)


def export_text_tower_pt2(model: nn.Module, path: str | os.PathLike,
                          tolerance: float = PT2_TOLERANCE) -> dict[str, Any]:
    """The text tower ``(input_ids, attention_mask) (batch, L) -> (batch, D)`` as ``.pt2``, dynamic batch.

    Hugging Face BERT / MiniLM export cleanly with a dynamic batch. The sequence length ``L`` stays
    fixed at ``config.text_max_length``, as for the traced ``text_tower.ts`` (pad with
    ``padding="max_length"``; the tokenizer is the one ``export_text_tower`` saves). A dynamic
    length does not export as asked: tracing transformers' BERT (torch 2.14, transformers 5.x)
    adds the guard "length != the range's upper bound", so ``Dim(max=text_max_length)`` is refused
    (a range ending below it would export); one fixed length keeps both text exports interchangeable.
    """
    length = int(model.config.text_max_length)
    device = _device(model)
    prompts = [PARITY_PROMPTS[i % len(PARITY_PROMPTS)] for i in range(max(PT2_EXAMPLE_BATCH, *PT2_CHECK_BATCHES))]

    def make(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = _tokens(model, prompts[:batch])
        return ids.to(device), mask.to(device)

    info = {"inputs": {"input_ids": ["batch", length], "attention_mask": ["batch", length]},
            "outputs": {"embedding": ["batch", int(model.config.embed_dim)]}, "max_length": length,
            "tokenizer": "tokenizer"}
    batch = _batch_dim()
    return _export_pt2(TextTower(model), path, make, {"input_ids": {0: batch}, "attention_mask": {0: batch}},
                       info, tolerance)


def export_towers(model: nn.Module, out_dir: str | os.PathLike, onnx: bool = True, pt2: bool = True,
                  prompt_sets: Mapping[str, Any] | str | None = None,
                  tasks: Sequence[str] | None = DEFAULT_TASKS) -> dict[str, Any]:
    """``text_tower.ts`` + ``tokenizer/`` (+ ``image_tower.onnx``) (+ ``image_tower.pt2``, ``zero_shot.pt2``,
    ``text_tower.pt2``) and ``export.json`` with the parity figures.

    ``export.json`` also records the input the image tower expects (size and intensity normalisation,
    from the model config): an ONNX graph cannot say how its input was normalised in training.
    ``prompt_sets`` / ``tasks`` choose the zero-shot classifier's prompts (as in ``inference.json``).
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
    if pt2:
        summary["image_tower_pt2"] = export_image_pt2(model, out / "image_tower.pt2")
        summary["zero_shot_pt2"] = export_zero_shot_pt2(model, out / "zero_shot.pt2", prompt_sets, tasks)
        summary["text_tower_pt2"] = export_text_tower_pt2(model, out / "text_tower.pt2")
    atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "export.json")
    return summary
