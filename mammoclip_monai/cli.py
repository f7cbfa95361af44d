"""The ``mammoclip`` command line: one sub-command per job, heavy imports only when a job runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("mammoclip_monai.cli")

def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given, folders walked recursively for DICOM/PNG/JPEG/TIFF files (sorted)."""
    from mammoclip_monai.inference.data import find_image_files

    try:
        return find_image_files(list(inputs))
    except FileNotFoundError as err:
        raise SystemExit(f"mammoclip: {err}") from err


# ----------------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    from mammoclip_monai.data.synthetic import generate_dataset

    summary = generate_dataset(args.out, n_patients=args.patients, seed=args.seed,
                               image_size=(args.height, args.width), workers=args.workers,
                               overwrite=args.overwrite, progress=not args.quiet)
    print(json.dumps(summary, indent=2, default=str))
    return 0


# ----------------------------------------------------------------------------- inspect
def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the metadata the reader keeps (never patient identifiers) for each file."""
    from mammoclip_monai.data.reader import MammogramReadError, read_mammogram

    failures = 0
    for path in expand_inputs(args.inputs):
        try:
            array, meta = read_mammogram(str(path), voi=args.voi, allow_any_modality=args.any_modality)
        except MammogramReadError as err:
            failures += 1
            print(json.dumps({"file": str(path), "error": err.reason}))
            continue
        meta = dict(meta, min=float(array.min()), max=float(array.max()), mean=float(array.mean()))
        print(json.dumps(meta, default=str))
    return 1 if failures else 0


# ----------------------------------------------------------------------------- preprocess
def cmd_preprocess(args: argparse.Namespace) -> int:
    """Run the deterministic pipeline (read, crop, canonicalise, resize) and write 8-bit PNGs."""
    import numpy as np
    from PIL import Image

    from mammoclip_monai.data.pipelines import preprocessing
    from mammoclip_monai.data.reader import MammogramReadError

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    chain = preprocessing(spatial_size=(args.height, args.width), normalize=False,
                          allow_any_modality=args.any_modality)
    failures = 0
    rows = []
    for path in expand_inputs(args.inputs):
        try:
            image = chain({"image": str(path)})["image"]
        except MammogramReadError as err:
            failures += 1
            logger.error("skipped %s", err)
            continue
        name = image.meta["image_hash"] + ".png"
        pixels = (np.clip(image.as_tensor()[0].numpy(), 0, 1) * 255 + 0.5).astype(np.uint8)
        Image.fromarray(pixels).save(out_dir / name)
        rows.append({"file": str(path), "png": name, "laterality": image.meta["laterality"],
                     "view": image.meta["view"]})
    (out_dir / "index.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {len(rows)} PNG(s) to {out_dir}" + (f"; {failures} file(s) could not be read" if failures else ""))
    return 1 if failures else 0


# ----------------------------------------------------------------------------- data efficiency
def parse_overrides(pairs: Sequence[str]) -> dict:
    """``KEY=VALUE`` pairs (values as JSON when they parse, else strings) -> bundle overrides."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_data_efficiency(args: argparse.Namespace) -> int:
    from mammoclip_monai.evaluation.efficiency import data_efficiency

    configs = Path(args.configs)
    if not (configs / "linear_probe.json").is_file():
        raise FileNotFoundError(f"{configs}: no bundle configs here (run from the repository root or pass --configs)")
    rows = data_efficiency(configs, args.out, tasks=args.tasks, fractions=args.fractions, methods=args.methods,
                           overrides=parse_overrides(args.set))
    print((Path(args.out) / "results.md").read_text(encoding="utf-8"))
    return 0 if rows else 1


# ----------------------------------------------------------------------------- explain
def cmd_explain(args: argparse.Namespace) -> int:
    """FActOR probabilities, heatmaps, boxes and overlays; unreadable files are reported, the rest processed."""
    from mammoclip_monai.interpret.explain import Explainer
    from mammoclip_monai.networks import MammoCLIP

    files = expand_inputs(args.inputs)
    if not files:
        raise FileNotFoundError(f"no image files in {args.inputs}")
    model = MammoCLIP.from_pretrained(args.model)
    explainer = Explainer(model, args.factor, layer=args.layer, top_k=args.top_k, threshold=args.threshold,
                          allow_any_modality=args.any_modality)
    summary = explainer.explain(files, args.out, overlays=not args.no_overlays, progress=not args.quiet)
    print(f"explained {len(summary['images'])} image(s) into {args.out}"
          + (f"; {len(summary['errors'])} file(s) failed:" if summary["errors"] else ""))
    for error in summary["errors"]:
        print(f"  {error['image']}: {error['error']}")
    return 1 if summary["errors"] else 0


# ----------------------------------------------------------------------------- predict / embed / export
def _load_prompts(path: str | None) -> dict | None:
    """A prompt file: ``{"mass": ["no mass", "mass"], ...}`` or the packaged format (``{"tasks": ...}``)."""
    if path is None:
        return None
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and "tasks" in data:
        from mammoclip_monai.text.prompts import load_prompt_sets

        return load_prompt_sets(path)  # keeps the file's class names (density_A, ...)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: a prompt file maps names to class prompts, e.g. {{\"mass\": [\"no mass\", \"mass\"]}}")
    return data


def _predictor(args: argparse.Namespace):
    from mammoclip_monai.inference import Predictor

    return Predictor.from_pretrained(args.model, prompts=_load_prompts(getattr(args, "prompts", None)),
                                     batch_size=args.batch_size, allow_any_modality=args.any_modality)


def _report_failures(done: str, errors: list[dict]) -> int:
    print(done + (f"; {len(errors)} file(s) could not be read:" if errors else ""))
    for error in errors:
        print(f"  {error['file']}: {error['error']}")
    return 1 if errors else 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Zero-shot probabilities per file -> predictions.csv / .json; unreadable files are reported."""
    from mammoclip_monai.inference import write_predictions

    predictor = _predictor(args)
    rows, errors = predictor.predict_many(args.inputs, progress=not args.quiet)
    names = predictor.classifier().output_names
    paths = write_predictions(rows, errors, args.out, names)
    return _report_failures(f"wrote {len(rows)} prediction(s) to {paths['csv']}", errors)


def cmd_embed(args: argparse.Namespace) -> int:
    """Image embeddings -> embeddings.npy (N, D) + index.csv (row -> file) + errors in index.json."""
    import csv
    import io

    import numpy as np

    from mammoclip_monai.engines.handlers import atomic_write_text
    from mammoclip_monai.inference.writer import IDENTITY_COLUMNS

    vectors, rows, errors = _predictor(args).embed(args.inputs, progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".embeddings.npy.tmp"
    with tmp.open("wb") as handle:
        np.save(handle, vectors)
    tmp.replace(out / "embeddings.npy")
    index = io.StringIO()
    writer = csv.writer(index, lineterminator="\n")
    writer.writerow(["row", *IDENTITY_COLUMNS])
    writer.writerows([i, *(row[k] for k in IDENTITY_COLUMNS)] for i, row in enumerate(rows))
    atomic_write_text(index.getvalue(), out / "index.csv")
    atomic_write_text(json.dumps({"shape": list(vectors.shape), "errors": errors}, indent=1) + "\n", out / "index.json")
    return _report_failures(f"wrote {vectors.shape[0]} embedding(s) of dimension {vectors.shape[1]} to {out}", errors)


def cmd_export(args: argparse.Namespace) -> int:
    """The text tower as traced TorchScript (+ tokenizer) and the image tower as ONNX, with parity figures."""
    from mammoclip_monai.export import export_towers
    from mammoclip_monai.networks import MammoCLIP

    summary = export_towers(MammoCLIP.from_pretrained(args.model), args.out, onnx=not args.no_onnx)
    print(json.dumps(summary, indent=2))
    return 0


# ----------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammoclip", description="MammoCLIP-MONAI command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate the synthetic mammography dataset (DICOM + CSVs)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("inspect", help="print what the reader makes of files (safe metadata only)")
    p.add_argument("inputs", nargs="+", help="files or folders")
    p.add_argument("--voi", default="auto", choices=["auto", "lut", "window", "minmax", "range"])
    p.add_argument("--any-modality", action="store_true", help="accept modalities other than MG")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("preprocess", help="crop, canonicalise and resize mammograms to PNG")
    p.add_argument("inputs", nargs="+", help="files or folders")
    p.add_argument("--out", required=True)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--any-modality", action="store_true")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("data-efficiency", help="linear probe / fine-tuning at 10/50/100 %% of the training patients")
    p.add_argument("--tasks", nargs="+", default=["mass", "calcification", "density"])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.5, 1.0])
    p.add_argument("--methods", nargs="+", default=["linear_probe", "finetune"], choices=["linear_probe", "finetune"])
    p.add_argument("--configs", default="bundle/configs", help="the bundle's config folder")
    p.add_argument("--out", default="bundle/eval/data_efficiency")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="bundle overrides, e.g. probe_epochs=10 ckpt_dir=/models dataset_dir=/data")
    p.set_defaults(func=cmd_data_efficiency)

    p = sub.add_parser("explain", help="Mammo-FActOR heatmaps, boxes and overlays for files or folders")
    p.add_argument("inputs", nargs="+", help="DICOM/PNG files or folders")
    p.add_argument("--model", default="bundle/models/pretrained", help="a saved MammoCLIP (from_pretrained folder)")
    p.add_argument("--factor", default="bundle/eval/factor/factor.pt", help="FActOR weights (factor.json writes them)")
    p.add_argument("--out", default="explanations", help="output folder")
    p.add_argument("--layer", default=None, help="encoder layer FActOR was trained on (default: the one stored in "
                   "the FActOR weights)")
    p.add_argument("--top-k", type=int, default=10, help="neurons in each heatmap")
    p.add_argument("--threshold", type=float, default=0.5, help="box threshold, a fraction of the heatmap peak")
    p.add_argument("--no-overlays", action="store_true", help="JSON and neuron table only")
    p.add_argument("--any-modality", action="store_true", help="accept non-mammography DICOM")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_explain)

    for name, help_text in (("predict", "zero-shot probabilities for files, folders or a CSV -> predictions.csv"),
                            ("embed", "image embeddings -> embeddings.npy + index.csv")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("inputs", nargs="+", help="DICOM/PNG files, folders, or a CSV with an 'image' column")
        p.add_argument("--model", default="bundle/models/pretrained", help="a saved MammoCLIP (from_pretrained folder)")
        if name == "predict":
            p.add_argument("--prompts", default=None,
                           help='JSON file {"mass": ["no mass", "mass"], ...} (default: mass, calcification, density)')
        p.add_argument("--out", default=name + ("ions" if name == "predict" else "dings"), help="output folder")
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--any-modality", action="store_true", help="accept non-mammography DICOM")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=cmd_predict if name == "predict" else cmd_embed)

    p = sub.add_parser("export", help="text tower -> TorchScript (traced), image tower -> ONNX, with parity checks")
    p.add_argument("--model", default="bundle/models/pretrained", help="a saved MammoCLIP (from_pretrained folder)")
    p.add_argument("--out", default="bundle/models/export", help="output folder")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX (it needs the onnx extra)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileExistsError, FileNotFoundError) as err:  # bad arguments or inputs: no traceback
        print(f"mammoclip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
