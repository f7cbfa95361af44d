"""Contrastive losses against hand-built references (explicit loops, F.cross_entropy on hand-made logits)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mammoclip_monai.losses import (
    ClipLoss,
    MultiViewClipLoss,
    SigLipLoss,
    build_loss,
    gather_no_grad,
    gather_sizes,
    gather_with_grad,
    is_distributed,
    label_aware_targets,
    local_offset,
    rank,
    world_size,
)

DT = torch.float64


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=DT), dim=-1)


# ----------------------------------------------------------------------------- references
def ref_logits(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """s * <a_i, b_j>, one dot product at a time."""
    rows = []
    for i in range(a.shape[0]):
        rows.append(torch.stack([s * torch.sum(a[i] * b[j]) for j in range(b.shape[0])]))
    return torch.stack(rows)


def ref_ce(logits: torch.Tensor, targets: torch.Tensor | None = None, kl: bool = True) -> torch.Tensor:
    """Hard diagonal CE via F.cross_entropy, or soft CE -sum(t log softmax) row by row, minus
    the targets' entropy when ``kl`` (the losses report KL(t || p) for soft targets)."""
    if targets is None:
        return F.cross_entropy(logits, torch.arange(logits.shape[0]))
    per_row = []
    for i in range(logits.shape[0]):
        t = targets[i].to(logits.dtype)
        ce = -(t * torch.log_softmax(logits[i], dim=0)).sum()
        entropy = -sum(float(v) * math.log(float(v)) for v in t if v > 0)
        per_row.append(ce - entropy if kl else ce)
    return torch.stack(per_row).mean()


def ref_clip(img, txt, s, t_fwd=None, t_bwd=None, kl=True):
    return 0.5 * (ref_ce(ref_logits(img, txt, s), t_fwd, kl) + ref_ce(ref_logits(txt, img, s), t_bwd, kl))


def ref_multiview(i1, t1, s, i2=None, t2=None, w=(1.0, 1.0, 0.5), targets=None):
    images = [x for x in (i1, i2) if x is not None]
    texts = [x for x in (t1, t2) if x is not None]
    i2t = sum(ref_ce(ref_logits(i, t, s), targets) for i in images for t in texts) / (len(images) * len(texts))
    t2i = sum(ref_ce(ref_logits(t, i, s), targets) for i in images for t in texts) / (len(images) * len(texts))
    loss = w[0] * 0.5 * (i2t + t2i)
    if i2 is not None:
        loss = loss + w[1] * 0.5 * (ref_ce(ref_logits(i1, i2, s), targets) + ref_ce(ref_logits(i2, i1, s), targets))
    if t2 is not None:
        loss = loss + w[2] * 0.5 * (ref_ce(ref_logits(t1, t2, s), targets) + ref_ce(ref_logits(t2, t1, s), targets))
    return loss


def ref_siglip(img, txt, s, b, positive=None):
    """Zhai et al. 2023: the sum over every (image, text) pair divided by the number of images."""
    terms = []
    for i in range(img.shape[0]):
        for j in range(txt.shape[0]):
            pos = (i == j) if positive is None else bool(positive[i, j]) or i == j
            z = 1.0 if pos else -1.0
            terms.append(-F.logsigmoid(z * (s * torch.sum(img[i] * txt[j]) + b)))
    return torch.stack(terms).sum() / img.shape[0]


# ----------------------------------------------------------------------------- distributed helpers
def test_distributed_helpers_are_identities_without_a_process_group():
    x = torch.randn(3, 2)
    assert not is_distributed() and world_size() == 1 and rank() == 0
    assert gather_with_grad(x) is x and gather_no_grad(x) is x
    assert gather_sizes(3) == [3] and local_offset([3]) == 0


# ----------------------------------------------------------------------------- ClipLoss
def test_clip_matches_reference_value_and_gradients():
    img = unit(6, 8, seed=0).requires_grad_()
    txt = unit(6, 8, seed=1).requires_grad_()
    t = torch.tensor(math.log(10.0), dtype=DT, requires_grad=True)
    loss = ClipLoss()(img, txt, t.exp())
    grads = torch.autograd.grad(loss, (img, txt, t))
    ref = ref_clip(img, txt, t.exp())
    ref_grads = torch.autograd.grad(ref, (img, txt, t))
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=0)
    assert loss.ndim == 0


def test_clip_is_symmetric_and_local_flag_is_irrelevant_in_one_process():
    img, txt = unit(5, 4, seed=2), unit(5, 4, seed=3)
    s = torch.tensor(7.0, dtype=DT)
    a = ClipLoss()(img, txt, s)
    torch.testing.assert_close(a, ClipLoss()(txt, img, s))
    torch.testing.assert_close(a, ClipLoss(local_loss=False)(img, txt, s))
    torch.testing.assert_close(a, ClipLoss()(img, txt, 7.0))  # plain float multiplier


def test_clip_perfect_alignment_has_low_loss():
    x = unit(4, 16, seed=4)
    s = torch.tensor(100.0, dtype=DT)
    assert ClipLoss()(x, x, s) < ClipLoss()(x, unit(4, 16, seed=5), s)


def test_clip_label_smoothing_matches_smoothed_soft_targets():
    img, txt = unit(5, 6, seed=6), unit(5, 6, seed=7)
    s, eps = torch.tensor(5.0, dtype=DT), 0.2
    smoothed = (1 - eps) * torch.eye(5, dtype=DT) + eps / 5
    got = ClipLoss(label_smoothing=eps)(img, txt, s)
    torch.testing.assert_close(got, ref_clip(img, txt, s, smoothed, smoothed, kl=False), atol=1e-12, rtol=0)
    # one-hot soft targets are hard targets, with smoothing too
    torch.testing.assert_close(ClipLoss(label_smoothing=eps)(img, txt, s, targets=torch.eye(5, dtype=DT)), got)
    assert not torch.isclose(got, ClipLoss()(img, txt, s))
    with pytest.raises(ValueError):
        ClipLoss(label_smoothing=1.0)


def test_clip_soft_targets_identity_equals_hard_and_general_matches_reference():
    img, txt = unit(5, 6, seed=8), unit(5, 6, seed=9)
    s = torch.tensor(4.0, dtype=DT)
    torch.testing.assert_close(ClipLoss()(img, txt, s, targets=torch.eye(5, dtype=DT)), ClipLoss()(img, txt, s))
    g = torch.Generator().manual_seed(0)
    fwd = torch.softmax(torch.randn(5, 5, generator=g, dtype=DT), 1)
    bwd = torch.softmax(torch.randn(5, 5, generator=g, dtype=DT), 1)
    got_one, got_pair = ClipLoss()(img, txt, s, targets=fwd), ClipLoss()(img, txt, s, targets=(fwd, bwd))
    torch.testing.assert_close(got_one, ref_clip(img, txt, s, fwd, fwd), atol=1e-12, rtol=0)
    torch.testing.assert_close(got_pair, ref_clip(img, txt, s, fwd, bwd), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="targets must be"):
        ClipLoss()(img, txt, s, targets=torch.eye(4, dtype=DT))


def test_shape_mistakes_are_rejected():
    with pytest.raises(ValueError):
        ClipLoss()(unit(4, 6, seed=0), unit(5, 6, seed=1), 1.0)
    with pytest.raises(ValueError):
        MultiViewClipLoss()(unit(4, 6, seed=0), unit(4, 6, seed=1), 1.0, image_features2=unit(4, 5, seed=2))
    with pytest.raises(ValueError):
        ClipLoss()(unit(4, 6, seed=0), unit(4, 6, seed=1), torch.ones(2))


def test_half_precision_inputs_are_computed_in_float32():
    img, txt = unit(4, 8, seed=10), unit(4, 8, seed=11)
    loss = ClipLoss()(img.bfloat16(), txt.bfloat16(), torch.tensor(10.0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# ----------------------------------------------------------------------------- MultiViewClipLoss
def test_multiview_matches_reference_all_terms():
    i1, i2, t1, t2 = (unit(6, 8, seed=k) for k in range(20, 24))
    s = torch.tensor(6.0, dtype=DT)
    loss_fn = MultiViewClipLoss(image_text_weight=0.7, image_image_weight=1.3, text_text_weight=0.4)
    got = loss_fn(i1, t1, s, image_features2=i2, text_features2=t2)
    torch.testing.assert_close(got, ref_multiview(i1, t1, s, i2, t2, w=(0.7, 1.3, 0.4)), atol=1e-12, rtol=0)
    assert set(loss_fn.last_terms) == {"image_to_text", "text_to_image", "image_image", "text_text"}
    default = MultiViewClipLoss()(i1, t1, s, image_features2=i2, text_features2=t2)
    torch.testing.assert_close(default, ref_multiview(i1, t1, s, i2, t2), atol=1e-12, rtol=0)


def test_multiview_degrades_gracefully_without_second_view_or_text():
    i1, i2, t1, t2 = (unit(5, 8, seed=k) for k in range(30, 34))
    s = torch.tensor(5.0, dtype=DT)
    loss_fn = MultiViewClipLoss(image_text_weight=2.0)
    torch.testing.assert_close(loss_fn(i1, t1, s), 2.0 * ClipLoss()(i1, t1, s))
    assert set(loss_fn.last_terms) == {"image_to_text", "text_to_image"}
    only_view = loss_fn(i1, t1, s, image_features2=i2)
    torch.testing.assert_close(only_view, ref_multiview(i1, t1, s, i2=i2, w=(2.0, 1.0, 0.5)), atol=1e-12, rtol=0)
    assert "text_text" not in loss_fn.last_terms and "image_image" in loss_fn.last_terms
    only_text = loss_fn(i1, t1, s, text_features2=t2)
    torch.testing.assert_close(only_text, ref_multiview(i1, t1, s, t2=t2, w=(2.0, 1.0, 0.5)), atol=1e-12, rtol=0)
    assert "image_image" not in loss_fn.last_terms and "text_text" in loss_fn.last_terms


def test_multiview_is_symmetric_in_views_and_texts():
    i1, i2, t1, t2 = (unit(5, 8, seed=k) for k in range(40, 44))
    s = torch.tensor(8.0, dtype=DT)
    loss_fn = MultiViewClipLoss()
    a = loss_fn(i1, t1, s, image_features2=i2, text_features2=t2)
    torch.testing.assert_close(a, loss_fn(i2, t2, s, image_features2=i1, text_features2=t1))
    torch.testing.assert_close(a, loss_fn(i2, t1, s, image_features2=i1, text_features2=t2))


def test_multiview_with_label_aware_targets_matches_reference():
    i1, i2, t1, t2 = (unit(6, 8, seed=k) for k in range(50, 54))
    s = torch.tensor(6.0, dtype=DT)
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1], [0, 0]])
    targets = label_aware_targets(labels)
    got = MultiViewClipLoss()(i1, t1, s, image_features2=i2, text_features2=t2, targets=targets)
    torch.testing.assert_close(got, ref_multiview(i1, t1, s, i2, t2, targets=targets), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- label-aware targets
def test_exact_targets_equal_mass_diagonal_and_unknown_labels():
    nan = float("nan")
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [-1, -1], [nan, nan], [-1, -1], [1, 0]], dtype=torch.float32)
    t = label_aware_targets(labels)
    assert t.shape == (7, 7)
    torch.testing.assert_close(t.sum(1), torch.ones(7))
    assert (t.diagonal() > 0).all()
    group = [0, 1, 6]
    for i in group:  # identical label vectors share their row's mass equally
        torch.testing.assert_close(t[i, group], torch.full((3,), 1 / 3))
    torch.testing.assert_close(t, t.T)  # symmetric relation: one matrix serves both directions
    for i in (3, 4, 5):  # unknown labels match only themselves, even another unknown row
        torch.testing.assert_close(t[i], torch.eye(7)[i])
    assert t[2, 2] == 1.0


def test_text_ids_make_identical_sentences_positive():
    tokens = torch.tensor([[5, 6, 0], [5, 6, 0], [7, 8, 9], [5, 6, 1]])
    t = label_aware_targets(text_ids=tokens)
    torch.testing.assert_close(t[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(t[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    # unknown labels do not veto an identical sentence; labels and texts combine with OR
    labels = torch.tensor([[-1.0], [-1.0], [1.0], [1.0]])
    both = label_aware_targets(labels=labels, text_ids=tokens, normalize=False)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32)
    torch.testing.assert_close(both, expected)
    by_text = label_aware_targets(text_ids=torch.tensor([3, 3, 4]))
    torch.testing.assert_close(by_text, label_aware_targets(torch.tensor([9, 9, 2])))


def test_soft_targets_jaccard_and_cosine():
    labels = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [-1, -1, -1]], dtype=torch.float32)
    jac = label_aware_targets(labels, mode="soft", normalize=False)
    assert jac[0, 1] == pytest.approx(0.5) and jac[1, 0] == pytest.approx(0.5)
    assert jac[2, 3] == 1.0 and jac[0, 2] == 0.0  # two "no finding" rows are identical
    torch.testing.assert_close(jac[4], torch.eye(5)[4])
    torch.testing.assert_close(jac.diagonal(), torch.ones(5))
    cos = label_aware_targets(labels, mode="soft", similarity="cosine", normalize=False)
    assert cos[0, 1] == pytest.approx(1 / math.sqrt(2))
    norm = label_aware_targets(labels, mode="soft")
    torch.testing.assert_close(norm.sum(1), torch.ones(5))
    assert norm[0, 1] == pytest.approx(0.5 / 1.5)
    with pytest.raises(ValueError):
        label_aware_targets(labels, mode="fuzzy")
    with pytest.raises(ValueError):
        label_aware_targets(labels, mode="soft", similarity="dice")
    with pytest.raises(ValueError):
        label_aware_targets()


def test_label_aware_loss_is_lower_with_duplicate_texts():
    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(4, 16, generator=g, dtype=DT), dim=1)
    text_ids = torch.tensor([0, 0, 0, 1, 2, 3])  # three samples got the same synthesised sentence
    txt = base[torch.tensor([0, 0, 0, 1, 2, 3])]
    img = F.normalize(txt + 0.05 * torch.randn(6, 16, generator=g, dtype=DT), dim=1)
    s = torch.tensor(20.0, dtype=DT)
    targets = label_aware_targets(text_ids=text_ids)
    for loss_fn in (ClipLoss(), MultiViewClipLoss()):
        plain, aware = loss_fn(img, txt, s), loss_fn(img, txt, s, targets=targets)
        assert aware < plain - 0.5  # plain InfoNCE keeps a floor of log 3 on the duplicated rows
        assert aware < 0.05


def test_soft_targets_keep_the_soft_ce_gradient_and_drop_its_entropy_floor():
    img = unit(6, 8, seed=90).requires_grad_()
    txt = unit(6, 8, seed=91).requires_grad_()
    s = torch.tensor(9.0, dtype=DT)
    targets = label_aware_targets(torch.tensor([0, 0, 0, 1, 1, 2]))
    got = ClipLoss()(img, txt, s, targets=targets)
    literal = ref_clip(img, txt, s, targets, targets, kl=False)
    entropy = -(targets * targets.clamp_min(1e-30).log()).sum(1).mean().to(DT)
    torch.testing.assert_close(got, literal - entropy, atol=1e-6, rtol=0)
    for g, r in zip(torch.autograd.grad(got, (img, txt)), torch.autograd.grad(literal, (img, txt))):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- SigLIP
def test_siglip_value_by_hand_sums_pairs_and_divides_by_the_images():
    """2 images x 2 texts, s = 2, b = -1: logits [[1, 0.2], [-1, 0.6]], diagonal positive."""
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=DT)

    def softplus(x: float) -> float:  # -log sigmoid(-x)
        return math.log1p(math.exp(x))

    by_hand = (softplus(-1.0) + softplus(0.2) + softplus(-1.0) + softplus(-0.6)) / 2  # / N images, not / 4 pairs
    got = SigLipLoss()(img, txt, 2.0, -1.0)
    assert got.item() == pytest.approx(by_hand, abs=1e-12)


def test_siglip_matches_reference_and_label_aware_positives():
    img, txt = unit(5, 6, seed=60), unit(5, 6, seed=61)
    s = torch.tensor(10.0, dtype=DT)
    loss_fn = SigLipLoss()
    torch.testing.assert_close(loss_fn(img, txt, s, -10.0), ref_siglip(img, txt, 10.0, -10.0), atol=1e-12, rtol=0)
    labels = torch.tensor([0, 0, 1, 2, 1])
    targets = label_aware_targets(labels)
    got = loss_fn(img, txt, s, -2.0, targets=targets)
    torch.testing.assert_close(got, ref_siglip(img, txt, 10.0, -2.0, positive=targets > 0), atol=1e-12, rtol=0)
    assert not torch.isclose(got, loss_fn(img, txt, s, -2.0))
    # the diagonal is always positive, whatever the targets say
    torch.testing.assert_close(loss_fn(img, txt, s, -2.0, targets=torch.zeros(5, 5)), loss_fn(img, txt, s, -2.0))


def test_gradients_reach_logit_scale_and_siglip_bias():
    img = unit(4, 6, seed=70).requires_grad_()
    txt = unit(4, 6, seed=71)
    t = torch.tensor(math.log(10.0), dtype=DT, requires_grad=True)
    for loss_fn in (ClipLoss(), MultiViewClipLoss()):
        t.grad = None
        loss_fn(img, txt, t.exp()).backward()
        assert t.grad is not None and torch.isfinite(t.grad) and t.grad != 0
    bias = torch.tensor(-10.0, dtype=DT, requires_grad=True)  # the model's parameter
    sig = SigLipLoss()
    t.grad = None
    sig(img, txt, t.exp(), bias).backward()
    assert t.grad != 0 and bias.grad is not None and bias.grad != 0
    assert not list(sig.parameters())  # the bias lives in the model (optimiser, DDP, checkpoints)
    with pytest.raises(ValueError, match="logit_bias must be a scalar"):
        sig(img, txt, t.exp(), torch.zeros(2, dtype=DT))


# ----------------------------------------------------------------------------- guards and factory
def test_non_finite_loss_raises_with_term_name():
    img, txt, t2 = unit(4, 6, seed=80), unit(4, 6, seed=81), unit(4, 6, seed=82)
    bad = img.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="image_to_text"):
        ClipLoss()(bad, txt, 10.0)
    with pytest.raises(FloatingPointError, match="logit_scale"):
        ClipLoss()(img, txt, float("inf"))
    bad_t2 = t2.clone()
    bad_t2[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="text_text"):
        MultiViewClipLoss()(img, txt, 10.0, text_features2=bad_t2)
    with pytest.raises(FloatingPointError, match="sigmoid"):
        SigLipLoss()(bad, txt, 10.0, -10.0)
    with pytest.raises(FloatingPointError, match="logit_bias"):
        SigLipLoss()(img, txt, 10.0, float("nan"))
    assert torch.isnan(ClipLoss(check_finite=False)(bad, txt, 10.0))
    assert torch.isnan(SigLipLoss(check_finite=False)(bad, txt, 10.0, -10.0))


def test_build_loss_factory():
    assert isinstance(build_loss("clip"), ClipLoss)
    mv = build_loss("Multi-View", text_text_weight=0.25)
    assert isinstance(mv, MultiViewClipLoss) and mv.text_text_weight == 0.25
    sig = build_loss("SigLIP", check_finite=False)
    assert isinstance(sig, SigLipLoss) and not sig.check_finite
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("triplet")
