"""The bundle's zero-shot classifier as a MONAI Label classification task.

MONAI Label's generic bundle task treats a bundle as segmentation unless told otherwise and then
maps the output back onto the image grid. The MammoCLIP bundle's network returns one probability
per finding (``mass``, ``calcification``, ``density_A`` ...), so this task declares itself a
classification task, skips the restore step and answers with named scores.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

logger = logging.getLogger(__name__)

OUTPUT_NAMES_ID = "output_names"
"""inference.json id holding the column names of the network's output, in order."""


class _KeyMismatchIsExpected(logging.Filter):
    """Drop MONAI Label's checkpoint/network key comparison warnings.

    ``models/model.pt`` is the full dual-encoder state dict; ``ZeroShotClassifier`` takes the
    text-tower keys in a load pre-hook, so the plain key comparison MONAI Label does before loading
    always reports hundreds of "mismatched" keys. The load itself is strict, so a checkpoint that
    really does not fit still fails loudly.
    """

    _PREFIXES = ("Checkpoint keys don't match", "The run will now continue unless load_strict")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._PREFIXES)


logging.getLogger("monailabel.tasks.infer.basic_infer").addFilter(_KeyMismatchIsExpected())


class MammoClipClassification(BundleInferTask):
    """Per-finding probabilities for one mammogram, read from a local MammoCLIP bundle.

    ``path`` is the bundle directory (``configs/inference.json``, ``configs/metadata.json``,
    ``models/model.pt``). The result JSON holds ``scores`` (``{name: probability}``) and
    ``prediction`` (MONAI Label's own classification list of ``{idx, label, score}``).
    """

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        super().__init__(
            path,
            conf,
            type=InferType.CLASSIFICATION,
            add_post_restore=False,  # scores have no image grid to restore onto
            load_strict=True,
            **kwargs,
        )
        self.output_names: list[str] = []
        if not self.is_valid():
            return
        # The parent offers the bundle's models/*.pt as a request option and loads the file a
        # request names (joined to models/, so an absolute path loads any file): serve model.pt only.
        self._config.pop("model_filename", None)
        self.output_names = self._read_output_names()
        # The parent builds labels from metadata.json, lower-cased ("density_a"): keep the bundle's names.
        self.labels = {name: index for index, name in enumerate(self.output_names)}

    def _read_output_names(self) -> list[str]:
        """Column names from inference.json (the network's own list), else from metadata.json's channel_def."""
        if self.bundle_config.get(OUTPUT_NAMES_ID) is not None:
            # Parsed lazily: reuses the network instance the parent already built from network_def.
            return [str(name) for name in self.bundle_config.get_parsed_content(OUTPUT_NAMES_ID)]
        with open(os.path.join(self.bundle_path, "configs", self.const.metadata_json())) as f:
            channel_def = json.load(f)["network_data_format"]["outputs"][self.key_pred]["channel_def"]
        return [str(channel_def[index]) for index in sorted(channel_def, key=int)]

    def writer(self, data: dict[str, Any], extension: str | None = None,
               dtype: Any | None = None) -> tuple[None, dict[str, Any]]:
        """No label file: the answer is the JSON of named scores."""
        scores = torch.as_tensor(data[self.output_label_key], dtype=torch.float32).detach().cpu().flatten().tolist()
        if len(scores) != len(self.output_names):
            raise MONAILabelException(
                MONAILabelError.INFERENCE_ERROR,
                f"the network returned {len(scores)} scores for {len(self.output_names)} output names",
            )
        return None, {
            "scores": dict(zip(self.output_names, scores)),
            "prediction": [
                {"idx": index, "label": name, "score": score}
                for index, (name, score) in enumerate(zip(self.output_names, scores))
            ],
        }
