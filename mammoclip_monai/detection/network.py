"""The detector: MammoCLIP image encoder stages -> feature pyramid -> MONAI RetinaNet -> boxes.

Everything RetinaNet needs beyond the backbone comes from ``monai.apps.detection`` (heads, anchors,
ATSS matching, hard-negative sampling, box coding, NMS); this module adds the bridge from the
encoder's stages to MONAI's ``FeaturePyramidNetwork`` and one class, :class:`MammoDetector`, that
speaks the project's box convention (``[x_min, y_min, x_max, y_max]``, x along columns) on both
sides while MONAI's detector works in array-axis order (see :mod:`.boxes`).

One detector covers several classes (mass, suspicious calcification, any VinDr category):
``classes`` maps a class name to the finding categories whose boxes it learns.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGenerator
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from safetensors.torch import save_file
from torch import nn

from ..networks.checkpoints import load_weights
from ..networks.mammoclip import MammoCLIPConfig, build_image_encoder, load_safetensors
from ..utils.errors import InvalidInputError
from ..utils.files import atomic_path, atomic_write_text
from ..utils.input_files import read_json_file
from .boxes import from_monai_order, to_monai_order

__all__ = ["DEFAULT_CLASSES", "ENCODER_INITS", "EncoderFeaturePyramid", "MammoDetector", "initialise_encoder"]

DETECTOR_FORMAT = "mammoclip-monai-detector"
DETECTOR_CONFIG = "detector.json"
DETECTOR_WEIGHTS = "detector.safetensors"

DEFAULT_CLASSES: dict[str, list[str]] = {"mass": ["Mass"], "calcification": ["Suspicious Calcification"]}
"""Class name -> the finding categories (VinDr names, as in the datalists) it is trained on."""


class EncoderFeaturePyramid(nn.Module):
    """The image encoder's stage outputs at ``strides`` through MONAI's ``FeaturePyramidNetwork``.

    Works for any encoder with ``stage_channels(strides)`` / ``forward_stages(x, strides)`` (the timm
    and MONAI EfficientNetBN towers of :mod:`mammoclip_monai.networks.encoders`). ``max_pool_level``
    adds a coarser level by max-pooling the last one (RetinaNet's P6), for lesions larger than the
    coarsest stride's anchors.
    """

    def __init__(self, encoder: nn.Module, out_channels: int = 64, strides: Sequence[int] = (8, 16, 32),
                 max_pool_level: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.strides = tuple(int(s) for s in strides)
        self.out_channels = int(out_channels)  # RetinaNet reads this attribute
        extra = LastLevelMaxPool(spatial_dims=2) if max_pool_level else None
        self.fpn = FeaturePyramidNetwork(spatial_dims=2, in_channels_list=encoder.stage_channels(self.strides),
                                         out_channels=self.out_channels, extra_blocks=extra)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stages = self.encoder.forward_stages(x, self.strides)
        return self.fpn(OrderedDict((f"s{s}", f) for s, f in zip(self.strides, stages, strict=True)))


class MammoDetector(nn.Module):
    """A multi-class RetinaNet on a MammoCLIP image encoder.

    ``forward(images, targets)`` in training mode returns MONAI's loss dict (``classification``,
    ``box_regression``); in eval mode it returns, per image, ``{"boxes", "scores", "labels"}`` in the
    network-input pixels, project box order. Targets are ``{"boxes": (M, 4), "labels": (M,)}`` in the
    same frame and order; an image without boxes is a negative (all anchors background).

    Args:
        encoder: a MammoCLIP image encoder (``model.image_encoder``), pretrained or ImageNet-initialised.
        classes: class name -> finding categories (``DEFAULT_CLASSES``).
        fpn_channels / strides / max_pool_level: the feature pyramid (:class:`EncoderFeaturePyramid`).
        anchor_sizes: anchor side lengths in input pixels, one tuple per pyramid level.
        aspect_ratios: height / width ratios of the anchors (the same at every level).
        atss_candidates: ATSS matcher candidates per level (MONAI's ``set_atss_matcher``).
        sampler_batch / positive_fraction / min_negatives / pool_size: MONAI's hard-negative sampler.
        score_threshold / nms_threshold / detections_per_image / topk_per_level: MONAI's box selector.
        freeze_stride: the encoder's stem and stages up to this output stride keep their weights
            (0: train everything). They are the cheapest to keep and the dearest to train: at the
            highest resolution, their backward pass is a third of a training step on a CPU.
        model_config: ``MammoCLIPConfig.to_dict()`` of the model the encoder came from; with it
            :meth:`save_pretrained` writes a directory that :meth:`from_pretrained` rebuilds alone
            (encoder architecture, input size and intensity normalisation included).
    """

    def __init__(self, encoder: nn.Module, classes: Mapping[str, Sequence[str]] | None = None,
                 fpn_channels: int = 64, strides: Sequence[int] = (8, 16, 32), max_pool_level: bool = False,
                 anchor_sizes: Sequence[Sequence[float]] = ((16, 24), (32, 48), (64, 96)),
                 aspect_ratios: Sequence[float] = (1.0,), atss_candidates: int = 4,
                 sampler_batch: int = 64, positive_fraction: float = 0.3, min_negatives: int = 16,
                 pool_size: float = 20, score_threshold: float = 0.02, nms_threshold: float = 0.2,
                 detections_per_image: int = 50, topk_per_level: int = 1000,
                 freeze_stride: int = 4, model_config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.model_config = None if model_config is None else dict(model_config)
        classes = dict(DEFAULT_CLASSES if classes is None else classes)
        if not classes:
            raise ValueError("a detector needs at least one class")
        levels = len(strides) + int(max_pool_level)
        if len(anchor_sizes) != levels:
            raise ValueError(f"anchor_sizes has {len(anchor_sizes)} level(s) but the pyramid has {levels} "
                             f"(strides {tuple(strides)}{' + a max-pool level' if max_pool_level else ''})")
        self.class_names = list(classes)
        self.config: dict[str, Any] = dict(  # JSON-able: saved beside the weights, enough to rebuild
            classes={k: list(v) for k, v in classes.items()}, fpn_channels=int(fpn_channels),
            strides=[int(s) for s in strides], max_pool_level=bool(max_pool_level),
            anchor_sizes=[[float(s) for s in level] for level in anchor_sizes],
            aspect_ratios=[float(a) for a in aspect_ratios], atss_candidates=int(atss_candidates),
            sampler_batch=int(sampler_batch), positive_fraction=float(positive_fraction),
            min_negatives=int(min_negatives), pool_size=float(pool_size), score_threshold=float(score_threshold),
            nms_threshold=float(nms_threshold), detections_per_image=int(detections_per_image),
            topk_per_level=int(topk_per_level), freeze_stride=int(freeze_stride))
        for layer in encoder.early_layers(freeze_stride) if freeze_stride else []:
            layer.requires_grad_(False)
        anchors = AnchorGenerator(sizes=tuple(tuple(level) for level in anchor_sizes),
                                  aspect_ratios=(tuple(aspect_ratios),) * levels)
        pyramid = EncoderFeaturePyramid(encoder, fpn_channels, strides, max_pool_level)
        coarsest = max(strides) * (2 if max_pool_level else 1)
        network = RetinaNet(spatial_dims=2, num_classes=len(classes),
                            num_anchors=anchors.num_anchors_per_location()[0],
                            feature_extractor=pyramid, size_divisible=coarsest)
        self.detector = RetinaNetDetector(network, anchors)
        self.detector.set_atss_matcher(num_candidates=atss_candidates, center_in_gt=False)
        self.detector.set_hard_negative_sampler(batch_size_per_image=sampler_batch,
                                                positive_fraction=positive_fraction,
                                                min_neg=min_negatives, pool_size=pool_size)
        self.detector.set_target_keys(box_key="boxes", label_key="labels")
        self.detector.set_box_selector_parameters(score_thresh=score_threshold,
                                                  topk_candidates_per_level=topk_per_level,
                                                  nms_thresh=nms_threshold, detections_per_img=detections_per_image)

    @property
    def network(self) -> RetinaNet:
        """The RetinaNet (pyramid + heads) inside MONAI's detector: what TorchScript / .pt2 export."""
        return self.detector.network

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The ``(H, W)`` input of the model the encoder came from (``None`` without ``model_config``)."""
        size = (self.model_config or {}).get("image_size")
        return None if size is None else (int(size[0]), int(size[1]))

    @property
    def image_normalization(self) -> dict[str, Any] | None:
        """The intensity normalisation the encoder was trained with (``None`` without ``model_config``)."""
        return (self.model_config or {}).get("image_normalization")

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """``detector.json`` (detector and encoder settings) + ``detector.safetensors``, atomically."""
        if self.model_config is None:
            raise ValueError("save_pretrained needs the encoder's model_config (MammoDetector(..., model_config="
                             "model.config.to_dict())): without it the directory could not be rebuilt")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / DETECTOR_WEIGHTS) as tmp:
            # contiguous copies: channels-last weights (a faster CPU layout) are not flat views
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp),
                      metadata={"format": "pt", "library": "mammoclip_monai"})
        record = {"format": DETECTOR_FORMAT, "detector": self.config, "model": self.model_config}
        atomic_write_text(json.dumps(record, indent=2) + "\n", out / DETECTOR_CONFIG)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> MammoDetector:
        """Rebuild a detector written by :meth:`save_pretrained` (offline, safetensors only), in eval mode."""
        path = Path(directory)
        record = read_json_file(path / DETECTOR_CONFIG, "a detector.json written by MammoDetector.save_pretrained")
        if not isinstance(record, dict) or record.get("format") != DETECTOR_FORMAT:
            raise InvalidInputError(path / DETECTOR_CONFIG, f"not a detector description (format is not "
                                                            f"{DETECTOR_FORMAT!r})")
        model_config = MammoCLIPConfig.from_dict(record["model"], source=path / DETECTOR_CONFIG)
        detector = cls(build_image_encoder(model_config, init_towers=False), **record["detector"],
                       model_config=model_config.to_dict())
        load_safetensors(detector, path / DETECTOR_WEIGHTS)
        return detector.to(map_location).eval()

    @property
    def encoder(self) -> nn.Module:
        """The image encoder inside the pyramid (for freezing, learning rates, checkpoint loading)."""
        return self.network.feature_extractor.encoder

    def param_groups(self, lr: float, encoder_lr: float | None = None, weight_decay: float = 1e-4
                     ) -> list[dict[str, Any]]:
        """Encoder and new layers (pyramid, heads) as two optimiser groups: a pretrained encoder
        usually wants a smaller learning rate than the layers that start from scratch."""
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        new = [p for p in self.parameters() if id(p) not in encoder_ids]
        return [{"params": encoder, "lr": lr if encoder_lr is None else encoder_lr,
                 "weight_decay": weight_decay},
                {"params": new, "lr": lr, "weight_decay": weight_decay}]

    def forward(self, images: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]] | None = None
                ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("training the detector needs targets: one {'boxes', 'labels'} dict per image")
            monai_targets = [{"boxes": to_monai_order(t["boxes"]).to(images.device, torch.float32),
                              "labels": torch.as_tensor(t["labels"], dtype=torch.long, device=images.device)}
                             for t in targets]
            return self.detector(images, monai_targets)
        outputs = self.detector(images)
        return [{"boxes": from_monai_order(o["boxes"]), "scores": o["labels_scores"], "labels": o["labels"]}
                for o in outputs]


ENCODER_INITS = ("mammoclip", "imagenet", "random")


def initialise_encoder(model: nn.Module, init: str, checkpoint: str | None = None) -> nn.Module:
    """Give a MammoCLIP model the encoder weights a detection run starts from, and return it.

    ``"mammoclip"`` loads the contrastive checkpoint (the pretraining whose value detection
    measures); ``"imagenet"`` and ``"random"`` keep what ``create_model(init_towers=...)`` built (the
    config sets ``init_towers`` from ``init``), so the baselines differ from it in the weights only.
    """
    if init not in ENCODER_INITS:
        raise ValueError(f"detection encoder init must be one of {ENCODER_INITS}, got {init!r}")
    if init == "mammoclip":
        if checkpoint is None:
            raise ValueError("init='mammoclip' needs the contrastive checkpoint (models/model.pt): train it first "
                             "with bundle/configs/train.json, or pass --detection_init imagenet")
        load_weights(model, checkpoint)
    return model
