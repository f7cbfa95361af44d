"""Benchmark: the bundle's training loop against a bare PyTorch loop on the same model and data.

    python scripts/benchmark_train.py --iterations 20 --warmup 3
    python scripts/benchmark_train.py --preset paper_b5 --amp --image-size 1520 912 --batch-size 8   # GPU
    python scripts/benchmark_train.py --loader-vs-model --image-size 448 288          # which one bounds a run

Both modes are built from ``bundle/configs/train.json`` (same network, loss, optimiser, data
loader, label-aware targets) and run in their own subprocess so that peak memory is per mode:

- ``bundle``: ``python -m monai.bundle``'s workflow, i.e. ``ContrastiveTrainer`` with every training
  handler of the config (stats, TensorBoard, image grid, progress bar, LR schedule, checkpoints).
- ``bare``: ``for batch in loader: forward, loss, backward, clip, step`` with nothing else.
- ``loader``: the same training DataLoader iterated alone (read from the cache, text sampling,
  tokenisation, augmentation unless ``--augment-on-device``, collation): what it can deliver.
- ``model``: the bare step repeated on one batch already on the device (plus ``BatchMammoAugment``
  with ``--augment-on-device``): what the model can consume.
  The smaller of the two says which bounds a run (``--loader-vs-model`` runs these two only).

Samples/s are timed over the iterations after ``--warmup`` (the epoch-end validation and
checkpointing are outside the window, as they are the same work in both). Peak memory is the
process's maximum resident set (CPU) or ``torch.cuda.max_memory_allocated`` (GPU). Prints a
Markdown table for docs/benchmarks.md and writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundle" / "configs" / "train.json"


def build_workflow(args: argparse.Namespace, out: Path):
    from monai.bundle import ConfigWorkflow

    overrides = {
        "ckpt_dir": str(out / "models"), "output_dir": str(out / "logs"), "max_epochs": 1,
        "batch_size": args.batch_size, "image_size": list(args.image_size), "preset": args.preset,
        "amp": args.amp, "num_workers": args.workers, "augment_on_device": args.augment_on_device,
        "network_def#init_towers": args.preset == "tiny",
        # enough batches for the timing window, and tiny validation/test sets (outside the window)
        "train#datalist": f"$@train#datalist_full[:{(args.iterations + 1) * args.batch_size}]",
        "train#datalist_full": "$mammoclip_monai.data.datalists.group_views(@train#datalist_by_image) "
                               "if @multiview else @train#datalist_by_image",
        "validate#datalist": "$mammoclip_monai.data.datalists.select_split(@image_text_items, 'val')[:8]",
        "test#datalist": "$mammoclip_monai.data.datalists.select_split(@image_text_items, 'test')[:8]",
    }
    if args.dataset_dir:
        overrides["dataset_dir"] = args.dataset_dir
    if args.text_model:
        overrides["network_def#text_model"] = args.text_model
    workflow = ConfigWorkflow(config_file=str(TRAIN), workflow_type="train", run_id="training", **overrides)
    workflow.initialize()
    return workflow


def run_bundle(workflow, args: argparse.Namespace) -> list[float]:
    from ignite.engine import Events

    trainer = workflow.trainer
    stamps: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.iterations), lambda e: e.terminate())
    workflow.run()
    return stamps


def run_loader(workflow, args: argparse.Namespace) -> list[float]:
    stamps: list[float] = []
    for _ in workflow.parser.get_parsed_content("train#dataloader"):
        stamps.append(time.perf_counter())
        if len(stamps) == args.iterations:
            break
    return stamps


def run_model(workflow, args: argparse.Namespace) -> list[float]:
    from mammoclip_monai.engines.trainer import move_to_device

    first = next(iter(workflow.parser.get_parsed_content("train#dataloader")))
    batch = move_to_device(first, workflow.device)
    return run_bare(workflow, args, batches=[batch] * args.iterations)


def run_bare(workflow, args: argparse.Namespace, batches=None) -> list[float]:
    from mammoclip_monai.engines.trainer import contrastive_targets, model_inputs, move_to_device

    parser = workflow.parser
    network, loss_fn = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    loader = parser.get_parsed_content("train#dataloader") if batches is None else batches
    batch_augment = parser.get_parsed_content("train#batch_augment")
    device, channels_last = workflow.device, parser["channels_last"]
    label_aware, label_keys, clip = parser["label_aware"], parser["label_keys"], parser["grad_clip_norm"]
    if channels_last:
        network.to(memory_format=torch.channels_last)
    dtype = torch.float16 if parser["amp_dtype"] == "float16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    stamps: list[float] = []
    network.train()
    for batch in loader:
        batch = move_to_device(batch, device)
        if batch_augment is not None:
            batch = batch_augment(batch)
        inputs = model_inputs(batch, channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=args.amp):
            out = network(**inputs)
            extra = {k: out[k] for k in ("image_features2", "text_features2") if k in out}
            targets = contrastive_targets(batch, label_aware, label_keys)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"], targets=targets, **extra)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
        scaler.step(optimizer)
        scaler.update()
        float(loss)  # the bundle's handlers read the loss every step, so synchronise here too (and on CUDA)
        stamps.append(time.perf_counter())
        if len(stamps) == args.iterations:
            break
    return stamps


def child(args: argparse.Namespace) -> None:
    """One mode in this process; prints a JSON line with its numbers."""
    torch.set_num_threads(args.threads) if args.threads else None
    with tempfile.TemporaryDirectory() as tmp:
        workflow = build_workflow(args, Path(tmp))
        if workflow.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runner = {"bundle": run_bundle, "bare": run_bare, "loader": run_loader, "model": run_model}[args.mode]
        stamps = runner(workflow, args)
    if len(stamps) <= args.warmup + 1:
        raise SystemExit(f"only {len(stamps)} iterations ran: lower --warmup or raise --iterations")
    window = stamps[args.warmup:]
    seconds = window[-1] - window[0]
    samples = (len(window) - 1) * args.batch_size
    peak = (torch.cuda.max_memory_allocated() / 2**20 if workflow.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps({"mode": args.mode, "samples_per_s": samples / seconds,
                                  "s_per_iteration": seconds / (len(window) - 1), "peak_mb": peak,
                                  "device": str(workflow.device)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("bundle", "bare", "loader", "model"),
                        help="run one mode in this process (internal)")
    parser.add_argument("--loader-vs-model", action="store_true",
                        help="time the loader alone and the model alone (instead of bundle against bare)")
    parser.add_argument("--augment-on-device", action="store_true",
                        help="the bundle's augment_on_device: BatchMammoAugment in the step, not in the loader")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, nargs=2, default=(512, 320))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each mode")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--dataset-dir", default="", help="default: the bundle's synthetic dataset")
    parser.add_argument("--text-model", default="", help="a local Hugging Face model folder instead of the "
                        "preset's text model (offline: the paper presets name Bio_ClinicalBERT, a hub id)")
    parser.add_argument("--out", default="runs/bench_train/results.json")
    args = parser.parse_args()
    if args.mode:
        child(args)
        return

    passthrough, skip_next = [], False
    for arg in sys.argv[1:]:  # everything but --out (and its value), for the child processes
        if skip_next or arg.startswith("--out="):
            skip_next = False
            continue
        if arg == "--out":
            skip_next = True
            continue
        passthrough.append(arg)
    modes = ("loader", "model") if args.loader_vs_model else ("bare", "bundle")
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode in modes:
            proc = subprocess.run([sys.executable, __file__, "--mode", mode, *passthrough], cwd=REPO,
                                  capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
            results[mode].append(json.loads(lines[-1][len("RESULT "):]))
    best = {mode: max(runs, key=lambda r: r["samples_per_s"]) for mode, runs in results.items()}
    first, second = modes
    ratio = best[second]["samples_per_s"] / best[first]["samples_per_s"]
    report = [
        f"Preset `{args.preset}`, input {args.image_size[0]} x {args.image_size[1]}, batch {args.batch_size}, "
        f"{'AMP, ' if args.amp else ''}{'augmentation on the device, ' if args.augment_on_device else ''}"
        f"{args.workers} loader workers, {args.iterations} iterations ({args.warmup} warm-up), best of "
        f"{args.repeats} alternating runs; device {best[second]['device']}, {platform.machine()}.",
        "",
        "| loop | samples / s | s / iteration | peak memory (MB) |",
        "|---|---|---|---|",
    ]
    labels = {"bare": "bare PyTorch loop", "bundle": "bundle (ContrastiveTrainer + handlers)",
              "loader": "training DataLoader alone", "model": "training step alone (one batch on the device)"}
    for mode in modes:
        r = best[mode]
        report.append(f"| {labels[mode]} | {r['samples_per_s']:.2f} | {r['s_per_iteration']:.3f} | "
                      f"{r['peak_mb']:.0f} |")
    if args.loader_vs_model:
        bound = "the model" if ratio < 1 else "the loader"
        report += ["", f"Model / loader throughput: **{ratio:.3f}**: {bound} bounds this run."]
    else:
        report += ["", f"Bundle / bare throughput: **{ratio:.2f}** (target: at least 0.9)."]
    text = "\n".join(report)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": results, "ratio": ratio}, indent=2) + "\n")
    out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
