"""Benchmark: the fused deterministic chain at real mammogram sizes, per transfer syntax.

    python scripts/benchmark_chain.py --data /tmp/chain-bench --rounds 3 --out /tmp/chain-bench/results

Generates (once, reused) 16-bit synthetic MG DICOMs of real sizes (2294 x 1914, 4096 x 3328,
5000 x 4000 as rows x columns) with film borders, burned-in labels, markers and noise, stored as
uncompressed, RLE, JPEG 2000 lossless, JPEG-LS lossless and JPEG lossless (process 14, SV1),
then times per file, in alternating rounds (the order of the variants rotates each round):

  (a) decode alone: ``pydicom.dcmread`` + ``pixel_array``;
  (b) reference: the original's documented steps (scripts/reference_preprocess.py), PNG written
      to memory at zlib level 1 (headline) and, as (b0), without the PNG;
  (c) today's four-transform chain (LoadMammogramd -> CropBreastd -> CanonicalLateralityd ->
      ResizeKeepAspectd) to 1520 x 912;
  (d) the fused PreprocessMammogramd to 1520 x 912;
  (c0) with ``--baseline-commit REV``: the four transforms as they were at commit REV (the
       package extracted with ``git archive`` and imported under another name), so "today's"
       cost can be pinned to the tree an issue was filed against.

All variants decode with the decoder the project's reader picks (data/decoders.py).
Reported: images/s, (d)/(b) with its range
over rounds, and the ms per source megapixel of the work after decoding, (c)-(a) and (d)-(a).
Torch runs on one thread (per-core figures). Prints Markdown and writes it with JSON to --out.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.transforms import Compose
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_preprocess import reference_preprocess

from mammoclip_monai.data.preprocess import PreprocessMammogramd

try:
    from mammoclip_monai.data import decoders
except ImportError:  # an older tree: the reader uses pydicom's pixel_array
    decoders = None
from mammoclip_monai.data.synthetic.dicom_writer import (
    DicomUIDs,
    ImageEncoding,
    PatientIdentity,
    write_mammogram,
)
from mammoclip_monai.data.synthetic.phantom import render_image
from mammoclip_monai.data.transforms import (
    CanonicalLateralityd,
    CropBreastd,
    LoadMammogramd,
    ResizeKeepAspectd,
)

SIZES = {"2294x1914": (2294, 1914), "4096x3328": (4096, 3328), "5000x4000": (5000, 4000)}
SYNTAXES = ("uncompressed", "rle", "jpeg2000", "jpegls", "jpeg_lossless")
OUT_HW = (1520, 912)
IDENTITY = PatientIdentity("Bench^Phantom^1", "MRN-00000000", "19600101", 60, "ACC000000000", "20200101", "120000")


# ----------------------------------------------------------------------------- test images
def realistic_image(shape: tuple[int, int], laterality: str, seed: int) -> np.ndarray:
    """A phantom rendered at ~1/2 size, upsampled, then film border, fine noise and labels at full size."""
    h, w = shape
    rendered = render_image(seed, laterality, "MLO", "C", image_size=(h // 2, w // 2))
    small = torch.from_numpy(np.ascontiguousarray(rendered.image))[None, None]
    image = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    rng = np.random.default_rng(seed)
    band = max(8, h // 60)  # digitised-film edge: a grey band and a bright line at top and bottom
    image[:band] = np.maximum(image[:band], 0.25)
    image[-band:] = np.maximum(image[-band:], 0.25)
    image[band: band + 3] = 0.9
    image[-band - 3: -band] = 0.9
    side = slice(w - band, w) if laterality == "L" else slice(0, band)
    image[:, side] = np.maximum(image[:, side], 0.2)  # film edge on the nipple side
    image += rng.normal(0.0, 0.006, image.shape).astype(np.float32)  # full-resolution quantum-like noise
    return np.clip(image, 0.0, 1.0, out=image)


def _jpeg_lossless_with_gdcm(source: Path, target: Path) -> None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError("GDCM could not read the uncompressed file")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("GDCM could not encode JPEG lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError("GDCM could not write the JPEG lossless file")


def ensure_images(root: Path) -> dict[tuple[str, str], Path]:
    """Write each size once as uncompressed, then re-encode it in each syntax (skipped when present)."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for index, (name, shape) in enumerate(SIZES.items()):
        base = root / f"{name}_uncompressed.dcm"
        laterality = "R" if index % 2 else "L"
        if not base.exists():
            image = realistic_image(shape, laterality, seed=index)
            uids = DicomUIDs(f"1.2.826.0.1.3680043.9.{index}", f"1.2.826.0.1.3680043.9.{index}.1",
                             f"1.2.826.0.1.3680043.9.{index}.1.1")
            write_mammogram(base, image, laterality=laterality, view="MLO", spacing_mm=0.07, identity=IDENTITY,
                            uids=uids, encoding=ImageEncoding(bits_stored=14, voi="window", window=(0.02, 0.95)))
        files[(name, "uncompressed")] = base
        for syntax in SYNTAXES[1:]:
            path = root / f"{name}_{syntax}.dcm"
            if not path.exists():
                if syntax == "jpeg_lossless":
                    _jpeg_lossless_with_gdcm(base, path)
                else:
                    ds = pydicom.dcmread(base)
                    uid = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless}[syntax]
                    ds.compress(uid, generate_instance_uid=False)
                    ds.save_as(path, enforce_file_format=True)
            files[(name, syntax)] = path
    return files


# ----------------------------------------------------------------------------- variants
def project_decode(ds: pydicom.Dataset) -> np.ndarray:
    """The decoder the project's reader uses (data/decoders.py when present), so all variants share it."""
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed and decoders is not None:
        return decoders.decode(ds, str(syntax))[0]
    return ds.pixel_array


def decoder_names(files: dict[tuple[str, str], Path]) -> dict[str, str]:
    """The backend the reader reports per syntax (``meta["decoder"]``, when the reader reports one)."""
    out = {}
    for (_, syntax), path in files.items():
        meta = PreprocessMammogramd(spatial_size=OUT_HW)({"image": str(path)})["image"].meta
        out[syntax] = str(meta.get("decoder", "pydicom default"))
    return out


BASELINE_PACKAGE = "mammoclip_monai_baseline"


def baseline_transforms(commit: str, into: Path):
    """``mammoclip_monai.data.transforms`` as it was at ``commit``, imported as another package."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit, "mammoclip_monai"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / BASELINE_PACKAGE
    (into / "mammoclip_monai").rename(package)
    for source in package.rglob("*.py"):
        source.write_text(re.sub(r"\bmammoclip_monai\b", BASELINE_PACKAGE, source.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{BASELINE_PACKAGE}.data.transforms")


def make_variants(baseline=None) -> dict[str, callable]:
    four = Compose([LoadMammogramd(), CropBreastd(), CanonicalLateralityd(),
                    ResizeKeepAspectd(spatial_size=OUT_HW)])
    fused = PreprocessMammogramd(spatial_size=OUT_HW)
    extra = {}
    if baseline is not None:
        old = Compose([baseline.LoadMammogramd(), baseline.CropBreastd(), baseline.CanonicalLateralityd(),
                       baseline.ResizeKeepAspectd(spatial_size=OUT_HW)])
        extra["c0_four_transforms_baseline"] = lambda p: old({"image": str(p)})

    def decode(path: Path) -> None:
        project_decode(pydicom.dcmread(str(path)))

    return {
        "a_decode": decode,
        "b_reference_png": lambda p: reference_preprocess(p, io.BytesIO(), decode=project_decode),
        "b0_reference_nopng": lambda p: reference_preprocess(p, None, decode=project_decode),
        "c_four_transforms": lambda p: four({"image": str(p)}),
        "d_fused": lambda p: fused({"image": str(p)}),
        **extra,
    }


def run(files: dict[tuple[str, str], Path], rounds: int, baseline=None) -> dict:
    variants = make_variants(baseline)
    names = list(variants)
    times: dict[tuple[str, str], dict[str, list[float]]] = {k: {n: [] for n in names} for k in files}
    smallest = min(SIZES, key=lambda s: SIZES[s][0] * SIZES[s][1])
    for (size, _), path in files.items():  # warm plugins and torch kernels (the files were just read)
        if size == smallest:
            for fn in variants.values():
                fn(path)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for key, path in files.items():
            for name in order:
                start = time.perf_counter()
                variants[name](path)
                times[key][name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return times


def summarise(files: dict, times: dict) -> list[dict]:
    rows = []
    for (size, syntax), per in times.items():
        h, w = SIZES[size]
        mp = h * w / 1e6
        med = {n: statistics.median(v) for n, v in per.items()}
        ratios = [b / d for b, d in zip(per["b_reference_png"], per["d_fused"])]
        ratios0 = [b / d for b, d in zip(per["b0_reference_nopng"], per["d_fused"])]
        rows.append({
            "size": size, "syntax": syntax, "megapixels": round(mp, 2),
            "file_mb": round(files[(size, syntax)].stat().st_size / 1e6, 1),
            **{f"{n}_ips": round(1.0 / med[n], 2) for n in med},
            "ratio_d_over_b": round(statistics.median(ratios), 2),
            "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
            "ratio_d_over_b0": round(statistics.median(ratios0), 2),
            "c_minus_a_ms_per_mp": round((med["c_four_transforms"] - med["a_decode"]) * 1000 / mp, 2),
            "d_minus_a_ms_per_mp": round((med["d_fused"] - med["a_decode"]) * 1000 / mp, 2),
        })
        if "c0_four_transforms_baseline" in med:
            rows[-1]["c0_minus_a_ms_per_mp"] = round((med["c0_four_transforms_baseline"] - med["a_decode"])
                                                     * 1000 / mp, 2)
    return rows


def markdown(rows: list[dict], rounds: int, baseline: str | None = None) -> str:
    lines = [(f"{rounds} alternating rounds, 1 torch thread, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, pydicom {pydicom.__version__}. Images/s (median over rounds); "
             "ratio = (d)/(b) images/s, median [min-max over rounds]; ms/MP = work after decoding per "
             "source megapixel."), "",
             ("| size (rows x cols) | syntax | (a) decode | (b) reference + PNG | (b0) reference, no PNG | "
             "(c) four transforms | (d) fused | (d)/(b) | (d)/(b0) | (c)-(a) ms/MP | (d)-(a) ms/MP |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['syntax']} | {r['a_decode_ips']:.2f} | {r['b_reference_png_ips']:.2f} | "
            f"{r['b0_reference_nopng_ips']:.2f} | {r['c_four_transforms_ips']:.2f} | {r['d_fused_ips']:.2f} | "
            f"**{r['ratio_d_over_b']:.2f}** [{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}] | "
            f"{r['ratio_d_over_b0']:.2f} | {r['c_minus_a_ms_per_mp']:.2f} | {r['d_minus_a_ms_per_mp']:.2f} |")
    if baseline is not None:
        lines += ["", f"(c0) the four transforms at commit {baseline}, same run. (c0) decodes with that tree's "
                  "reader: rows where it picked another decoder than (a) compare decoders, not transforms.", "",
                  "| size | syntax | (c0) images/s | (c0)-(a) ms/MP | (d)-(a) ms/MP | (d)-(a) / (c0)-(a) |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            share = (r["d_minus_a_ms_per_mp"] / r["c0_minus_a_ms_per_mp"] if r["c0_minus_a_ms_per_mp"] > 0
                     else float("nan"))
            lines.append(f"| {r['size']} | {r['syntax']} | {r['c0_four_transforms_baseline_ips']:.2f} | "
                         f"{r['c0_minus_a_ms_per_mp']:.2f} | {r['d_minus_a_ms_per_mp']:.2f} | **{share:.2f}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/chain-bench", help="folder for the generated DICOMs (reused)")
    parser.add_argument("--out", default=None, help="folder for results.md / results.json (default: --data)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--syntaxes", nargs="*", default=list(SYNTAXES), choices=list(SYNTAXES))
    parser.add_argument("--baseline-commit", default=None,
                        help="also time the four transforms of this git commit, as (c0) "
                             "(e.g. the tree an issue was filed on)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = {k: v for k, v in ensure_images(Path(args.data)).items() if k[0] in args.sizes and k[1] in args.syntaxes}
    names = decoder_names(files)
    with tempfile.TemporaryDirectory(prefix="chain-baseline-") as scratch:
        baseline = baseline_transforms(args.baseline_commit, Path(scratch)) if args.baseline_commit else None
        times = run(files, args.rounds, baseline)
    rows = summarise(files, times)
    text = markdown(rows, args.rounds, args.baseline_commit) + "\n\nDecoder per syntax (all variants): " + ", ".join(
        f"{k}: {v}" for k, v in names.items())
    print(text)
    out = Path(args.out or args.data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "decoders": names,
                                                  "raw_seconds": {f"{k[0]}/{k[1]}": v for k, v in times.items()}},
                                                 indent=1))


if __name__ == "__main__":
    main()
