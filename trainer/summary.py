"""``python -m trainer.summary RUN_DIR``: the README's metrics table for a run, from its files.

Reads ``RUN_DIR/metrics.json`` (test split, written by :mod:`trainer.train`) and prints a Markdown
table next to the issue-#3 targets, so the README quotes measured numbers only.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, help=__doc__)

#: issue #3 targets on the test split: metric key -> (label, target text)
TARGETS = {
    "accuracy": ("accuracy", "≥ 0.82"),
    "balanced_accuracy": ("balanced accuracy (mean per-class recall, ISIC 2018 ranking metric)", "≥ 0.75"),
    "macro_roc_auc_ovr": ("macro one-vs-rest ROC-AUC", "≥ 0.94"),
    "melanoma_sensitivity": ("melanoma sensitivity / specificity", "≥ 0.70"),
    "malignant_vs_benign_roc_auc": ("malignant-vs-benign ROC-AUC (mel + bcc + akiec)", ""),
    "ece_15": ("ECE (15 bins, top label), after temperature scaling", "≤ 0.05"),
}


def table(metrics: dict) -> str:
    """Markdown table (str) of the test metrics in ``metrics`` (the dict of ``metrics.json``)."""
    t, raw = metrics["test"], metrics.get("test_uncalibrated", {})
    lines = ["| metric | value | issue #3 target |", "|---|---:|---:|"]
    for key, (label, target) in TARGETS.items():
        value = f"{t[key]:.3f}"
        if key == "melanoma_sensitivity":
            value = f"{t[key]:.3f} / {t['melanoma_specificity']:.3f}"
        if key == "ece_15" and "ece_15" in raw:
            value = f"{t[key]:.3f} ({raw['ece_15']:.3f} before)"
        lines.append(f"| {label} | {value} | {target} |")
    recalls = ", ".join(f"{c} {v['recall']:.2f}" for c, v in t["per_class"].items())
    lines.append("")
    lines.append(f"Per-class recall (test): {recalls}.")
    return "\n".join(lines)


@app.command()
def main(run_dir: Path = typer.Argument(..., help="a trainer output directory (or an exported model directory)")) -> None:
    """Print the table for ``run_dir/metrics.json``."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(table(metrics))
    print()
    print(f"Best epoch {metrics.get('best_epoch')}, validation balanced accuracy "
          f"{metrics['val']['balanced_accuracy']:.3f}, temperature {metrics['temperature']:.3f}, "
          f"wall time {metrics['wall_time_seconds']['total'] / 60:.1f} min (training {metrics['wall_time_seconds']['train'] / 60:.1f}).")


if __name__ == "__main__":
    app()
