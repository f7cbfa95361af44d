"""The ``mammoclip`` command line: one sub-command per job, heavy imports only when a job runs.

Every command follows one error convention (:mod:`mammoclip_monai.utils.errors`): a bad input is one
line on stderr naming the file and the reason, and the other inputs are still processed. stdout carries
data only (``inspect``'s JSON lines, the data-efficiency table); status and summaries go to stderr and
``--quiet`` silences them (never the failures). No traceback without ``--verbose``. See :data:`EXIT_STATUS`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .utils.errors import (
    EXIT_FAILED_INPUTS,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    exit_code,
    format_traceback,
    one_line,
)

logger = logging.getLogger("mammoclip_monai.cli")

EXIT_STATUS = f"""exit status:
  {EXIT_OK}  every input was processed
  {EXIT_FAILED_INPUTS}  some inputs failed (each on one line on stderr: file and reason); the others were processed
  {EXIT_USAGE}  nothing was done: a usage error, no such path, an empty folder, an invalid prompt / model /
     FActOR / CSV file, an output folder that holds another run
  {EXIT_INTERNAL}  an internal error (a bug): run again with --verbose for the traceback"""

HEADS = {"zero_shot": "zero-shot head (image vs. prompt embeddings)", "factor": "FActOR head (per-attribute neurons)"}
"""Which head produced a probability: printed with every result and stored in every output file."""


# ----------------------------------------------------------------------------- shared plumbing
class Session:
    """What every command needs: its name, quietness, and how to report inputs that failed."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.command = args.command
        self.quiet = bool(args.quiet)
        self.verbose = bool(args.verbose)

    def say(self, text: str) -> None:
        """A status or summary line (stderr, so that stdout carries only data); silent with ``--quiet``."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def failed(self, file: str, reason: str) -> None:
        """One line per bad input (stderr), also with ``--quiet``: failures are never hidden."""
        print(f"mammoclip {self.command}: {file}: {reason}", file=sys.stderr, flush=True)

    def finish(self, summary: str, errors: Sequence[dict[str, str]], file_key: str = "file") -> int:
        """Print the failures and the summary; the exit status of the convention."""
        for error in errors:
            self.failed(error[file_key], error["error"])
        if errors:
            summary += f"; {len(errors)} input(s) failed (listed above)"
        self.say(summary)
        return EXIT_FAILED_INPUTS if errors else EXIT_OK

    def progress(self, items: Iterable[Any], total: int, unit: str = "image") -> Iterator[Any]:
        """A progress bar on stderr unless ``--quiet``."""
        if self.quiet:
            yield from items
            return
        from tqdm import tqdm

        yield from tqdm(items, total=total, unit=unit, desc=f"mammoclip {self.command}", file=sys.stderr)


def _datalist(inputs: Sequence[str]) -> list[dict[str, str]]:
    from .inference.data import inference_datalist

    return inference_datalist(list(inputs))


# ----------------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace, session: Session) -> int:
    from .data.synthetic import generate_dataset

    summary = generate_dataset(args.out, n_patients=args.patients, seed=args.seed,
                               image_size=(args.height, args.width), workers=args.workers,
                               overwrite=args.overwrite, progress=not session.quiet)
    counts = summary.get("counts", {})
    session.say(f"wrote a synthetic dataset of {counts.get('patients', args.patients)} patients "
                f"({counts.get('images', '?')} images) to {args.out} (details: {Path(args.out) / 'dataset.json'})")
    return EXIT_OK


# ----------------------------------------------------------------------------- inspect
def cmd_inspect(args: argparse.Namespace, session: Session) -> int:
    """One JSON line per readable file: the metadata the reader keeps (never patient identifiers),
    ``decoder`` included (which backend decoded the pixels; MAMMOCLIP_DICOM_DECODER forces one)."""
    from .data.reader import MammogramReadError, read_mammogram

    items = _datalist(args.inputs)
    errors = []
    for item in session.progress(items, len(items)):
        try:
            array, meta = read_mammogram(item["image"], voi=args.voi, allow_any_modality=args.any_modality)
        except MammogramReadError as err:
            errors.append({"file": item["image"], "error": err.reason})
            continue
        meta = dict(meta, min=float(array.min()), max=float(array.max()), mean=float(array.mean()))
        print(json.dumps(meta, default=str), flush=True)
    return session.finish(f"inspected {len(items) - len(errors)} file(s)", errors)


# ----------------------------------------------------------------------------- preprocess
def cmd_preprocess(args: argparse.Namespace, session: Session) -> int:
    """Fill the persistent cache: the deterministic chain once per image, 16-bit, keyed by content and parameters.

    stdout: one JSON line per cached file (``file``, ``entry``, ``new``); the bundle's ``cache_dir``
    reads the same entries when its image size and chain settings are the same.
    """
    from .data.cache import CachedPreprocessd, fill_cache

    items = _datalist(args.inputs)
    chain = CachedPreprocessd(keys="image", spatial_size=(args.height, args.width), cache_dir=args.out,
                              voi=args.voi, allow_any_modality=args.any_modality)
    results = fill_cache(chain, items, workers=args.workers, progress=not args.quiet, desc="preprocess")
    errors = [r for r in results if "error" in r]
    done = [r for r in results if "error" not in r]
    for result in done:
        print(json.dumps({"file": result["file"], "entry": result["entry"], "new": result["new"]}), flush=True)
    new = sum(1 for r in done if r["new"])
    return session.finish(f"cached {len(done)} image(s) in {chain.cache.directory} ({new} new, "
                          f"{len(done) - new} already there)", errors)


# ----------------------------------------------------------------------------- data efficiency
def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values as JSON when they parse, else strings) -> bundle overrides.

    A value starting with ``$`` is a Python expression that MONAI's config parser evaluates
    (docs/security.md): only pass overrides you would run as code.
    """
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


def cmd_data_efficiency(args: argparse.Namespace, session: Session) -> int:
    """Each method is the bundle's probe workflow: its config files, merged in order, from ``--configs``."""
    from .evaluation.efficiency import data_efficiency
    from .utils.errors import UsageError

    configs = Path(args.configs)
    if not (configs / "linear_probe.json").is_file():
        raise UsageError(f"{configs}: no bundle configs here (run from the repository root or pass --configs)")
    method_files = {"linear_probe": ["train.json", "linear_probe.json"],
                    "finetune": ["train.json", "linear_probe.json", "finetune.json"]}
    methods = {method: [configs / name for name in method_files[method]] for method in args.methods}
    overrides = parse_overrides(args.set)
    if args.overwrite:
        overrides["overwrite"] = True
    rows = data_efficiency(methods, args.out, tasks=args.tasks, fractions=args.fractions, overrides=overrides)
    if not session.quiet:
        print((Path(args.out) / "results.md").read_text(encoding="utf-8"))
    return EXIT_OK if rows else EXIT_USAGE


# ----------------------------------------------------------------------------- explain
def cmd_explain(args: argparse.Namespace, session: Session) -> int:
    """FActOR probabilities, heatmaps, boxes and overlays; unreadable files are reported, the rest processed."""
    from .interpret.explain import Explainer
    from .networks.pretrained import load_pretrained

    items = _datalist(args.inputs)
    model = load_pretrained(args.model)
    explainer = Explainer(model, args.factor, layer=args.layer, top_k=args.top_k, threshold=args.threshold,
                          allow_any_modality=args.any_modality)
    summary = explainer.explain([item["image"] for item in items], args.out, overlays=not args.no_overlays,
                                progress=not session.quiet)
    return session.finish(f"explained {len(summary['images'])} image(s) into {args.out}: probabilities from the "
                          f"{HEADS['factor']}, boxes and overlays", summary["errors"], file_key="image")


# ----------------------------------------------------------------------------- detect
def cmd_detect(args: argparse.Namespace, session: Session) -> int:
    """Boxes per file (file pixels) -> detections.csv / .json and overlays; unreadable files are reported."""
    from .detection.report import save_detection_overlay, write_detections
    from .inference.detect import DetectionPredictor

    files = [item["image"] for item in _datalist(args.inputs)]  # nothing to do: a usage error before loading
    predictor = DetectionPredictor.from_pretrained(args.detector, batch_size=args.batch_size,
                                                   allow_any_modality=args.any_modality)
    results, errors = predictor.detect_many(files)
    paths = write_detections(results, predictor.class_names, args.out, errors)
    shown = results[: max(args.overlays, 0)]
    for index, result in enumerate(session.progress(shown, total=len(shown), unit="overlay")):
        name = f"overlay_{index:03d}_{os.path.splitext(os.path.basename(result['image_path']))[0]}.png"
        save_detection_overlay(os.path.join(args.out, "overlays", name), result["image_path"], result["pred"],
                               predictor.class_names, min_score=args.min_score)
    boxes = sum(int((r["pred"]["scores"] >= args.min_score).sum()) for r in results)
    return session.finish(f"detected in {len(results)} image(s) ({', '.join(predictor.class_names)}): "
                          f"{boxes} box(es) scored >= {args.min_score:g}, all boxes in {paths['csv']}", errors)


# ----------------------------------------------------------------------------- predict / embed / export
def _predictor(args: argparse.Namespace) -> Any:
    from .inference import Predictor
    from .text.prompts import load_prompt_file

    prompts = load_prompt_file(args.prompts) if getattr(args, "prompts", None) else None
    return Predictor.from_pretrained(args.model, prompts=prompts, batch_size=args.batch_size,
                                     allow_any_modality=args.any_modality)


def cmd_predict(args: argparse.Namespace, session: Session) -> int:
    """Zero-shot probabilities per file -> predictions.csv / .json; unreadable files are reported."""
    from .inference import write_predictions

    files = [item["image"] for item in _datalist(args.inputs)]  # nothing to do: a usage error before loading
    predictor = _predictor(args)
    rows, errors = predictor.predict_many(files, progress=not session.quiet)
    names = predictor.classifier().output_names
    paths = write_predictions(rows, errors, args.out, names)
    return session.finish(f"wrote {len(rows)} prediction(s) ({', '.join(names)}; probabilities from the "
                          f"{HEADS['zero_shot']}) to {paths['csv']}", errors)


def cmd_embed(args: argparse.Namespace, session: Session) -> int:
    """Image embeddings -> embeddings.npy (N, D) + index.csv (row -> file) + errors in index.json."""
    import csv

    import numpy as np

    from .inference.writer import IDENTITY_COLUMNS
    from .utils.files import atomic_path, atomic_write_text

    files = [item["image"] for item in _datalist(args.inputs)]
    vectors, rows, errors = _predictor(args).embed(files, progress=not session.quiet)
    out = Path(args.out)
    with atomic_path(out / "embeddings.npy") as tmp, tmp.open("wb") as handle:
        np.save(handle, vectors)
    index = io.StringIO()
    writer = csv.writer(index, lineterminator="\n")
    writer.writerow(["row", *IDENTITY_COLUMNS])
    writer.writerows([i, *(row[k] for k in IDENTITY_COLUMNS)] for i, row in enumerate(rows))
    atomic_write_text(index.getvalue(), out / "index.csv")
    atomic_write_text(json.dumps({"shape": list(vectors.shape), "errors": errors}, indent=1) + "\n",
                      out / "index.json")
    return session.finish(f"wrote {vectors.shape[0]} embedding(s) of dimension {vectors.shape[1]} to {out}", errors)


def cmd_export(args: argparse.Namespace, session: Session) -> int:
    """The text tower as traced TorchScript (+ tokenizer), the image tower as ONNX, and torch.export programs
    (``image_tower.pt2``, ``zero_shot.pt2``, ``text_tower.pt2``), with parity figures."""
    from .export import export_towers
    from .networks.pretrained import load_pretrained

    model = load_pretrained(args.model)
    chatter = io.StringIO()  # the ONNX exporter prints its progress; keep it for --verbose
    with contextlib.redirect_stdout(chatter if not session.verbose else sys.stdout):
        summary = export_towers(model, args.out, onnx=not args.no_onnx, pt2=not args.no_pt2)
    for name, entry in summary.items():
        if isinstance(entry, dict) and "file" in entry:
            session.say(f"{name}: {Path(args.out) / entry['file']} "
                        f"(max |eager - exported| {entry['max_abs_difference']:.2e})")
    session.say(f"exported to {args.out} (details: {Path(args.out) / 'export.json'})")
    return EXIT_OK


# ----------------------------------------------------------------------------- entry point
MODEL_HELP = ("trained weights: a save_pretrained folder (default), a bundle checkpoint (model.pt with its run.json) "
              "or an original Mammo-CLIP .tar")


def _common() -> argparse.ArgumentParser:
    """``-v`` / ``-q`` accepted before or after the sub-command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, third-party warnings and tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or summaries; failures are still listed on stderr")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="mammoclip", description="MammoCLIP-MONAI command line",
                                     epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_STATUS, parents=[common],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("synth", "generate the synthetic mammography dataset (DICOM + CSVs)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=cmd_synth)

    inputs_help = "DICOM/PNG/JPEG/TIFF files, folders (searched recursively) or CSVs with an 'image' column"
    p = add("inspect", "print what the reader makes of files (safe metadata only), one JSON line per file")
    p.add_argument("inputs", nargs="+", help=inputs_help)
    p.add_argument("--voi", default="auto", choices=["auto", "lut", "window", "minmax", "range"])
    p.add_argument("--any-modality", action="store_true", help="accept modalities other than MG")
    p.set_defaults(func=cmd_inspect)

    p = add("preprocess", "read, crop, canonicalise and resize mammograms once into a persistent 16-bit cache "
                          "(the bundle's --cache_dir)")
    p.add_argument("inputs", nargs="+", help=inputs_help)
    p.add_argument("--out", required=True, metavar="CACHE_DIR",
                   help="the cache folder (entries go to CACHE_DIR/<key of the settings>/)")
    p.add_argument("--height", type=int, default=448, help="output height (default: the bundle's image_size)")
    p.add_argument("--width", type=int, default=288, help="output width")
    p.add_argument("--voi", default="auto", choices=["auto", "lut", "window", "minmax", "range"])
    p.add_argument("--workers", type=int, default=None, help="processes (default: the cores present)")
    p.add_argument("--any-modality", action="store_true")
    p.set_defaults(func=cmd_preprocess)

    p = add("data-efficiency", "linear probe / fine-tuning at 10/50/100 %% of the training patients")
    p.add_argument("--tasks", nargs="+", default=["mass", "calcification", "density"])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.5, 1.0])
    p.add_argument("--methods", nargs="+", default=["linear_probe", "finetune"], choices=["linear_probe", "finetune"])
    p.add_argument("--configs", default="bundle/configs", help="the bundle's config folder")
    p.add_argument("--out", default="bundle/eval/data_efficiency")
    p.add_argument("--overwrite", action="store_true", help="replace the runs of an earlier call in --out")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="bundle overrides, e.g. probe_epochs=10 ckpt_dir=/models dataset_dir=/data "
                        "(a value starting with $ is run as Python: docs/security.md)")
    p.set_defaults(func=cmd_data_efficiency)

    p = add("explain", "Mammo-FActOR probabilities, heatmaps, boxes and overlays for files or folders")
    p.add_argument("inputs", nargs="+", help=inputs_help)
    p.add_argument("--model", default="bundle/models/pretrained", help=MODEL_HELP)
    p.add_argument("--factor", default="bundle/eval/factor/factor.pt", help="FActOR weights (factor.json writes them)")
    p.add_argument("--out", default="explanations", help="output folder")
    p.add_argument("--layer", default=None, help="encoder layer FActOR was trained on (default: the one stored in "
                   "the FActOR weights)")
    p.add_argument("--top-k", type=int, default=10, help="neurons in each heatmap")
    p.add_argument("--threshold", type=float, default=0.5, help="box threshold, a fraction of the heatmap peak")
    p.add_argument("--no-overlays", action="store_true", help="JSON and neuron table only")
    p.add_argument("--any-modality", action="store_true", help="accept non-mammography DICOM")
    p.set_defaults(func=cmd_explain)

    p = add("detect", "mass / calcification boxes (file pixels) for files, folders or a CSV -> detections.csv")
    p.add_argument("inputs", nargs="+", help=inputs_help)
    p.add_argument("--detector", default="bundle/eval/detection/mammoclip_100pct/pretrained",
                   help="a detector directory (detection.json's pretrained/ folder, written by save_pretrained)")
    p.add_argument("--out", default="detections", help="output folder")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--overlays", type=int, default=20, help="overlay PNGs for the first N images (0: none)")
    p.add_argument("--min-score", type=float, default=0.3, help="boxes drawn and counted in the summary")
    p.add_argument("--any-modality", action="store_true", help="accept non-mammography DICOM")
    p.set_defaults(func=cmd_detect)

    for name, help_text in (("predict", "zero-shot probabilities for files, folders or a CSV -> predictions.csv"),
                            ("embed", "image embeddings -> embeddings.npy + index.csv")):
        p = add(name, help_text)
        p.add_argument("inputs", nargs="+", help=inputs_help)
        p.add_argument("--model", default="bundle/models/pretrained", help=MODEL_HELP)
        if name == "predict":
            p.add_argument("--prompts", default=None,
                           help='JSON file {"mass": ["no mass", "mass"], ...} (default: mass, calcification, density)')
        p.add_argument("--out", default=name + ("ions" if name == "predict" else "dings"), help="output folder")
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--any-modality", action="store_true", help="accept non-mammography DICOM")
        p.set_defaults(func=cmd_predict if name == "predict" else cmd_embed)

    p = add("export", "text tower -> TorchScript (traced), image tower -> ONNX, image tower, zero-shot "
                      "classifier and text tower -> torch.export .pt2, with parity checks")
    p.add_argument("--model", default="bundle/models/pretrained", help=MODEL_HELP)
    p.add_argument("--out", default="bundle/models/export", help="output folder")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX (it needs the onnx extra)")
    p.add_argument("--no-pt2", action="store_true", help="skip the torch.export .pt2 programs")
    p.set_defaults(func=cmd_export)
    return parser


def _configure_output(session: Session) -> None:
    """Logging from -v / -q: the project's INFO records unless --quiet; other libraries' records (the ONNX
    exporter logs every pass it runs), warnings and Hugging Face notes only with --verbose."""
    if session.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s", force=True)
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("mammoclip_monai").setLevel(logging.WARNING if session.quiet else logging.INFO)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    for noisy in (r"torch(\..*)?", r"onnx\w*(\..*)?", r"transformers(\..*)?", r"monai(\..*)?", r"timm(\..*)?"):
        warnings.filterwarnings("ignore", module=noisy)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse itself exits with 2 on a usage error
    args.verbose = getattr(args, "verbose", False)
    args.quiet = getattr(args, "quiet", False)
    session = Session(args)
    _configure_output(session)
    try:
        return int(args.func(args, session))
    except KeyboardInterrupt:
        print(f"mammoclip {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the convention: one line, an exit status, a traceback on request
        code = exit_code(err)
        if code == EXIT_INTERNAL and isinstance(err, (ValueError, FileNotFoundError, FileExistsError)):
            code = EXIT_USAGE  # bad arguments that the library rejects (a missing model folder, ...)
        if session.verbose:
            print(format_traceback(err), file=sys.stderr, end="")
        kind = "error" if code != EXIT_INTERNAL else f"internal error ({type(err).__name__})"
        hint = " (run again with --verbose for the traceback)" if code == EXIT_INTERNAL and not session.verbose else ""
        print(f"mammoclip {args.command}: {kind}: {one_line(err)}{hint}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
