"""Experiment (2026-12-07): how often does the **served** model's out-of-distribution flag fire on
colour-shifted dermoscopic images?

``python trainer/results/experiments/ood_colour_shift_served.py [--model-dir models/default]
> trainer/results/experiments/ood_colour_shift_served.txt``

``ood_colour_shift.py`` measured each guarding member alone on its own held-out fold. The served graph averages
its guarding members' distance ratios (``ood_score``, flagged above the manifest's ``ood.threshold``), so its
false-flag rate under a shift can differ from the members'. This runs the bundled ONNX file through
:class:`service.runtime.ModelRuntime` (the service's own runtime and preprocessing size) on the **test split**
of ``../shared/data/ham10000`` under each colour shift of :data:`colour_shift.SHIFTS` and on the project's
non-dermoscopic OOD set (:mod:`trainer.oodset`). The test split is used for no choice here: this only reports
(the served threshold was fixed on out-of-fold data before). Shifted pixels are clipped to 0..255 and rounded
to uint8, as a real image file would be.

Printed per shift: share of test images flagged (with a 95 % lesion-bootstrap interval, 1,000 resamples),
share of test images whose top class changed against the unshifted image, balanced accuracy; and the share
of the OOD set flagged. A proxy, like ``colour_shift.py``: global colour transforms, not another dermatoscope.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from sklearn.metrics import balanced_accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from colour_shift import SHIFTS

from trainer.config import DEFAULT_DATA_DIR


def run(runtime, images: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``float32 (N, K)`` and OOD scores ``float32 (N,)`` (the manifest's ``ood.output``) of
    ``uint8 (N, H, W, 3)`` images, through :meth:`service.runtime.ModelRuntime.predict` in batches of ``batch``."""
    probs, scores = [], []
    for i in range(0, len(images), batch):
        out = runtime.predict(images[i:i + batch])
        probs.append(out.probabilities)
        scores.append(out.extras[runtime.manifest.ood.output])
    return np.concatenate(probs), np.concatenate(scores)


def lesion_bootstrap(flags: np.ndarray, lesions: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the flagged share: ``flags`` ``bool (N,)`` per image, ``lesions`` ``str (N,)`` their
    ``lesion_id``; ``n`` resamples of lesions with replacement (all of a lesion's images go together)."""
    uniq, inv = np.unique(lesions, return_inverse=True)
    per = np.bincount(inv, weights=flags.astype(np.float64)), np.bincount(inv)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniq), size=(n, len(uniq)))
    shares = per[0][draws].sum(1) / per[1][draws].sum(1)
    return float(np.quantile(shares, 0.025)), float(np.quantile(shares, 0.975))


def main(model_dir: Annotated[Path, typer.Option(help="served model directory")] = Path("models/default"),
         data_dir: Annotated[Path, typer.Option(help="HAM10000 layout (labels.csv + images/); default "
                                                "../shared/data/ham10000 or DERMSERVE_DATA_DIR")] = DEFAULT_DATA_DIR,
         cache: Annotated[Path, typer.Option(help="decoded-image cache")] = Path(".cache/images")) -> None:
    """Print the served model's flagged share, top-class changes and balanced accuracy per colour shift."""
    from service.runtime import ModelRuntime
    from trainer.data import load_split, read_labels
    from trainer.oodset import build_ood_set, decode_all

    rt = ModelRuntime(model_dir, intra_op_threads=2)
    m = rt.manifest
    if m.ood is None:
        raise typer.BadParameter(f"{model_dir}: the model has no out-of-distribution guard")
    rows = sorted((r for r in read_labels(data_dir) if r["split"] == "test"), key=lambda r: r["image_id"])
    test = load_split(data_dir, rows, rt.spec, cache, workers=2)
    lesions = np.array([r["lesion_id"] for r in rows])
    threshold = m.ood.threshold
    print(f"model {m.name} {m.version} ({model_dir}); OOD threshold {threshold} (manifest); "
          f"test split {len(rows)} images, {len(set(lesions))} lesions\n")
    _, ood_scores = run(rt, decode_all(build_ood_set(), rt.spec))
    print(f"non-dermoscopic OOD set: {int((ood_scores > threshold).sum())}/{len(ood_scores)} flagged\n")
    print(f"{'shift':<8} {'flagged share (95 % CI)':>26} {'top class changed':>18} {'balanced accuracy':>18}")
    base_top = None
    x = test.images.astype(np.float32)
    for name, fn in SHIFTS.items():
        shifted = np.clip(np.rint(fn(x)), 0, 255).astype(np.uint8)
        probs, scores = run(rt, shifted)
        top = probs.argmax(1)
        base_top = top if base_top is None else base_top
        flags = scores > threshold
        lo, hi = lesion_bootstrap(flags, lesions)
        print(f"{name:<8} {flags.mean():>12.3f} ({lo:.3f}-{hi:.3f}) {(top != base_top).mean():>18.3f} "
              f"{balanced_accuracy_score(test.labels, top):>18.3f}")


if __name__ == "__main__":
    typer.run(main)
