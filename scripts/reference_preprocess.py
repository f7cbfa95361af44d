"""Reference pipeline: the original Mammo-CLIP's documented offline preprocessing, DICOM -> 8-bit PNG.

Written from the documented steps only (no code of the original is used):

1. decode the DICOM (pydicom ``pixel_array``, whatever plugin pydicom picks);
2. cut a 5 px border;
3. invert MONOCHROME1;
4. per-image min-max to 8 bits (no VOI LUT, no windowing);
5. crop to the breast: the longest run of non-empty columns, then of non-empty rows, each looked
   for in the central 80 % of the other axis ("non-empty": some pixel above ``EMPTY_LEVEL``);
6. resize to 912 x 1520 (W x H) without keeping the aspect ratio (Pillow bilinear, which is
   anti-aliased when shrinking); no laterality flip;
7. write the PNG at zlib level 1 (part of its cost; ``png=None`` skips it).

The arithmetic is float32 (a numpy-default float64 version would be slower still): the benchmark
compares against a fair reference, not a slow one.

    python scripts/reference_preprocess.py in.dcm out.png
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

BORDER = 5
OUT_WH = (912, 1520)
EMPTY_LEVEL = 10  # of 255: a row/column with nothing brighter is background
CENTRAL = 0.8
PNG_COMPRESS_LEVEL = 1  # zlib level 1: OpenCV's imwrite default; Pillow's own default (6) is ~10x slower


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    """Start and end (exclusive) of the longest run of True; the whole range when none."""
    if not flags.any():
        return 0, flags.size
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]
    best = int(np.argmax(ends - starts))
    return int(starts[best]), int(ends[best])


def _central(n: int) -> slice:
    margin = round(n * (1.0 - CENTRAL) / 2.0)
    return slice(margin, max(margin + 1, n - margin))


def breast_crop(image8: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the longest non-empty column run and row run."""
    h, w = image8.shape
    cols = (image8[_central(h), :] > EMPTY_LEVEL).any(axis=0)
    x0, x1 = _longest_run(cols)
    rows = (image8[:, _central(w)] > EMPTY_LEVEL).any(axis=1)
    y0, y1 = _longest_run(rows)
    return x0, y0, x1, y1


def to_uint8(pixels: np.ndarray, monochrome1: bool) -> np.ndarray:
    """Border cut, MONOCHROME1 inversion and min-max to 8 bits."""
    image = pixels[BORDER:-BORDER, BORDER:-BORDER].astype(np.float32)
    low, high = float(image.min()), float(image.max())
    if monochrome1:
        image = np.float32(high) - image
        low, high = 0.0, high - low
    image -= np.float32(low)
    if high > low:
        image *= np.float32(255.0 / (high - low))
    return image.astype(np.uint8)


def reference_preprocess(path: str | Path, png: str | Path | io.BytesIO | None = None,
                         decode: Callable[[pydicom.Dataset], np.ndarray] | None = None,
                         compress_level: int = PNG_COMPRESS_LEVEL) -> np.ndarray:
    """One DICOM -> the original's 1520 x 912 uint8 image (and its PNG written to ``png``).

    ``decode`` replaces ``ds.pixel_array`` (a benchmark passes the decoder the chains use).
    """
    ds = pydicom.dcmread(str(path))
    pixels = decode(ds) if decode is not None else ds.pixel_array
    image8 = to_uint8(pixels, str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1")
    x0, y0, x1, y1 = breast_crop(image8)
    resized = Image.fromarray(np.ascontiguousarray(image8[y0:y1, x0:x1])).resize(OUT_WH, Image.BILINEAR)
    if png is not None:
        resized.save(png, format="PNG", compress_level=compress_level)
    return np.asarray(resized)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dicom")
    parser.add_argument("png")
    args = parser.parse_args()
    reference_preprocess(args.dicom, args.png)


if __name__ == "__main__":
    main()
