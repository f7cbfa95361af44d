"""Ignite handlers MONAI lacks: atomic checkpoints, exact resume, RNG state, metrics JSON, image grids.

- :class:`AtomicCheckpointSaver` writes through :mod:`mammoclip_monai.utils.files` (temporary file,
  fsync, rename, folder fsync; stale temporaries of killed writers removed), so a crash mid-write
  never leaves a truncated checkpoint (MONAI's ``CheckpointSaver`` writes in place).
- :class:`RandomStates` puts every random generator that shapes training (Python, NumPy, torch,
  and each random MONAI transform's own ``RandomState``) into the checkpoint, so a resumed run
  draws the same augmentations, dropout masks and shuffles as an uninterrupted one.
- :class:`ResumeHandler` restores a checkpoint at ``STARTED`` (``weights_only=True``).
- :class:`MetricsJSONWriter`, :class:`TensorBoardImageGrid`, :class:`FinalTestHandler` report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose, Randomizable

from ..networks.checkpoints import load_weights
from ..utils.distributed import unwrap
from ..utils.files import atomic_torch_save, atomic_write_text

logger = logging.getLogger("mammoclip_monai.engines")


# ----------------------------------------------------------------------------- modules
def _state_of(obj: Any) -> Any:
    return unwrap(obj).state_dict()


# ----------------------------------------------------------------------------- RNG
def _random_transforms(transform: Any) -> list[Randomizable]:
    """Every Randomizable reachable in a (nested) Compose, in order."""
    found: list[Randomizable] = []
    if isinstance(transform, Compose):
        for t in transform.transforms:
            found.extend(_random_transforms(t))
    elif isinstance(transform, Randomizable):
        found.append(transform)
    return found


def _numpy_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = state
    return {"keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "gauss": float(gauss), "name": str(name)}


def _numpy_tuple(state: Mapping) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"])


class RandomStates:
    """Checkpointable random state: Python, NumPy, torch (CPU and CUDA) and the given transforms.

    Put it in the checkpoint's save/load dicts. States are stored as tensors and plain values so
    the checkpoint loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, transforms: Any = None, batch_transform: Any = None) -> None:
        self.transforms = [] if transforms is None else _random_transforms(transforms)
        self.batch_transform = batch_transform  # e.g. BatchMammoAugment: state_dict / load_state_dict

    def state_dict(self) -> dict[str, Any]:
        state = {
            "python": random.getstate(),
            "numpy": _numpy_state(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "transforms": [_numpy_state(t.R.get_state()) for t in self.transforms],
        }
        if self.batch_transform is not None:
            state["batch_transform"] = self.batch_transform.state_dict()
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(_numpy_tuple(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        saved = state.get("transforms", [])
        if len(saved) != len(self.transforms):
            raise ValueError(f"checkpoint holds {len(saved)} transform random states, the pipeline has "
                             f"{len(self.transforms)}: it was written by a different preprocessing")
        for transform, transform_state in zip(self.transforms, saved):
            transform.R.set_state(_numpy_tuple(transform_state))
        if ("batch_transform" in state) != (self.batch_transform is not None):
            raise ValueError("the checkpoint was written with the augmentation "
                             f"{'on the device' if 'batch_transform' in state else 'in the loader'}, this run has "
                             f"it {'on the device' if self.batch_transform is not None else 'in the loader'}: "
                             "resume with the same augment_on_device")
        if self.batch_transform is not None:
            self.batch_transform.load_state_dict(state["batch_transform"])


# ----------------------------------------------------------------------------- checkpoints
class AtomicCheckpointSaver:
    """Save checkpoints atomically at the end of each epoch of the engine it is attached to.

    ``mode="last"`` always writes ``filename`` (default ``last.pt``) with every object of
    ``save_dict`` (for resuming). ``mode="best"`` writes ``filename`` (default ``model.pt``) when
    the engine's metric ``key_metric_name`` improves (``metric_mode`` ``"max"``/``"min"``); a
    ``save_dict`` with a single object is stored as that object's plain state dict (MONAI's
    ``models/model.pt`` convention). DDP wrappers are unwrapped; only rank 0 should attach it.
    ``engine_key`` adds the engine it is attached to under that name (its epoch and iteration):
    a config cannot reference the trainer from the trainer's own handlers.
    """

    def __init__(self, save_dir: str | os.PathLike, save_dict: Mapping[str, Any], mode: str = "last",
                 filename: str | None = None, key_metric_name: str | None = None, metric_mode: str = "max",
                 engine_key: str | None = None) -> None:
        if mode not in ("last", "best"):
            raise ValueError(f"mode must be 'last' or 'best', got {mode!r}")
        if mode == "best" and not key_metric_name:
            raise ValueError("mode='best' needs key_metric_name")
        if metric_mode not in ("max", "min"):
            raise ValueError(f"metric_mode must be 'max' or 'min', got {metric_mode!r}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.mode = mode
        self.filename = filename or ("last.pt" if mode == "last" else "model.pt")
        self.key_metric_name = key_metric_name
        self.metric_mode = metric_mode
        self.engine_key = engine_key
        self.best: float | None = None

    @property
    def path(self) -> Path:
        return self.save_dir / self.filename

    def attach(self, engine: Engine) -> None:
        if self.engine_key:
            self.save_dict[self.engine_key] = engine
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.metric_mode == "max" else value < self.best

    def __call__(self, engine: Engine) -> None:
        if self.mode == "best":
            value = float(engine.state.metrics[self.key_metric_name])
            if self._improved(value):
                self.best = value
                logger.info("new best %s = %.4f: writing %s", self.key_metric_name, value, self.path)
            elif self.best is None and not math.isfinite(value):
                # nothing finite yet (e.g. a validation split with one class): keep the latest, provisionally
                logger.warning("%s is %s: writing %s provisionally", self.key_metric_name, value, self.path)
            else:
                return
        if len(self.save_dict) == 1 and self.mode == "best":
            payload = _state_of(next(iter(self.save_dict.values())))
        else:
            payload = {name: _state_of(obj) for name, obj in self.save_dict.items()}
        atomic_torch_save(payload, self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state.get("best")


class ResumeHandler:
    """Restore ``load_dict`` objects from a checkpoint when the engine starts.

    ``checkpoint`` is a path, ``"auto"`` (``save_dir/last.pt`` when it exists) or ``None``
    (nothing to resume). The engine's own entry restores epoch and iteration, so the run continues
    after the last completed epoch; ``max_epochs`` keeps the current run's value so a finished run
    can be extended. ``engine_key`` restores the engine it is attached to under that name.
    """

    def __init__(self, load_dict: Mapping[str, Any], checkpoint: str | os.PathLike | None = "auto",
                 save_dir: str | os.PathLike | None = None, map_location: str = "cpu",
                 engine_key: str | None = None) -> None:
        self.load_dict = dict(load_dict)
        self.engine_key = engine_key
        self.checkpoint = checkpoint
        self.save_dir = save_dir
        self.map_location = map_location

    def resolve(self) -> Path | None:
        if self.checkpoint is None or self.checkpoint == "":
            return None
        if self.checkpoint == "auto":
            if self.save_dir is None:
                raise ValueError("checkpoint='auto' needs save_dir")
            candidate = Path(self.save_dir) / "last.pt"
            return candidate if candidate.is_file() else None
        path = Path(self.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint to resume from not found")
        return path

    def attach(self, engine: Engine) -> None:
        if self.engine_key:
            self.load_dict[self.engine_key] = engine
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = self.resolve()
        if path is None:
            return
        checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        missing = [name for name in self.load_dict if name not in checkpoint]
        if missing:
            raise KeyError(f"{path}: checkpoint has no entry for {missing}; it has {sorted(checkpoint)}")
        max_epochs = engine.state.max_epochs
        for name, obj in self.load_dict.items():
            unwrap(obj).load_state_dict(checkpoint[name])
        engine.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d (iteration %d)", path, engine.state.epoch, engine.state.iteration)


# ----------------------------------------------------------------------------- reporting
def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The JSON-writable part of an engine's metrics: one-element tensors as numbers, dicts and others dropped."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float, np.floating, np.integer)):
            out[name] = float(value)
    return out


class MetricsJSONWriter:
    """Keep ``metrics.json`` up to date: per-epoch history of an evaluator's metrics and the best epoch.

    Attach it to the validation evaluator (a MONAI evaluator run by ``ValidationHandler`` carries
    the trainer's epoch). Other results (the final test evaluation) are added as sections with
    :meth:`add_section`.
    """

    def __init__(self, path: str | os.PathLike, key_metric_name: str | None = None, metric_mode: str = "max") -> None:
        self.path = Path(path)
        self.key_metric_name = key_metric_name
        self.metric_mode = metric_mode
        self.data: dict[str, Any] = {"history": []}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        entry = {"epoch": epoch, **scalar_metrics(engine.state.metrics)}
        history = [e for e in self.data["history"] if e["epoch"] != epoch] + [entry]
        self.data["history"] = history
        if self.key_metric_name:
            scored = [e for e in history if math.isfinite(e.get(self.key_metric_name, math.nan))]
            if scored:
                pick = max if self.metric_mode == "max" else min
                self.data["best"] = pick(scored, key=lambda e: e[self.key_metric_name])
        self.write()

    def add_section(self, name: str, values: Mapping[str, Any]) -> None:
        self.data[name] = scalar_metrics(values) if isinstance(values, Mapping) else values
        self.write()

    def write(self) -> None:
        atomic_write_text(json.dumps(self.data, indent=2, allow_nan=True) + "\n", self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"json": json.dumps(self.data)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.data = json.loads(state["json"])


class EarlyStopping:
    """Stop training when the evaluator's key metric has not improved for ``patience`` validations.

    Attached to the trainer (after its ``ValidationHandler``), it reads the evaluator's metrics, so
    no reference from the evaluator back to the trainer is needed. ``patience=None`` disables it.
    """

    def __init__(self, evaluator: Engine, key_metric_name: str, patience: int | None = None,
                 metric_mode: str = "max", min_delta: float = 0.0) -> None:
        self.evaluator, self.key_metric_name, self.patience = evaluator, key_metric_name, patience
        self.metric_mode, self.min_delta = metric_mode, min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    def attach(self, engine: Engine) -> None:
        if self.patience is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = float(self.evaluator.state.metrics.get(self.key_metric_name, math.nan))
        sign = 1.0 if self.metric_mode == "max" else -1.0
        if math.isfinite(value) and (self.best is None or sign * (value - self.best) > self.min_delta):
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            logger.info("early stopping: %s has not improved for %d epoch(s)", self.key_metric_name, self.bad_epochs)
            engine.terminate()

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad_epochs = state.get("best"), int(state.get("bad_epochs", 0))


class TensorBoardImageGrid:
    """Log a grid of the first ``max_images`` training inputs once per ``interval`` epochs."""

    def __init__(self, summary_writer: Any, tag: str = "train/inputs", max_images: int = 8, interval: int = 1,
                 image_key: str = "image") -> None:
        self.writer = summary_writer
        self.tag, self.max_images, self.interval, self.image_key = tag, max_images, interval, image_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        length = engine.state.epoch_length or 1
        first_of_epoch = (engine.state.iteration - 1) % length == 0
        if not first_of_epoch or engine.state.epoch % self.interval:
            return
        from torchvision.utils import make_grid

        images = engine.state.output[self.image_key][: self.max_images].detach().float().cpu()
        grid = make_grid(images, nrow=min(len(images), 8), normalize=True, scale_each=True)
        self.writer.add_image(self.tag, grid, engine.state.epoch)


class FinalTestHandler:
    """When training completes: load the best weights, run the test evaluator, record its metrics.

    The test split is touched exactly once, after model selection on the validation split.
    Optionally writes the best model with ``save_pretrained`` (a self-contained directory). With
    ``record=False`` (the other ranks of a torchrun launch) it tests without writing anything.
    """

    def __init__(self, evaluator: Engine, network: torch.nn.Module, checkpoint: str | os.PathLike,
                 metrics_writer: MetricsJSONWriter | None = None, pretrained_dir: str | os.PathLike | None = None,
                 section: str = "test", record: bool = True) -> None:
        self.evaluator = evaluator
        self.network = network
        self.checkpoint = Path(checkpoint)
        self.metrics_writer = metrics_writer
        self.pretrained_dir = pretrained_dir
        self.section = section
        self.record = bool(record)  # under torchrun only rank 0 records; every rank takes part in the test

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        model = unwrap(self.network)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # rank 0 may still be writing the best checkpoint
        if self.checkpoint.is_file():
            load_weights(model, self.checkpoint)
        else:
            logger.warning("%s not found: testing the last weights", self.checkpoint)
        if self.record and self.pretrained_dir is not None and hasattr(model, "save_pretrained"):
            model.save_pretrained(self.pretrained_dir)
        self.evaluator.run()
        metrics = scalar_metrics(self.evaluator.state.metrics)
        logger.info("test metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if self.record and self.metrics_writer is not None:
            self.metrics_writer.add_section(self.section, metrics)


def every_n_iterations(n: int) -> Callable[[Any, int], bool]:
    """An ``iteration_log`` / event filter that fires on every ``n``-th iteration (a config cannot hold a
    function; a lambda in it would be a procedure)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")

    def every(engine: Any, iteration: int) -> bool:
        return iteration % n == 0

    return every
