"""Benchmark: linear probe on cached features against re-encoding the images every epoch.

    python scripts/benchmark_probe.py --epochs 30

Builds the default model (packaged weights) at the bundle's input size and the synthetic training
split through the bundle's deterministic preprocessing (cached in memory, so only the network is
timed). Then times one epoch of ``ImageClassifier(freeze="all")`` over the images (what a probe
without caching pays every epoch), the one embedding pass the cached probe pays once, and one epoch
of the linear head on the cached vectors. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.bundle import ConfigWorkflow
from monai.data import CacheDataset, DataLoader

from mammoclip_monai.evaluation import ImageClassifier, embed_images, feature_datalist, probe_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="probe epochs for the total-time comparison")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--task", default="mass")
    args = parser.parse_args()

    workflow = ConfigWorkflow(config_file=["bundle/configs/train.json", "bundle/configs/linear_probe.json"],
                              workflow_type="train", run_id="training", **{"network_def#init_towers": True})
    parser_ = workflow.parser
    network = parser_.get_parsed_content("network")
    items = parser_.get_parsed_content("probe#train_items")
    dataset = CacheDataset(items, parser_.get_parsed_content("probe#preprocessing"), progress=False)
    loader = DataLoader(dataset, batch_size=args.batch_size)
    encoder = network.image_encoder

    model = ImageClassifier(encoder, num_outputs=1, freeze="all")
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for batch in loader:
        logits = model(batch["image"].as_tensor())
        target = torch.as_tensor(batch[args.task]).float().reshape(-1, 1).clamp(min=0)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    image_epoch = time.perf_counter() - start

    start = time.perf_counter()
    cache = embed_images(encoder, loader, [args.task])
    embed_once = time.perf_counter() - start

    data = feature_datalist(cache, args.task, (0, 1))
    head = torch.nn.Linear(encoder.feature_dim, 1)
    head_optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    loss_fn = probe_loss(data, 2)
    feature_loader = DataLoader(data, batch_size=64, shuffle=True)
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in feature_loader:
            loss = loss_fn(head(batch["image"]), batch["label"])
            head_optimizer.zero_grad()
            loss.backward()
            head_optimizer.step()
    cached_epoch = (time.perf_counter() - start) / args.epochs

    n = len(items)
    print(f"{n} training images, input {tuple(parser_['image_size'])}, {torch.get_num_threads()} threads\n")
    print("| linear probe | seconds |\n|---|---|")
    print(f"| one epoch re-encoding the images (frozen encoder) | {image_epoch:.2f} |")
    print(f"| one embedding pass (cached probe, once) | {embed_once:.2f} |")
    print(f"| one epoch on cached features | {cached_epoch:.4f} |")
    total_uncached, total_cached = args.epochs * image_epoch, embed_once + args.epochs * cached_epoch
    print(f"| {args.epochs} epochs, re-encoding / cached | {total_uncached:.1f} / {total_cached:.1f} |\n")
    print(f"Per epoch: **{image_epoch / cached_epoch:.0f}x** faster; a whole {args.epochs}-epoch probe: "
          f"**{total_uncached / total_cached:.1f}x** faster (target: at least 10x).")


if __name__ == "__main__":
    main()
