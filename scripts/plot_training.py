"""Plot a training run: the training loss (TensorBoard) and the validation metrics per epoch.

    python scripts/plot_training.py --logs bundle/logs --out docs/images/training_curves.png

Reads ``metrics.json`` (written by the bundle's ``MetricsJSONWriter``) and the TensorBoard event
files under ``logs/tensorboard``; needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def train_loss(tensorboard_dir: Path, tag: str = "train_loss") -> tuple[list[int], list[float]]:
    """(iterations, values) of a scalar from the newest event file that has it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted(tensorboard_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime,
                         reverse=True):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            scalars = acc.Scalars(tag)
            return [s.step for s in scalars], [s.value for s in scalars]
    return [], []


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what is there)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", default="bundle/logs")
    parser.add_argument("--out", default="docs/images/training_curves.png")
    parser.add_argument("--metrics", nargs="+", default=["val_zs_auroc_mass", "val_zs_auroc_calcification"])
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = Path(args.logs)
    record = json.loads((logs / "metrics.json").read_text())
    history = record["history"]
    steps, losses = train_loss(logs / "tensorboard")

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    if losses:
        ax_loss.plot(steps, losses, color="0.8", lw=0.8, label="per iteration")
        ax_loss.plot(steps, smooth(losses, 20), color="C0", lw=1.8, label="moving average (20)")
        ax_loss.legend(frameon=False)
    ax_loss.set(title="training loss (multi-view, label-aware)", xlabel="iteration", ylabel="loss")
    epochs = [e["epoch"] for e in history]
    for i, name in enumerate(args.metrics):
        ax_val.plot(epochs, [e.get(name, float("nan")) for e in history], marker="o", color=f"C{i + 1}",
                    label=name.replace("val_zs_auroc_", "zero-shot AUROC, "))
    test = record.get("test", {})
    for i, name in enumerate(args.metrics):
        value = test.get(name.replace("val_", "test_"))
        if value is not None:
            ax_val.axhline(value, color=f"C{i + 1}", ls="--", lw=1)
    best = record.get("best", {}).get("epoch")
    if best:
        ax_val.axvline(best, color="0.6", ls=":", lw=1)
    ax_val.set(title="validation (dashed: test, best checkpoint)", xlabel="epoch", ylabel="AUROC", ylim=(0.4, 1.02))
    ax_val.legend(frameon=False, loc="lower right")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
