"""Engines, metrics and handlers on small hand-made inputs and a tiny random MammoCLIP."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from mammoclip_monai.engines import (
    AtomicCheckpointSaver,
    ContrastiveEvaluator,
    ContrastiveTrainer,
    MetricsJSONWriter,
    RandomStates,
    ResumeHandler,
    RetrievalRecall,
    ZeroShotAUROC,
)
from mammoclip_monai.engines.metrics import binary_auroc, macro_auroc
from mammoclip_monai.engines.trainer import loss_arguments
from mammoclip_monai.losses import ClipLoss, MultiViewClipLoss, SigLipLoss
from mammoclip_monai.networks import create_model


# ----------------------------------------------------------------------------- metrics
def brute_force_auroc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, 30).astype(float)  # many ties
        labels = rng.integers(0, 2, 30)
        if labels.min() == labels.max():
            continue
        assert binary_auroc(scores, labels) == pytest.approx(brute_force_auroc(scores, labels))


def test_auroc_single_class_is_nan_with_warning():
    with pytest.warns(UserWarning, match="undefined"):
        assert math.isnan(binary_auroc([0.1, 0.2], [1, 1]))


def test_macro_auroc_one_vs_rest():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    labels = np.array([0, 1, 2, 1])
    expected = np.mean([brute_force_auroc(probs[:, c], labels == c) for c in range(3)])
    assert macro_auroc(probs, labels, [0, 1, 2]) == pytest.approx(expected)


def run_metric(metric, outputs):
    engine = Engine(lambda e, batch: batch)
    metric.attach(engine, "m")
    return engine.run(outputs, max_epochs=1).metrics["m"]


def unit(v):
    v = torch.tensor(v, dtype=torch.float32)
    return v / v.norm(dim=-1, keepdim=True)


def test_retrieval_recall_counts_identical_texts_as_correct():
    images = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    # text 3 is closest to image 0; texts 0 and 3 are the same sentence
    texts = unit([[0, 1, 1], [0, 1, 0], [0, 0, 1], [1, 0.1, 0]])
    ids = torch.tensor([[5, 6], [7, 8], [9, 9], [5, 6]])
    out = {"image_features": images, "text_features": texts, "input_ids": ids}
    # image 0 -> text 3 (same sentence as its own text 0: correct); image 1 -> text 1; image 2 -> text 2;
    # image 3 (1,1,0) -> text 3 (its own)
    assert run_metric(RetrievalRecall(1, "image_to_text"), [out]) == 1.0
    distinct = dict(out, input_ids=torch.arange(8).reshape(4, 2))
    assert run_metric(RetrievalRecall(1, "image_to_text"), [distinct]) == 0.75
    assert run_metric(RetrievalRecall(4, "image_to_text"), [distinct]) == 1.0


def test_zero_shot_auroc_ignores_unknown_labels_and_averages_tasks():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.5, 0.5]])
    out = {"zero_shot": {"mass": probs, "calcification": probs.flip(1)},
           "labels": {"mass": torch.tensor([0, 1, -1, 1]), "calcification": torch.tensor([1, 0, 0, 1])}}
    mass = brute_force_auroc([0.1, 0.8, 0.5], [0, 1, 1])
    calc = brute_force_auroc([0.9, 0.2, 0.4, 0.5], [1, 0, 0, 1])
    assert run_metric(ZeroShotAUROC("mass"), [out]) == pytest.approx(mass)
    assert run_metric(ZeroShotAUROC(["mass", "calcification"]), [out]) == pytest.approx((mass + calc) / 2)


def test_class_indices_map_prompt_values_and_mark_others_unknown():
    from mammoclip_monai.engines.evaluator import class_indices

    birads = torch.tensor([1, 5, 3, 0, -1, 6])
    assert class_indices(birads, (1, 2, 3, 4, 5)).tolist() == [0, 4, 2, -1, -1, -1]
    assert class_indices([0, 1, -1], (0, 1)).tolist() == [0, 1, -1]


# ----------------------------------------------------------------------------- engines
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return create_model("tiny", init_towers=False, text_config={"num_hidden_layers": 1, "hidden_size": 32,
                                                              "num_attention_heads": 2, "intermediate_size": 64})


def batches(n: int, batch_size: int = 4, seed: int = 0, two_views: bool = False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = {"image": torch.randn(batch_size, 1, 64, 48, generator=g),
             "input_ids": torch.randint(1000, 2000, (batch_size, 12), generator=g),
             "attention_mask": torch.ones(batch_size, 12, dtype=torch.long),
             "mass": torch.randint(0, 2, (batch_size,), generator=g),
             "calcification": torch.randint(0, 2, (batch_size,), generator=g)}
        if two_views:
            b["image2"] = torch.randn(batch_size, 1, 64, 48, generator=g)
            b["input_ids2"] = torch.randint(1000, 2000, (batch_size, 12), generator=g)
            b["attention_mask2"] = torch.ones(batch_size, 12, dtype=torch.long)
        out.append(b)
    return out


def make_trainer(model, data, **kwargs):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = kwargs.pop("loss", ClipLoss())
    return ContrastiveTrainer(device=torch.device("cpu"), max_epochs=kwargs.pop("max_epochs", 1),
                              train_data_loader=data, network=model, optimizer=optimizer, loss_function=loss, **kwargs)


def test_trainer_reduces_loss_on_a_fixed_batch(tiny_model):
    model = create_model("tiny", init_towers=False, text_config={"num_hidden_layers": 1, "hidden_size": 32,
                                                               "num_attention_heads": 2, "intermediate_size": 64})
    data = batches(1) * 15
    losses = []
    trainer = make_trainer(model, data)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_multiview_label_aware_amp_channels_last_and_clipping(tiny_model):
    trainer = make_trainer(tiny_model, batches(2, two_views=True), loss=MultiViewClipLoss(), label_aware="labels+text",
                           label_keys=("mass", "calcification"), amp=True, amp_dtype="bfloat16", channels_last=True,
                           grad_clip_norm=0.5)
    norms = []

    def check(engine):
        grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
        total = torch.norm(torch.stack([g.norm() for g in grads]))
        norms.append(float(total))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, check)
    trainer.run()
    assert all(torch.isfinite(torch.tensor(norms))) and max(norms) <= 0.5 + 1e-4
    assert "grad_norm" in trainer.state.output


TINY_TEXT = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


def test_loss_arguments_follow_the_signature():
    assert {"image_features2", "text_features2", "targets"} <= loss_arguments(MultiViewClipLoss())
    assert "text_features2" not in loss_arguments(ClipLoss()) and "logit_bias" in loss_arguments(SigLipLoss())
    assert loss_arguments(lambda image_features, text_features, logit_scale, **rest: 0.0) is None


@pytest.mark.parametrize("loss", [ClipLoss(), SigLipLoss()], ids=["clip", "siglip"])
def test_single_view_losses_train_on_batches_with_a_second_view_and_text(loss):
    """``--multiview false``: the data still carries text2 (and may carry image2); the network encodes
    only what the loss consumes, so CLIP and SigLIP take the batch without a TypeError."""
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, text_config=TINY_TEXT,
                         logit_bias_init=-10.0 if isinstance(loss, SigLipLoss) else None)
    seen = []
    original_forward = model.forward
    model.forward = lambda **inputs: (seen.append(sorted(inputs)), original_forward(**inputs))[1]
    trainer = make_trainer(model, batches(2, two_views=True), loss=loss, label_aware="labels",
                           label_keys=("mass", "calcification"))
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss"])
    assert seen and all(keys == ["attention_mask", "image", "input_ids"] for keys in seen)


def test_siglip_trains_the_models_logit_bias_and_needs_one():
    torch.manual_seed(0)
    model = create_model("tiny", init_towers=False, text_config=TINY_TEXT, logit_bias_init=-10.0)
    trainer = make_trainer(model, batches(2), loss=SigLipLoss())  # the optimiser gets model.parameters()
    trainer.run()
    assert model.logit_bias.item() != -10.0 and trainer.state.output["logit_bias"] == model.logit_bias.detach()
    plain = create_model("tiny", init_towers=False, text_config=TINY_TEXT)
    with pytest.raises(ValueError, match="logit_bias_init"):
        make_trainer(plain, batches(1), loss=SigLipLoss())
    with pytest.warns(UserWarning, match="ClipLoss does not take one"):  # the bias would never train
        make_trainer(model, batches(1), loss=ClipLoss())


def test_gradient_accumulation_steps_every_k(tiny_model):
    trainer = make_trainer(tiny_model, batches(5), accumulation_steps=2)
    steps = []
    trainer.optimizer.register_step_post_hook(lambda *a: steps.append(trainer.state.iteration))
    trainer.run()
    assert steps == [2, 4, 5]  # every second iteration, and the last of the epoch


def test_nan_loss_stops_training_with_a_clear_error(tiny_model, tmp_path):
    model = create_model("tiny", init_towers=False, text_config={"num_hidden_layers": 1, "hidden_size": 32,
                                                               "num_attention_heads": 2, "intermediate_size": 64})
    saver = AtomicCheckpointSaver(tmp_path, {"model": model}, mode="last", engine_key="trainer")
    trainer = make_trainer(model, batches(2), max_epochs=2)
    saver.attach(trainer)

    def poison(engine):
        if engine.state.epoch == 2:
            with torch.no_grad():
                model.logit_scale.fill_(float("nan"))

    trainer.add_event_handler(Events.EPOCH_STARTED, poison)
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.run()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == 2  # the epoch-1 checkpoint is intact
    assert torch.isfinite(saved["model"]["logit_scale"])
    assert not list(tmp_path.glob(".*tmp*"))


def test_evaluator_embeds_prompts_once_and_scores_zero_shot(tiny_model):
    data = batches(3)
    evaluator = ContrastiveEvaluator(torch.device("cpu"), data, tiny_model, loss_function=ClipLoss(),
                                     zero_shot_tasks=["mass", "calcification"],
                                     key_val_metric={"auroc": ZeroShotAUROC(["mass", "calcification"])},
                                     additional_metrics={"r1": RetrievalRecall(1)})
    calls = []
    original = evaluator._embed_prompts
    evaluator._embed_prompts = lambda e: (calls.append(1), original(e))
    evaluator.remove_event_handler(original, Events.STARTED)
    evaluator.add_event_handler(Events.STARTED, evaluator._embed_prompts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator.run()
    assert len(calls) == 1
    assert set(evaluator.class_embeddings) == {"mass", "calcification"}
    assert evaluator.class_embeddings["mass"].shape == (2, 512)
    assert 0.0 <= evaluator.state.metrics["auroc"] <= 1.0 and 0.0 <= evaluator.state.metrics["r1"] <= 1.0
    probs = evaluator.state.output["zero_shot"]["mass"]
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)))


# ----------------------------------------------------------------------------- handlers
def test_best_saver_keeps_the_best_and_writes_atomically(tmp_path):
    model = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(tmp_path, {"model": model}, mode="best", key_metric_name="auc")
    engine = Engine(lambda e, b: None)
    for value, expect_write in [(0.5, True), (0.4, False), (0.7, True), (float("nan"), False)]:
        before = (tmp_path / "model.pt").stat().st_mtime_ns if (tmp_path / "model.pt").exists() else None
        with torch.no_grad():
            model.weight.fill_(value)
        engine.state.metrics = {"auc": value}
        saver(engine)
        state = torch.load(tmp_path / "model.pt", weights_only=True)
        wrote = before is None or (tmp_path / "model.pt").stat().st_mtime_ns != before
        assert wrote == expect_write
    assert saver.best == 0.7 and float(state["weight"][0, 0]) == pytest.approx(0.7)


def test_random_states_round_trip_through_weights_only_checkpoint(tmp_path):
    from monai.transforms import Compose

    from mammoclip_monai.data.transforms import RandMammoAugmentd

    chain = Compose([RandMammoAugmentd(keys="image")]).set_random_state(seed=1)
    states = RandomStates(chain)
    torch.save({"rng": states.state_dict()}, tmp_path / "c.pt")
    draws = (np.random.rand(), torch.rand(1).item(), chain.transforms[0].R.rand())
    states.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    assert (np.random.rand(), torch.rand(1).item(), chain.transforms[0].R.rand()) == draws


def test_resume_handler_restores_epoch_and_objects(tmp_path):
    model = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    engine.run([0, 1], max_epochs=3)
    saver = AtomicCheckpointSaver(tmp_path, {"model": model}, engine_key="trainer")
    saver.attach(Engine(lambda e, b: None))
    saver.save_dict["trainer"] = engine
    saver(engine)
    fresh_model, fresh = torch.nn.Linear(2, 2), Engine(lambda e, b: None)
    seen = []
    fresh.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(e.state.epoch))
    ResumeHandler({"model": fresh_model}, "auto", save_dir=tmp_path, engine_key="trainer").attach(fresh)
    fresh.run([0, 1], max_epochs=5)
    assert seen == [4, 5]
    assert torch.equal(fresh_model.weight, model.weight)


def test_resume_with_a_missing_explicit_checkpoint_is_an_error(tmp_path):
    handler = ResumeHandler({}, tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        handler(Engine(lambda e, b: None))


def test_metrics_json_tracks_history_and_best(tmp_path):
    writer = MetricsJSONWriter(tmp_path / "metrics.json", key_metric_name="auc")
    engine = Engine(lambda e, b: None)
    for epoch, auc in [(1, 0.6), (2, 0.8), (3, 0.7)]:
        engine.state.epoch, engine.state.metrics = epoch, {"auc": auc, "vec": [1, 2]}
        writer(engine)
    writer.add_section("test", {"test_auc": torch.tensor(0.9)})
    import json

    data = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in data["history"]] == [1, 2, 3]
    assert data["best"] == {"epoch": 2, "auc": 0.8} and data["test"] == {"test_auc": pytest.approx(0.9)}
