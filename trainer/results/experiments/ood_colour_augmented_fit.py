"""Experiment (2026-12-07): can the out-of-distribution guard absorb colour shifts without letting
non-dermoscopic images through, by fitting its Gaussians on colour-jittered training images too?

``python trainer/results/experiments/ood_colour_augmented_fit.py --family trainer/results/cv
> trainer/results/experiments/ood_colour_augmented_fit.txt``

The served guard (:mod:`trainer.ood`, Lee et al. 2018) fits class means and one shared covariance on each
guarding member's clean training features; a warm white balance then moves 21 % of held-out dermoscopic images
past the threshold (``ood_colour_shift.txt``). Here each member's detector is fitted twice on its **training
folds**: ``clean`` (as served) and ``jittered`` (the clean features plus one randomly colour-transformed copy
of every training image, :func:`random_colour`, same labels), so the shared covariance also spans the
directions in which a camera's colours move the features. Both are calibrated the same way (95th percentile
of the member's **clean held-out fold**) and scored on that held-out fold under the fixed shifts of
:data:`colour_shift.SHIFTS` plus three the jitter does not contain (saturation x 1.3 and x 0.7, and a
stronger white-balance error, red x 1.25 / blue x 0.8), and on the non-dermoscopic OOD set
(:mod:`trainer.oodset`). Never the test split.

Caveat: the jitter's range contains the six fixed shifts (that is its purpose), so their rows show what the
fit can absorb, not how it generalises; the three extra rows and the OOD column are the checks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from colour_shift import SHIFTS
from ood_colour_shift import member_inputs


def _saturation(s: float):
    def fn(x: np.ndarray) -> np.ndarray:
        grey = x.mean(axis=-1, keepdims=True)
        return grey + np.float32(s) * (x - grey)
    return fn


#: Shifts outside :func:`random_colour`'s range (name -> function of float32 (N, S, S, 3) in 0..255).
UNSEEN = {
    "saturated": _saturation(1.3),
    "desaturated": _saturation(0.7),
    "warm+": lambda x: x * np.array([1.25, 1.0, 0.8], np.float32),
}


def random_colour(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random global colour transform per image of ``float32 (N, S, S, 3)`` in 0..255: per-channel gains
    ``exp(U(-0.15, 0.15))`` (white balance), brightness ``exp(U(-0.2, 0.2))``, then gamma ``exp(U(-0.27,
    0.27))`` (0.76-1.31) on the clipped 0..1 image. Returns float32, same shape, in 0..255."""
    n = len(x)
    gains = np.exp(rng.uniform(-0.15, 0.15, (n, 1, 1, 3)) + rng.uniform(-0.2, 0.2, (n, 1, 1, 1)))
    gamma = np.exp(rng.uniform(-0.27, 0.27, (n, 1, 1, 1)))
    return (255.0 * np.clip(x * gains / 255.0, 0.0, 1.0) ** gamma).astype(np.float32)


def member_features_cached(member_dir: Path, cache: Path) -> dict[str, np.ndarray]:
    """Penultimate features ``float32 (N, D)`` of one member: its training folds clean (``train``) and jittered
    (``train_jit``), its held-out fold under every shift, and the OOD set; plus ``train_labels``. Cached."""
    path = cache / f"{member_dir.parent.name}_{member_dir.name}.npz"
    if path.exists():
        return dict(np.load(path))
    from trainer.cv import member_config
    from trainer.ensemble import member_features

    cfg = member_config(member_dir)
    model, train, held, ood = member_inputs(member_dir)
    rng = np.random.default_rng(cfg.fold + 1000 * cfg.fold_seed)
    out = {"train_labels": train.labels, "train": member_features(model, train.images)}
    out["train_jit"] = member_features(model, random_colour(train.images.astype(np.float32), rng))
    out["ood"] = member_features(model, ood)
    x = held.images.astype(np.float32)
    for name, fn in {**SHIFTS, **UNSEEN}.items():
        out[f"held_{name}"] = member_features(model, np.clip(fn(x), 0.0, 255.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def main(family: Annotated[list[Path], typer.Option(help="family folders (<family>/fold<i>/member.json)")],
         fold: Annotated[list[str] | None, typer.Option(help="only these members (fold0, ...); default: all")] = None,
         cache: Annotated[Path, typer.Option(help="per-member feature cache")] = Path(".cache/ood_aug")) -> None:
    """Print, per fit (clean / jittered) and shift, the held-out share flagged (mean and min-max over members)
    and the OOD set's share flagged and AUROC against clean held-out images."""
    from trainer.data import CLASS_CODES
    from trainer.ood import MahalanobisDetector

    names = [*SHIFTS, *UNSEEN]
    rows: dict[str, list[dict[str, float]]] = {"clean": [], "jittered": []}
    for fam in family:
        members = sorted(p.parent for p in Path(fam).glob("fold*/member.json") if not fold or p.parent.name in fold)
        if not members:
            raise typer.BadParameter(f"no members under {fam}")
        for m in members:
            f = member_features_cached(m, cache)
            y = f["train_labels"]
            fits = {"clean": MahalanobisDetector.fit(f["train"], y, len(CLASS_CODES)),
                    "jittered": MahalanobisDetector.fit(np.r_[f["train"], f["train_jit"]], np.r_[y, y],
                                                        len(CLASS_CODES))}
            for label, det in fits.items():
                det.calibrate(f["held_none"])
                r = {n: float((det.ratio(f[f"held_{n}"]) > 1.0).mean()) for n in names}
                r["OOD flagged"] = float((det.ratio(f["ood"]) > 1.0).mean())
                clean_d, ood_d = det.distance(f["held_none"]), det.distance(f["ood"])
                r["AUROC"] = float(roc_auc_score(np.r_[np.zeros(len(clean_d)), np.ones(len(ood_d))],
                                                 np.r_[clean_d, ood_d]))
                rows[label].append(r)
            print(f"# {m}: done", file=sys.stderr, flush=True)
    cols = [*names, "OOD flagged", "AUROC"]
    print("Held-out dermoscopic images flagged by each member's guard (threshold = 95 % of its clean held-out fold), "
          "per shift; the non-dermoscopic OOD set's share flagged and its AUROC against clean held-out images. "
          "Mean over members (min-max). Shifts after 'gamma' lie outside the jitter's range.\n")
    print(f"{'fit':<9} " + " ".join(f"{c:>17}" for c in cols))
    for label, rs in rows.items():
        cells = []
        for c in cols:
            v = np.array([r[c] for r in rs])
            cells.append(f"{v.mean():.3f} ({v.min():.2f}-{v.max():.2f})")
        print(f"{label:<9} " + " ".join(f"{c:>17}" for c in cells))
    print(f"\nmembers: {len(rows['clean'])} ({', '.join(str(Path(f).name) for f in family)})")


if __name__ == "__main__":
    typer.run(main)
