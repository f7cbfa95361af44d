"""Benchmark: a training run's peak memory at 1520 x 912 does not grow with the number of images.

    python scripts/benchmark_memory.py --out /tmp/mammo-memory --items 500 5000 --rows 100000

For each count N it writes N distinct MG DICOMs (copies of 40 rendered 1024 x 832 synthetic
mammograms, each made unique by its 128-byte DICOM preamble, which readers ignore, so every copy
has its own content hash and its own cache entry) with an image-text CSV, then runs the training
bundle exactly as a user would (``python -m monai.bundle run training``) at 1520 x 912 with a fresh
``--cache_dir``: the cache is filled for all N images (all cores), then a few training iterations,
a validation and the final test run. A sampler reads /proc every 0.2 s: the resident memory
(RSS) of the main process, and the proportional memory (PSS: pages shared after fork counted once)
summed over the whole process tree (the run, its fill workers and DataLoader workers); the peaks
are reported. It also times building a datalist of ``--rows`` rows
(``image_text_datalist`` over a generated CSV, every file checked).

Disk: about 0.4 MB per source and 2.8 MB per cache entry (5,000 items: ~16 GB; removed at the end
unless --keep).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def make_sources(base: Path, target: Path, count: int) -> Path:
    """``count`` unique DICOMs under ``target/images`` and ``target/image_text.csv`` (8 val, 8 test)."""
    rows = read_rows(base / "image_text.csv")
    images = target / "images"
    images.mkdir(parents=True, exist_ok=True)
    out_rows = []
    for i in range(count):
        row = dict(rows[i % len(rows)])
        data = bytearray((base / row["image_path"]).read_bytes())
        data[:16] = f"copy{i:012d}".encode("ascii")  # the preamble: ignored by readers, unique content
        name = f"images/{i:06d}.dcm"
        (target / name).write_bytes(data)
        split = "val" if i < 8 else "test" if i < 16 else "train"
        row.update(image_path=name, image_id=f"{i:06d}", patient_id=f"P{i // 4:06d}", split=split)
        out_rows.append(row)
    with open(target / "image_text.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(out_rows)
    splits = {row["patient_id"]: row["split"] for row in out_rows}
    with open(target / "splits.csv", "w", encoding="utf-8", newline="") as handle:
        handle.write("patient_id,split\n" + "".join(f"{p},{s}\n" for p, s in splits.items()))
    return target


def _pss(pid: int) -> int:
    """Proportional set size: pages shared by forked workers counted once across them, not once each."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_rss(root_pid: int) -> tuple[int, int]:
    """(resident bytes of ``root_pid``, proportional bytes of it and all its descendants) from /proc."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * PAGE
    members, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in members:
                members.add(child)
                frontier.append(child)
    return rss.get(root_pid, 0), sum(_pss(p) for p in members)


def run_training(dataset: Path, cache: Path, work: Path, iterations: int) -> dict:
    overrides = {
        "dataset_dir": str(dataset), "cache_dir": str(cache), "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "logs"), "image_size": "[1520, 912]", "multiview": "false", "max_epochs": "1",
        "batch_size": "2", "train#trainer#epoch_length": str(iterations),
        "train#datalist_by_image": "$mammoclip_monai.data.datalists.select_split(@image_text_items, 'train')",
    }
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "bundle/configs/train.json"]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_main = peak_tree = 0
    samples: list[tuple[float, int, int]] = []
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_main, peak_tree
        while not done.is_set():
            main, tree = tree_rss(process.pid)
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
            samples.append((time.time(), main, tree))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr, _ = process.communicate()  # the bundle logs to stdout, tqdm to stderr: both, in order
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"training failed ({process.returncode}):\n{stderr[-3000:]}")
    entries = len(list(cache.glob("*/entries/*/*.mce")))
    (work / "stderr.log").write_text(stderr)
    (work / "samples.json").write_text(json.dumps(samples))
    return {"peak_main_mb": peak_main / 2**20, "peak_tree_mb": peak_tree / 2**20, "entries": entries,
            "seconds": time.perf_counter() - start, "phases": phase_peaks(samples, stderr)}


PHASES = (("fill", "Engine run resuming from iteration"), ("train", "Epoch[1] Metrics"), ("validate+test", None))


def phase_peaks(samples: list[tuple[float, int, int]], log: str) -> dict[str, float]:
    """Peak main-process RSS (MB) per phase, the phases cut at the bundle log's timestamps.

    Where the memory peaks says what grows: before the trainer starts (datalist, cache fill),
    during the training iterations, or in the validation / final test.
    """
    cuts = []
    for _, marker in PHASES[:-1]:
        found = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - [^\n]*?" + re.escape(marker), log)
        cuts.append(None if found is None else
                    time.mktime(time.strptime(found[1], "%Y-%m-%d %H:%M:%S")) + int(found[2]) / 1000)
    peaks, start = {}, float("-inf")
    for (name, _), stop in zip(PHASES, [*cuts, float("inf")]):
        stop = float("inf") if stop is None else stop
        inside = [main for t, main, _ in samples if start <= t < stop]
        peaks[name] = max(inside, default=0) / 2**20
        start = stop
    return peaks


def time_datalist(dataset: Path, rows: int, work: Path) -> dict:
    from mammoclip_monai.data.datalists import image_text_datalist

    source = read_rows(dataset / "image_text.csv")
    path = work / "manifest.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(source[0]))
        writer.writeheader()
        for i in range(rows):
            row = dict(source[i % len(source)], patient_id=f"Q{i // 4:07d}")
            row["image_path"] = str(dataset / row["image_path"])
            writer.writerow(row)
    start = time.perf_counter()
    items = image_text_datalist(path, dataset_dir=dataset)
    return {"rows": len(items), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/mammo-memory")
    parser.add_argument("--items", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the datalist timing")
    parser.add_argument("--iterations", type=int, default=6, help="training iterations per run")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and caches")
    args = parser.parse_args()
    from mammoclip_monai.data.synthetic import generate_dataset

    out = Path(args.out)
    base = out / "base"
    if not (base / "image_text.csv").is_file():
        generate_dataset(base, n_patients=10, seed=1, image_size=(1024, 832), workers=2, progress=False)
    results = {}
    try:
        for count in args.items:
            dataset = make_sources(base, out / f"n{count}", count)
            results[count] = run_training(dataset, out / f"cache{count}", out / f"run{count}", args.iterations)
            print(f"{count} items: {json.dumps(results[count])}", file=sys.stderr, flush=True)
        datalist = time_datalist(out / f"n{max(args.items)}", args.rows, out)
    finally:
        if not args.keep:
            for count in args.items:
                for name in (f"n{count}", f"cache{count}", f"run{count}"):
                    shutil.rmtree(out / name, ignore_errors=True)
    lines = [("| images in the training run | peak RSS, main process | ... during the fill | ... training "
              "| ... validation + test | peak PSS, process tree | cache entries | wall (fill + run) |"),
             "|---|---|---|---|---|---|---|---|"]
    for count, r in results.items():
        phases = " | ".join(f"{r['phases'][name]:.0f} MB" for name, _ in PHASES)
        lines.append(f"| {count:,} | {r['peak_main_mb']:.0f} MB | {phases} | {r['peak_tree_mb']:.0f} MB "
                     f"| {r['entries']:,} | {r['seconds']:.0f} s |")
    counts = sorted(results)
    if len(counts) >= 2:
        a, b = results[counts[0]], results[counts[-1]]
        lines.append("")
        lines.append(f"{counts[-1]:,} vs {counts[0]:,} items: "
                     f"main process {b['peak_main_mb'] / a['peak_main_mb']:.3f}x, "
                     f"process tree {b['peak_tree_mb'] / a['peak_tree_mb']:.3f}x.")
    lines.append(f"A datalist of {datalist['rows']:,} rows (every file checked) built in {datalist['seconds']:.1f} s.")
    report = "\n".join(lines)
    print(report)
    (out / "memory.md").write_text(report + "\n")
    (out / "memory.json").write_text(json.dumps({"runs": results, "datalist": datalist}, indent=1) + "\n")


if __name__ == "__main__":
    main()
