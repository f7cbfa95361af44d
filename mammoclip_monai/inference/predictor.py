"""The Python API for one's own images: zero-shot probabilities and image embeddings.

:class:`Predictor` reads files with the project's reader and preprocessing (VOI LUT,
MONOCHROME1, breast crop, laterality, resize), embeds each prompt dictionary once and keeps it,
and reports unreadable files instead of stopping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.pipelines import preprocessing
from ..networks.pretrained import load_pretrained
from ..networks.zero_shot import TEXT_PREFIXES, ZeroShotClassifier
from .data import ImageDataset, collate_readable, inference_datalist, read_error
from .writer import batch_identity, batch_rows

__all__ = ["Predictor"]

Prompts = Mapping[str, Sequence[str | Sequence[str]]]


class Predictor:
    """Zero-shot classification and embedding of mammogram files with a trained MammoCLIP.

    Files are normalised as the model's config says (``config.image_normalization``), so a model
    trained with another normalisation is served as it was trained. The model is put in eval mode
    (again on every call); work runs on the model's current device (moving the model later moves
    the work with it).

    Args:
        model: a :class:`~mammoclip_monai.networks.MammoCLIP`.
        prompts: default prompts, ``{"mass": ["no mass", "mass"], ...}`` (each class one prompt or a list
            of prompts) or prompt sets (:func:`~mammoclip_monai.text.prompts.load_prompt_sets`); ``None``
            uses the packaged prompt sets of ``tasks``.
        tasks: packaged prompt sets used when ``prompts`` is ``None``.
        device: where to move the model first (default: CUDA if available).
        batch_size, num_workers: of the file loader.
        allow_any_modality: accept DICOM files whose modality is not MG.
    """

    def __init__(self, model: torch.nn.Module, prompts: Prompts | None = None,
                 tasks: Sequence[str] = ("mass", "calcification", "density"), device: torch.device | str | None = None,
                 batch_size: int = 8, num_workers: int = 0, allow_any_modality: bool = False) -> None:
        self.model = model.eval().to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        self.image_size = tuple(int(s) for s in model.config.image_size)
        self.prompts = prompts
        self.tasks = tuple(tasks)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.preprocessing = preprocessing(spatial_size=self.image_size, allow_any_modality=allow_any_modality,
                                           normalization=model.config.image_normalization)
        self._classifiers: dict[str, ZeroShotClassifier] = {}
        self._text_version: tuple[int, torch.device] | None = None

    @property
    def device(self) -> torch.device:
        """Where the model is now (not where it was when the predictor was made)."""
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> Predictor:
        """A predictor over the trained weights at ``path``: a ``save_pretrained`` directory (e.g.
        ``bundle/models/pretrained``), a bundle checkpoint or an original Mammo-CLIP ``.tar``
        (:func:`~mammoclip_monai.networks.pretrained.load_pretrained`)."""
        return cls(load_pretrained(path), **kwargs)

    def classifier(self, prompts: Prompts | None = None) -> ZeroShotClassifier:
        """The single-input classifier for ``prompts`` on the model's device (embedded once and cached until
        the text tower's weights change or the model moves)."""
        prompts = self.prompts if prompts is None else prompts
        # prompt sets (dataclasses) are keyed by their repr, prompt dictionaries by their JSON
        key = (json.dumps(prompts, sort_keys=True, default=repr) if prompts is not None
               else "tasks:" + ",".join(self.tasks))
        # in-place updates (optimizer steps, load_state_dict) bump a tensor's version: re-embed after them
        version = sum(p._version for name, p in self.model.named_parameters() if name.startswith(TEXT_PREFIXES))
        device = self.device
        if self._text_version != (version, device):
            self._classifiers.clear()
            self._text_version = (version, device)
        if key not in self._classifiers:
            classifier = ZeroShotClassifier(self.model, dict(prompts) if prompts is not None else None,
                                            tasks=self.tasks)
            self._classifiers[key] = classifier.to(device)
        self.model.eval()  # shared with the classifier; the model may have been trained since the last call
        return self._classifiers[key]

    def batches(self, inputs: Any, progress: bool = False) -> Iterator[dict[str, Any]]:
        """Preprocessed batches of the readable files of ``inputs`` (files, folders or a CSV); each carries
        the ``failed`` records of the files that could not be read."""
        items = inference_datalist(inputs)
        loader = torch.utils.data.DataLoader(ImageDataset(items, self.preprocessing), batch_size=self.batch_size,
                                             num_workers=self.num_workers, collate_fn=collate_readable)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), unit="image", desc="mammoclip")
            for batch in loader:
                yield batch
                bar.update(len(batch["failed"]) + (batch["image"].shape[0] if "image" in batch else 0))
            bar.close()
        else:
            yield from loader

    @torch.no_grad()
    def predict_many(self, inputs: Any, prompts: Prompts | None = None, progress: bool = False
                     ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """``(records, errors)``: per readable image its identity and ``probabilities``; per bad file the reason."""
        classifier = self.classifier(prompts)
        rows, errors = [], []
        for batch in self.batches(inputs, progress):
            errors.extend(batch["failed"])
            if "image" in batch:
                probabilities = classifier(batch["image"].as_tensor().to(self.device))
                rows.extend(batch_rows(batch, probabilities, classifier.output_names))
        return rows, errors

    @torch.no_grad()
    def predict(self, image: str | os.PathLike | torch.Tensor, prompts: Prompts | None = None
                ) -> dict[str, float] | list[dict[str, float]]:
        """Probabilities ``{output name: p}`` for one file (a bad file raises
        :class:`~mammoclip_monai.data.reader.MammogramReadError`), or a list for a preprocessed batch
        ``(B, 1, H, W)``. A two-class prompt set gives the probability of its last class."""
        classifier = self.classifier(prompts)
        if isinstance(image, torch.Tensor):
            return classifier.as_dicts(classifier(image.to(self.device)))
        try:
            tensor = self.preprocessing({"image": os.fspath(image)})["image"]
        except RuntimeError as err:  # MONAI wraps the reader's error: raise the one that names the file
            reason = read_error(err)
            if reason is None:
                raise
            raise reason from None
        return classifier.as_dicts(classifier(tensor.as_tensor()[None].to(self.device)))[0]

    @torch.no_grad()
    def embed(self, inputs: Any, progress: bool = False
              ) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, str]]]:
        """``(embeddings (N, D) float32, L2-normalised; one identity record per row; errors)``."""
        vectors, rows, errors = [], [], []
        self.model.eval()
        for batch in self.batches(inputs, progress):
            errors.extend(batch["failed"])
            if "image" in batch:
                features = self.model.encode_image(batch["image"].as_tensor().to(self.device), normalize=True)
                vectors.append(features.float().cpu().numpy())
                rows.extend(batch_identity(batch))
        dim = int(self.model.config.embed_dim)
        return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), rows, errors
