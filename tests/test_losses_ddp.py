"""DDP equivalence: two gloo ranks, each fed half of a fixed batch, reproduce one process on the
whole batch: the rank-averaged loss equals the single-process loss and the DDP-synchronised
parameter gradients equal the single-process gradients (float64).

Why this holds: with ``local_loss=True`` rank r's loss is the mean over its own rows (against
all gathered columns); the autograd all-gather sums every rank's gradient into the slice it
came from and DDP averages over ranks, so the update is that of the mean over all rows, i.e.
of the loss one process computes on the concatenated batch. SigLIP divides its sum over this
rank's rows x all texts by this rank's rows, the same mean over rows; its ``logit_bias`` is a
parameter of the model (as in ``MammoCLIP``), so DDP all-reduces its gradient.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from mammoclip_monai.losses import (
    ClipLoss,
    MultiViewClipLoss,
    SigLipLoss,
    gather_no_grad,
    gather_sizes,
    gather_with_grad,
    label_aware_targets,
    local_offset,
)

WORLD = 2
BATCH = 8  # global; 4 rows per rank
TIMEOUT_S = 60
UNEVEN = (2, 3)  # per-rank sizes for the padding check of the gather helpers

# name -> (loss factory, label-aware mode or None)
CASES: dict[str, tuple] = {
    "clip": (lambda: ClipLoss(), None),
    "clip_global_smoothed": (lambda: ClipLoss(local_loss=False, label_smoothing=0.1), None),
    "clip_aware_soft": (lambda: ClipLoss(), "soft"),
    "multiview": (lambda: MultiViewClipLoss(), None),
    "multiview_aware": (lambda: MultiViewClipLoss(image_image_weight=0.8, text_text_weight=0.3), "exact"),
    "multiview_global_aware": (lambda: MultiViewClipLoss(local_loss=False), "exact"),
    "siglip": (lambda: SigLipLoss(), None),
    "siglip_aware": (lambda: SigLipLoss(), "exact"),
}


def make_batch() -> dict[str, torch.Tensor]:
    """A fixed batch whose label groups straddle the two ranks; equal sentences give equal text inputs."""
    g = torch.Generator().manual_seed(1234)
    labels = torch.tensor(
        [[1, 0], [0, 0], [1, 0], [-1, -1], [0, 1], [1, 0], [0, 0], [1, 1]], dtype=torch.float32
    )  # rows 0, 2, 5 and 1, 6 share labels across ranks; row 3 is unknown
    sentence = torch.tensor([0, 1, 0, 2, 3, 0, 1, 4])  # synthesised from the labels: duplicates
    sentence2 = torch.tensor([5, 6, 7, 8, 9, 10, 6, 11])  # a second, differently phrased text
    table = torch.randn(12, 4, generator=g, dtype=torch.float64)
    return {
        "img1": torch.randn(BATCH, 5, generator=g, dtype=torch.float64),
        "img2": torch.randn(BATCH, 5, generator=g, dtype=torch.float64),
        "txt1": table[sentence],
        "txt2": table[sentence2],
        "labels": labels,
        "text_ids": torch.stack([sentence, sentence2], dim=1),
    }


class TinyClip(nn.Module):
    """Two linear towers, a learnable log-temperature (and, for SigLIP, a learnable bias) and the loss."""

    def __init__(self, name: str) -> None:
        super().__init__()
        factory, self.aware = CASES[name]
        torch.manual_seed(0)
        self.image_tower = nn.Linear(5, 6)
        self.text_tower = nn.Linear(4, 6)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(5.0)))
        self.loss = factory()
        if isinstance(self.loss, SigLipLoss):
            self.logit_bias = nn.Parameter(torch.tensor(-3.0))
        self.double()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        img = lambda x: F.normalize(self.image_tower(x), dim=-1)  # noqa: E731
        txt = lambda x: F.normalize(self.text_tower(x), dim=-1)  # noqa: E731
        scale = self.logit_scale.exp().clamp(max=100.0)
        targets = None
        if self.aware is not None:
            local_rows = getattr(self.loss, "local_loss", True)
            labels, text_ids = batch["labels"], batch["text_ids"][:, 0]
            targets = label_aware_targets(labels, text_ids, mode=self.aware, local_rows=local_rows)
        if isinstance(self.loss, MultiViewClipLoss):
            return self.loss(
                img(batch["img1"]),
                txt(batch["txt1"]),
                scale,
                image_features2=img(batch["img2"]),
                text_features2=txt(batch["txt2"]),
                targets=targets,
            )
        if isinstance(self.loss, SigLipLoss):
            return self.loss(img(batch["img1"]), txt(batch["txt1"]), scale, self.logit_bias, targets=targets)
        return self.loss(img(batch["img1"]), txt(batch["txt1"]), scale, targets=targets)


def _uneven_gather_checks(rank: int) -> dict[str, torch.Tensor]:
    """Gather helpers with unequal per-rank sizes (padding path)."""
    n = UNEVEN[rank]
    sizes = gather_sizes(n)
    x = torch.full((n, 2), float(rank + 1), dtype=torch.float64, requires_grad=True)
    y = gather_with_grad(x, sizes)
    weights = torch.arange(float(sum(UNEVEN)), dtype=torch.float64)[:, None].expand(-1, 2)
    (y * weights).sum().backward()
    flags = gather_no_grad(torch.arange(n) % 2 == 0)
    targets = label_aware_targets(torch.tensor([0] * n))  # all share one label
    return {"sizes": torch.tensor(sizes), "offset": torch.tensor(local_offset(sizes)), "y": y.detach(),
            "grad": x.grad, "flags": flags, "targets": targets}


def _worker(rank: int, port: int, out_dir: str) -> None:
    out = Path(out_dir)
    try:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        torch.set_num_threads(1)
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S))
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        local = {k: v[rows] for k, v in make_batch().items()}
        results: dict[str, dict] = {}
        for name in CASES:
            model = TinyClip(name)
            ddp = DistributedDataParallel(model)
            loss = ddp(local)
            loss.backward()
            grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
            results[name] = {"loss": loss.detach(), "grads": grads}
        results["_gather"] = _uneven_gather_checks(rank)
        torch.save(results, out / f"rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("ddp_losses")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(out)), daemon=True) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT_S
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    errors = "\n".join(f.read_text() for f in sorted(out.glob("rank*.err")))
    assert not errors, f"a DDP worker failed:\n{errors}"
    assert not hung, f"DDP workers did not finish within {TIMEOUT_S} s"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_ddp_loss_and_gradients_equal_single_process(ddp_results: list[dict], name: str) -> None:
    model = TinyClip(name)
    ref_loss = model(make_batch())
    ref_loss.backward()
    per_rank = [r[name] for r in ddp_results]

    mean_loss = torch.stack([r["loss"] for r in per_rank]).mean()
    torch.testing.assert_close(mean_loss, ref_loss.detach(), atol=1e-9, rtol=0)
    if getattr(model.loss, "local_loss", True):  # each rank really scored only its own rows
        assert not torch.isclose(per_rank[0]["loss"], per_rank[1]["loss"])
    for k, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, k
        for r in per_rank:
            torch.testing.assert_close(r["grads"][k], p.grad, atol=1e-9, rtol=0, msg=lambda m, k=k: f"{name}/{k}: {m}")


def test_gather_helpers_pad_uneven_batches(ddp_results: list[dict]) -> None:
    total = sum(UNEVEN)
    weights = torch.arange(float(total), dtype=torch.float64)[:, None].expand(-1, 2)
    expected_y = torch.cat([torch.full((n, 2), float(r + 1), dtype=torch.float64) for r, n in enumerate(UNEVEN)])
    expected_flags = torch.cat([torch.arange(n) % 2 == 0 for n in UNEVEN])
    for r, res in enumerate(ddp_results):
        g = res["_gather"]
        start = sum(UNEVEN[:r])
        assert g["sizes"].tolist() == list(UNEVEN) and int(g["offset"]) == start
        torch.testing.assert_close(g["y"], expected_y)
        # every rank's loss sends gradient to this rank's rows: the sum over ranks arrives
        torch.testing.assert_close(g["grad"], WORLD * weights[start : start + UNEVEN[r]])
        assert g["flags"].dtype == torch.bool and torch.equal(g["flags"], expected_flags)
        assert g["targets"].shape == (UNEVEN[r], total)
        torch.testing.assert_close(g["targets"], torch.full((UNEVEN[r], total), 1.0 / total))
