"""Importing released Mammo-CLIP checkpoints, checked against a re-implementation of the original forward.

The reference network is the lukemelas ``EfficientNet`` itself (``efficientnet_pytorch``), random
B0/B2 weights, plus a small random Hugging Face ``BertModel``: the checkpoint is written in the
original layout (``_fc.*`` and ``pooler.*`` included, optimizer/scheduler/config/epoch/train_loss
next to it, an ``argparse.Namespace`` config with cluster paths) and must import to the same
embeddings.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import efficientnet_pytorch  # noqa: F401  the lukemelas reference implementation ([dev] extra)

from mammoclip_monai.networks import weights  # noqa: E402
from mammoclip_monai.networks.checkpoints import (  # noqa: E402
    detect_efficientnet_variant,
    infer_bert_config,
    load_original_mammoclip,
    read_checkpoint,
)
from mammoclip_monai.networks.encoders import EfficientNetBNImageEncoder  # noqa: E402
from mammoclip_monai.networks.mammoclip import MammoCLIP  # noqa: E402

TOL = 1e-5
NO_TOKENIZER = pytest.mark.filterwarnings("ignore:load_original_mammoclip. no text_model")


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch, tmp_path_factory):
    """Offline and with an empty hub cache, whatever the environment: environment variables are read
    when huggingface_hub is imported (possibly by another test module first), so patch its constants."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty_hub_cache")))


class _Holder(nn.Module):
    """Attribute container that reproduces the original module nesting (and so its key names)."""


class OriginalReference(nn.Module):
    """The original Mammo-CLIP forward, written independently of the library under test."""

    def __init__(self, efficientnet: nn.Module, bert: nn.Module, embed_dim: int = 512) -> None:
        super().__init__()
        self.image_encoder = efficientnet
        self.text_encoder = _Holder()
        self.text_encoder.text_encoder = bert
        self.image_projection = _Holder()
        self.image_projection.projection = nn.Linear(efficientnet._fc.in_features, embed_dim)
        self.text_projection = _Holder()
        self.text_projection.projection = nn.Linear(bert.config.hidden_size, embed_dim)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def encode_image(self, grey: torch.Tensor) -> torch.Tensor:
        rgb = grey.repeat(1, 3, 1, 1)  # the original copies the grey image to 3 channels
        net = self.image_encoder
        features = net._dropout(net._avg_pooling(net.extract_features(rgb)).flatten(start_dim=1))
        return F.normalize(self.image_projection.projection(features), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_encoder.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # right padding: the [SEP] position
        features = hidden[torch.arange(hidden.shape[0]), last]
        return F.normalize(self.text_projection.projection(features), dim=-1)


class NotAllowListed:
    """Stands for e.g. an OmegaConf object inside the embedded config (module level: picklable)."""

    def __init__(self, value: str) -> None:
        self.value = value


def _randomise_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _make_reference(variant: str, heads: int, seed: int = 0) -> OriginalReference:
    from efficientnet_pytorch import EfficientNet
    from transformers import BertModel

    torch.manual_seed(seed)
    efficientnet = EfficientNet.from_name(variant, num_classes=1)
    _randomise_bn(efficientnet)
    bert = BertModel(weights.fallback_text_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=heads,
                                                  intermediate_size=128), add_pooling_layer=True)
    return OriginalReference(efficientnet, bert).eval()


def _original_layout(reference: OriginalReference) -> dict:
    optimizer = torch.optim.AdamW(reference.parameters(), lr=5e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    config = argparse.Namespace(
        data_dir="/restricted/projectnb/batmanlab/shared/Data/RSNA_Breast_Imaging/Dataset",
        checkpoints="/restricted/projectnb/batmanlab/shawn24/PhD/Mammo-CLIP/checkpoints",
        img_size=[1520, 912], max_length=256, arch="upmc_breast_clip_det_b5_period_n_ft",
    )
    return {"model": reference.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "config": config, "epoch": 7, "train_loss": np.float64(0.4217)}


@pytest.fixture(scope="module")
def tokenizer():
    return weights.fallback_tokenizer()


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, tokenizer):
    """What a user's local Bio_ClinicalBERT copy provides: config + tokenizer (weights not needed)."""
    directory = tmp_path_factory.mktemp("bert_config")
    weights.fallback_text_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def b0_checkpoint(tmp_path_factory):
    """B0 reference with one attention head (so hidden/64 infers it) saved in the original layout."""
    reference = _make_reference("efficientnet-b0", heads=1)
    path = tmp_path_factory.mktemp("ckpt") / "b0-model-best-epoch-7.tar"
    torch.save(_original_layout(reference), path)
    return reference, path


def _inputs(tokenizer, seed: int = 1):
    torch.manual_seed(seed)
    tokens = tokenizer(["Spiculated mass, left breast, upper outer quadrant; BI-RADS 5.", "Benign."],
                       padding=True, return_tensors="pt")
    return torch.randn(2, 1, 128, 96), tokens["input_ids"], tokens["attention_mask"]


def _max_diffs(reference: OriginalReference, model: MammoCLIP, tokenizer) -> tuple[float, float]:
    image, ids, mask = _inputs(tokenizer)
    assert mask[1].sum() < mask.shape[1]  # padding is exercised
    with torch.no_grad():
        image_diff = (reference.encode_image(image) - model.encode_image(image)).abs().max().item()
        text_diff = (reference.encode_text(ids, mask) - model.encode_text(ids, mask)).abs().max().item()
    return image_diff, text_diff


# ----------------------------------------------------------------------------- the reference test


def test_b0_checkpoint_imports_to_the_original_embeddings(b0_checkpoint, tokenizer, caplog):
    reference, path = b0_checkpoint
    with caplog.at_level(logging.INFO, logger="mammoclip_monai.networks.checkpoints"):
        with pytest.warns(UserWarning, match="NO tokenizer"):
            model = load_original_mammoclip(path)
    assert "_fc.weight" in caplog.text and "pooler.dense.weight" in caplog.text
    assert not model.training and model.tokenizer is None
    assert model.config.image_backend == "efficientnet_bn" and model.config.image_model == "efficientnet-b0"
    assert model.text_encoder.config.num_attention_heads == 1 and model.config.text_pooling == "eos"
    image_diff, text_diff = _max_diffs(reference, model, tokenizer)
    print(f"original b0 import: image max|diff| {image_diff:.2e}, text max|diff| {text_diff:.2e}")
    assert image_diff < TOL and text_diff < TOL
    assert model.get_logit_scale().item() == pytest.approx(1 / 0.07)


def test_b2_checkpoint_with_local_text_model(tmp_path, tiny_bert_dir, tokenizer):
    reference = _make_reference("efficientnet-b2", heads=4, seed=3)
    path = tmp_path / "b2-model-best-epoch-10.tar"
    torch.save(_original_layout(reference), path)
    model = load_original_mammoclip(path, text_model=tiny_bert_dir)
    assert model.config.image_model == "efficientnet-b2" and model.image_encoder.feature_dim == 1408
    assert model.image_encoder.model._dropout.p == pytest.approx(0.3)
    assert model.tokenizer is not None
    image_diff, text_diff = _max_diffs(reference, model, tokenizer)
    print(f"original b2 import: image max|diff| {image_diff:.2e}, text max|diff| {text_diff:.2e}")
    assert image_diff < TOL and text_diff < TOL
    # an imported model saves and reloads like any other (safetensors, offline)
    reloaded = MammoCLIP.from_pretrained(model.save_pretrained(tmp_path / "converted"))
    image, ids, mask = _inputs(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(image, ids, mask), model(image, ids, mask), rtol=0, atol=0)


# ----------------------------------------------------------------------------- strictness


def _resave(tmp_path, b0_checkpoint, edit) -> str:
    checkpoint = torch.load(b0_checkpoint[1], weights_only=False)
    edit(checkpoint["model"])
    path = tmp_path / "edited.tar"
    torch.save(checkpoint, path)
    return str(path)


@NO_TOKENIZER
def test_unknown_key_is_an_error_naming_it(tmp_path, b0_checkpoint):
    path = _resave(tmp_path, b0_checkpoint, lambda s: s.__setitem__("image_encoder._extra.weight", torch.zeros(1)))
    with pytest.raises(KeyError, match=r"image_encoder\._extra\.weight"):
        load_original_mammoclip(path)
    path = _resave(tmp_path, b0_checkpoint, lambda s: s.__setitem__("text_encoder.head.bias", torch.zeros(1)))
    with pytest.raises(KeyError, match=r"text_encoder\.head\.bias"):
        load_original_mammoclip(path)


@NO_TOKENIZER
def test_missing_key_is_an_error_naming_it(tmp_path, b0_checkpoint):
    path = _resave(tmp_path, b0_checkpoint, lambda s: s.pop("image_encoder._blocks.3._bn1.running_var"))
    with pytest.raises(KeyError, match=r"missing keys \['image_encoder\._blocks\.3\._bn1\.running_var'\]"):
        load_original_mammoclip(path)
    path = _resave(tmp_path, b0_checkpoint, lambda s: s.pop("text_projection.projection.bias"))
    with pytest.raises(KeyError, match=r"text_projection\.projection\.bias"):
        load_original_mammoclip(path)


@NO_TOKENIZER
def test_position_ids_buffer_is_dropped_only_when_it_is_an_arange(tmp_path, b0_checkpoint):
    key = "text_encoder.text_encoder.embeddings.position_ids"
    path = _resave(tmp_path, b0_checkpoint, lambda s: s.__setitem__(key, torch.arange(512)[None]))
    with pytest.warns(UserWarning, match="NO tokenizer"):
        load_original_mammoclip(path)
    path = _resave(tmp_path, b0_checkpoint, lambda s: s.__setitem__(key, torch.zeros(1, 512, dtype=torch.long)))
    with pytest.raises(ValueError, match="position_ids"):
        load_original_mammoclip(path)


def test_non_allow_listed_config_needs_trusted(tmp_path, b0_checkpoint):
    checkpoint = torch.load(b0_checkpoint[1], weights_only=False)
    checkpoint["config"] = NotAllowListed("/projectnb/cluster/path")
    path = tmp_path / "omegaconf-like.tar"
    torch.save(checkpoint, path)
    with pytest.raises(pickle.UnpicklingError, match="NotAllowListed.*trusted=True"):
        read_checkpoint(path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        loaded = read_checkpoint(path, trusted=True)
    assert isinstance(loaded["config"], NotAllowListed)
    # the default layout (Namespace config, numpy loss) needs no trust
    assert isinstance(read_checkpoint(b0_checkpoint[1])["config"], argparse.Namespace)


# ----------------------------------------------------------------------------- shapes only (B5 and friends)


@pytest.mark.parametrize("variant", [f"efficientnet-b{i}" for i in range(8)])
def test_variant_detection_and_key_mapping_from_shapes(variant):
    """Every B* (B5 included) detected from lukemelas shapes and name-mapped to MONAI, on the meta device."""
    from efficientnet_pytorch import EfficientNet

    with torch.device("meta"):
        lukemelas = EfficientNet.from_name(variant, num_classes=1).state_dict()
        encoder = EfficientNetBNImageEncoder(variant)
    assert detect_efficientnet_variant(lukemelas) == variant
    ours = encoder.model.state_dict()
    mapping = encoder.lukemelas_key_map()
    assert set(mapping.values()) == set(lukemelas) - {"_fc.weight", "_fc.bias"}
    for our_key, luke_key in mapping.items():
        expected = lukemelas[luke_key].shape
        if our_key == "_conv_stem.weight":  # folded to 1 channel
            expected = torch.Size([expected[0], 1, *expected[2:]])
        assert ours[our_key].shape == expected, our_key
    if variant == "efficientnet-b5":
        assert lukemelas["_conv_head.weight"].shape[0] == 2048


def test_infer_bert_config_matches_bio_clinicalbert_shapes():
    shapes = {"embeddings.word_embeddings.weight": (28996, 768), "embeddings.position_embeddings.weight": (512, 768),
              "embeddings.token_type_embeddings.weight": (2, 768),
              "encoder.layer.0.intermediate.dense.weight": (3072, 768),
              "encoder.layer.11.output.dense.weight": (768, 3072)}
    config = infer_bert_config({k: torch.empty(v, device="meta") for k, v in shapes.items()})
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size) == (28996, 768, 12, 12, 3072)


def test_lukemelas_imagenet_loader_folds_the_stem(monkeypatch):
    """The paper's ImageNet init path, with the download replaced by a local lukemelas state dict."""
    from efficientnet_pytorch import EfficientNet

    torch.manual_seed(0)
    lukemelas = EfficientNet.from_name("efficientnet-b0")  # 1000 classes, like the released ImageNet file
    _randomise_bn(lukemelas)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: lukemelas.state_dict())
    encoder = EfficientNetBNImageEncoder("efficientnet-b0")
    weights.load_lukemelas_imagenet(encoder)
    lukemelas.eval(), encoder.eval()
    x = torch.randn(1, 1, 96, 64)
    with torch.no_grad():
        expected = lukemelas._avg_pooling(lukemelas.extract_features(x.repeat(1, 3, 1, 1))).flatten(1)
        assert (encoder(x) - expected).abs().max().item() < 1e-4
