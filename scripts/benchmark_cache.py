"""Benchmark: reading an item from the persistent cache against the deterministic chain from DICOM.

    python scripts/benchmark_cache.py --data /tmp/chain-bench --rounds 5 --out /tmp/chain-bench/cache-results

Uses the real-size synthetic DICOMs of ``scripts/benchmark_chain.py`` (generated once, reused), and
times per file, one torch thread (per-core figures), in alternating rounds:

  chain          ``CachedPreprocessd`` without a cache: decode + the fused chain to 1520 x 912;
  read           the same transform with a filled cache: the entry read back as a MetaTensor;
  read+norm      ... then ``NormalizeMammogramd`` (what the loader does when augmentation runs
                 elsewhere, e.g. on the accelerator);
  read+aug+norm  ... with ``RandMammoAugmentd`` before the normalisation (the training loader's
                 whole per-item work with the augmentation in the loader, the default);
  read+batch-aug ... with ``BatchMammoAugment`` instead (``augment_on_device``: one warp, gamma,
                 contrast and the normalisation), run here on the CPU for a batch of one, so the
                 figure is its per-image cost on one core; on a GPU it leaves the loader entirely.

Reports the median ms of each and the ratio chain / variant per file (the range over rounds).
Prints Markdown and writes it with the JSON numbers to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_chain import OUT_HW, ensure_images

from mammoclip_monai.data.batch_augment import BatchMammoAugment
from mammoclip_monai.data.cache import CachedPreprocessd
from mammoclip_monai.data.transforms import NormalizeMammogramd, RandMammoAugmentd


def variants(cache_dir: Path) -> dict:
    chain = CachedPreprocessd(spatial_size=OUT_HW)
    cached = CachedPreprocessd(spatial_size=OUT_HW, cache_dir=cache_dir)
    norm = NormalizeMammogramd(keys="image")
    aug = RandMammoAugmentd(keys="image").set_random_state(0)
    batch_aug = BatchMammoAugment(keys=("image",), normalize=norm, seed=0)

    def read_batch_aug(path: str) -> dict:
        image = cached({"image": path})["image"].as_tensor()
        return batch_aug({"image": image[None]})

    return {
        "chain": lambda p: chain({"image": p}),
        "read": lambda p: cached({"image": p}),
        "read+norm": lambda p: norm(cached({"image": p})),
        "read+aug+norm": lambda p: norm(aug(cached({"image": p}))),
        "read+batch-aug": read_batch_aug,
    }, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/chain-bench", help="folder of the generated DICOMs")
    parser.add_argument("--out", default=None, help="folder for the report (default: <data>/cache-results)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["2294x1914", "4096x3328"])
    parser.add_argument("--syntaxes", nargs="+", default=["uncompressed", "rle", "jpeg2000"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = {k: str(v) for k, v in ensure_images(Path(args.data)).items()
             if k[0] in args.sizes and k[1] in args.syntaxes}
    cache_dir = Path(tempfile.mkdtemp(prefix="mammo-cache-bench-"))
    try:
        fns, cached = variants(cache_dir)
        for path in files.values():
            cached({"image": path})  # fill the cache (and warm every kernel and the page cache)
            for fn in fns.values():
                fn(path)
        names = list(fns)
        times = {k: {n: [] for n in names} for k in files}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for key, path in files.items():
                for name in order:
                    start = time.perf_counter()
                    fns[name](path)
                    times[key][name].append((time.perf_counter() - start) * 1000)
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    rows = []
    for (size, syntax), per in times.items():
        row = {"size": size, "syntax": syntax, **{f"{n}_ms": statistics.median(v) for n, v in per.items()}}
        for name in names[1:]:
            ratios = [c / x for c, x in zip(per["chain"], per[name])]
            row[f"chain/{name}"] = statistics.median(ratios)
            row[f"chain/{name}_range"] = (min(ratios), max(ratios))
        rows.append(row)
    lines = [(f"Per core (torch 1 thread), {args.rounds} alternating rounds, output {OUT_HW[0]} x {OUT_HW[1]}, "
             f"{platform.processor() or platform.machine()}; median ms, ratio chain / variant (range over rounds)."),
             "", ("| source | chain from DICOM | cached read | read + normalise | read + augment + normalise "
                  "| read + `BatchMammoAugment` (CPU, per image) |"), "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row['chain_ms']:.0f} ms"]
        for name in names[1:]:
            lo, hi = row[f"chain/{name}_range"]
            cells.append(f"{row[name + '_ms']:.1f} ms: **{row['chain/' + name]:.0f}x** ({lo:.0f}-{hi:.0f})")
        lines.append(f"| {row['size']} {row['syntax']} | " + " | ".join(cells) + " |")
    report = "\n".join(lines)
    print(report)
    out = Path(args.out) if args.out else Path(args.data) / "cache-results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache.md").write_text(report + "\n")
    (out / "cache.json").write_text(json.dumps(rows, indent=1, default=list) + "\n")


if __name__ == "__main__":
    main()
