"""Milliseconds per image for each DICOM transfer syntax x decoder backend (docs/benchmarks.md).

Writes a synthetic mammogram (the project's phantom, 16-bit stored in 16) at real detector sizes
in every lossless syntax the writer offers, then decodes each file with every installed backend of
``mammoclip_monai.data.decoders`` (GDCM included: it is timed here though only used when named).
Backends alternate inside each round, so drift (other jobs, thermal) hits all of them alike; the
figure is the median over rounds, with the spread (min-max) beside it. Only the decode is timed
(``decoders.decode`` on a parsed data set), not the file read or the grey-scale pipeline.

    python scripts/benchmark_decoders.py --rounds 5 --out /tmp/decoders-bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from mammoclip_monai.data import decoders
from mammoclip_monai.data.synthetic import render_image
from mammoclip_monai.data.synthetic.dicom_writer import (
    TRANSFER_SYNTAXES,
    DicomUIDs,
    ImageEncoding,
    PatientIdentity,
    make_uid,
    write_mammogram,
)

IDENTITY = PatientIdentity("Bench^Decoder^1", "MRN-BENCH", "19600101", 60, "ACC-BENCH", "20200101", "120000")
SIZES = {"hologic 3328x4096": (4096, 3328), "ge 2294x1914": (2294, 1914)}


def phantom(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A realistic image to compress: the synthetic breast, plus detector noise (real files have it)."""
    rng = np.random.default_rng(seed)
    image = np.asarray(render_image(seed, "L", "CC", "B", image_size=shape).image, dtype=np.float64)
    return np.clip(image + rng.normal(0, 0.002, size=shape), 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--out", default="decoder-benchmark")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="mammoclip-decoders-") as tmp:
        for size_name in args.sizes:
            shape = SIZES[size_name]
            image = phantom(shape)
            cases = []
            for transfer, uid in TRANSFER_SYNTAXES.items():
                path = Path(tmp) / f"{transfer}.dcm"
                uids = DicomUIDs(make_uid("b", transfer), make_uid("b2", transfer), make_uid("b3", transfer))
                write_mammogram(path, image, laterality="L", view="CC", spacing_mm=0.07, identity=IDENTITY,
                                uids=uids, encoding=ImageEncoding(bits_stored=16, transfer=transfer))
                ds = pydicom.dcmread(path)
                backends = (decoders.installed_backends(uid, forced_only=True) if transfer != "explicit"
                            else (decoders.NATIVE,))
                reference = ds.pixel_array if transfer == "explicit" else None
                cases.append((transfer, uid, ds, backends, path.stat().st_size, reference))
            native = cases[0][5]
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for transfer, uid, ds, backends, _size, _ref in cases:
                    for backend in backends:
                        start = time.perf_counter()
                        if backend == decoders.NATIVE:
                            pixels = pydicom.pixels.pixel_array(ds)
                        else:
                            pixels, _ = decoders.decode(ds, uid, (backend,))
                        times.setdefault((transfer, backend), []).append((time.perf_counter() - start) * 1e3)
                        if not np.array_equal(pixels, native):
                            raise SystemExit(f"{backend} decoded {transfer} wrongly")
            for transfer, uid, _ds, backends, size, _ref in cases:
                auto = decoders.installed_backends(uid)[:1] if transfer != "explicit" else (decoders.NATIVE,)
                for backend in backends:
                    t = times[(transfer, backend)]
                    results.append({"size": size_name, "shape": list(shape), "transfer": transfer,
                                    "syntax": pydicom.uid.UID(uid).name, "file_mb": round(size / 2**20, 2),
                                    "backend": backend, "auto_choice": backend in auto,
                                    "median_ms": round(statistics.median(t), 1), "min_ms": round(min(t), 1),
                                    "max_ms": round(max(t), 1), "rounds": len(t)})
    (out / "decoders.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    lines = ["| size | syntax | file MB | backend | ms / image (median) | spread (min-max) |",
             "|---|---|---:|---|---:|---:|"]
    for r in results:
        mark = " (auto)" if r["auto_choice"] else ""
        lines.append(f"| {r['size']} | {r['transfer']} | {r['file_mb']} | {r['backend']}{mark} | "
                     f"{r['median_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} |")
    (out / "decoders.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
