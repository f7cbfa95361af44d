"""Benchmark: the mammogram pipeline against decoding alone, and cached against uncached epochs.

    python scripts/benchmark_preprocess.py --patients 8 --out runs/bench_preprocess

Generates (once) full-size synthetic MG DICOMs (16-bit, some RLE), then measures per image:
decoding alone (pydicom ``pixel_array``), the reader (decode + modality/VOI LUT + inversion), and
the whole deterministic chain (read, crop, canonicalise, resize, normalise). Then it times two
epochs of a training pipeline (with augmentation) over ``monai.data.Dataset`` and over
``monai.data.CacheDataset``. Prints a Markdown report (paste it into docs/benchmarks.md) and
writes it, with the raw numbers as JSON, next to the data.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import pydicom
import torch
from monai.data import CacheDataset, DataLoader, Dataset

from mammoclip_monai.data.datalists import image_text_datalist
from mammoclip_monai.data.pipelines import preprocessing
from mammoclip_monai.data.reader import read_mammogram
from mammoclip_monai.data.synthetic import ensure_dataset
from mammoclip_monai.data.transforms import LoadMammogramd


def per_image_ms(fn, paths, repeats: int) -> list[float]:
    """Median over ``repeats`` of each file's time, in ms (first call per file warms the page cache)."""
    times = []
    for path in paths:
        fn(path)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(path)
            runs.append((time.perf_counter() - start) * 1000)
        times.append(statistics.median(runs))
    return times


def epoch_seconds(dataset, batch_size: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_preprocess", help="folder for the generated DICOMs")
    parser.add_argument("--patients", type=int, default=8, help="4 images per patient")
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=2400)
    parser.add_argument("--rle-fraction", type=float, default=0.25)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 320), help="network input H W")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the epoch timing")
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = ensure_dataset(args.out, n_patients=args.patients, seed=0, image_size=(args.height, args.width),
                          bits_choices=(16,), rle_fraction=args.rle_fraction, progress=True)
    items = image_text_datalist(Path(root) / "image_text.csv")
    paths = [item["image"] for item in items]
    syntaxes = [str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID.name) for p in paths]

    chain = preprocessing(spatial_size=tuple(args.size), normalize=True)
    decode = per_image_ms(lambda p: pydicom.dcmread(p).pixel_array, paths, args.repeats)
    reader = per_image_ms(lambda p: read_mammogram(p), paths, args.repeats)
    pipeline = per_image_ms(lambda p: chain({"image": p}), paths, args.repeats)
    mean = statistics.fmean
    overhead = (mean(pipeline) - mean(decode)) / mean(decode)

    # per step, on the uncompressed files (where decoding is nearly free and the steps dominate)
    steps = {"decode": [], "read (decode + grey-scale)": []}
    step_chain = [t for t in chain.transforms if not isinstance(t, LoadMammogramd)]
    for name in (type(t).__name__ for t in step_chain):
        steps[name] = []
    load = LoadMammogramd(keys="image")
    for path, syntax in zip(paths, syntaxes):
        if "RLE" in syntax:
            continue
        steps["decode"] += per_image_ms(lambda p: pydicom.dcmread(p).pixel_array, [path], args.repeats)
        steps["read (decode + grey-scale)"] += per_image_ms(lambda p: load({"image": p}), [path], args.repeats)
        data = load({"image": path})
        for t in step_chain:
            steps[type(t).__name__] += per_image_ms(lambda d, t=t: t(dict(d)), [data], args.repeats)
            data = t(dict(data))
    step_ms = {name: statistics.median(v) for name, v in steps.items() if v}

    train_chain = preprocessing(spatial_size=tuple(args.size), normalize=True, train=True)
    data = [{"image": p} for p in paths]
    plain = Dataset(data, transform=train_chain)
    plain_epochs = [epoch_seconds(plain, 4, args.workers) for _ in range(2)]
    start = time.perf_counter()  # CacheDataset fills its cache in the constructor
    cached = CacheDataset(data, transform=train_chain, cache_rate=1.0, num_workers=None, progress=False)
    cache_build = time.perf_counter() - start
    cached_epochs = [epoch_seconds(cached, 4, args.workers) for _ in range(2)]

    by_syntax = {}
    for name in sorted(set(syntaxes)):
        idx = [i for i, s in enumerate(syntaxes) if s == name]
        by_syntax[name] = {"images": len(idx), "decode_ms": mean(decode[i] for i in idx),
                           "reader_ms": mean(reader[i] for i in idx), "pipeline_ms": mean(pipeline[i] for i in idx)}
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "images": len(paths), "image_size": [args.height, args.width], "network_size": list(args.size),
        "decode_ms": mean(decode), "reader_ms": mean(reader), "pipeline_ms": mean(pipeline),
        "pipeline_overhead_vs_decode": overhead, "decode_images_per_s": 1000 / mean(decode),
        "pipeline_images_per_s": 1000 / mean(pipeline), "by_transfer_syntax": by_syntax,
        "uncached_epoch_s": plain_epochs, "cache_build_s": cache_build, "cached_epoch_s": cached_epochs,
        "cached_speedup_epoch2": plain_epochs[1] / cached_epochs[1], "uncompressed_step_ms": step_ms,
    }
    counts = ", ".join(f"{v['images']} {k}" for k, v in by_syntax.items())
    lines = [
        f"Images: {len(paths)} synthetic MG DICOMs, {args.height} x {args.width}, 16-bit "
        f"({counts}); network input "
        f"{args.size[0]} x {args.size[1]}; {results['machine']}.",
        "",
        "| step | ms / image | images / s |",
        "|---|---|---|",
        f"| decode only (pydicom `pixel_array`) | {mean(decode):.1f} | {1000 / mean(decode):.1f} |",
        f"| reader (decode + LUT/window + inversion) | {mean(reader):.1f} | {1000 / mean(reader):.1f} |",
        f"| whole chain (read, crop, canonicalise, resize, normalise) | {mean(pipeline):.1f} | "
        f"{1000 / mean(pipeline):.1f} |",
        "",
        f"Transforms after decoding add **{overhead * 100:.0f} %** to the decode time (target: at most 50 %).",
        "",
        "| transfer syntax | images | decode ms | reader ms | chain ms |",
        "|---|---|---|---|---|",
        *[f"| {k} | {v['images']} | {v['decode_ms']:.1f} | {v['reader_ms']:.1f} | {v['pipeline_ms']:.1f} |"
          for k, v in by_syntax.items()],
        "",
        "| step, uncompressed files (median) | ms / image |",
        "|---|---|",
        *[f"| {name} | {ms:.1f} |" for name, ms in step_ms.items()],
        "",
        "| epoch (training chain with augmentation, batch 4) | seconds |",
        "|---|---|",
        f"| `Dataset`, epoch 1 / epoch 2 | {plain_epochs[0]:.2f} / {plain_epochs[1]:.2f} |",
        f"| `CacheDataset`, building the cache | {cache_build:.2f} |",
        f"| `CacheDataset`, epoch 1 / epoch 2 | {cached_epochs[0]:.2f} / {cached_epochs[1]:.2f} |",
        "",
        f"A cached epoch is **{results['cached_speedup_epoch2']:.0f}x** faster than an uncached one "
        "(target: at least 10x).",
    ]
    report = "\n".join(lines)
    print(report)
    (Path(root) / "benchmark_preprocess.md").write_text(report + "\n")
    (Path(root) / "benchmark_preprocess.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
