"""Experiment (2026-12-07): do members at 192 px beat the 160-px members on the same held-out folds?

``python trainer/results/experiments/resolution_192.py > trainer/results/experiments/resolution_192.txt``
(``... resolution_192.py BASE OTHER`` compares any two families trained on the same fold split.)

``cv192`` is ``cv``'s recipe (MobileNetV2 alpha 0.5, seed 42, the same lesion-grouped 4-fold split, fold seed
2026) with ``image_size=192`` instead of 160: 1.44x the multiply-accumulates per view. The frozen-feature study
(README) scored 192-224 px better; this compares trained members fold by fold, on each member's **held-out
fold** (out-of-fold; never the test split), from the committed ``oof.npz`` files: balanced accuracy (ISIC 2018
Task 3's ranking metric) at the arg-max of the identity view, of the mean logits of 4 views (identity, rot180,
flip-lr, flip-ud: the served views) and of all 8 dihedral views; melanoma sensitivity (4 views); and the
negative log-likelihood of the 4-view logits after a temperature fitted on the same fold (Guo et al. 2017; an
optimistic but paired figure). Only the folds both families have are compared.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, recall_score

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from trainer.data import CLASS_CODES
from trainer.metrics import calibrated_probabilities, fit_temperature

ROOT = Path(__file__).resolve().parents[1]
#: positions in trainer.cv.VIEWS of identity, rot180, flip-lr, flip-ud (the served 4 views)
SERVED_VIEWS = (0, 2, 4, 6)


def fold_row(member: Path) -> dict[str, float]:
    """Held-out figures of one member from its ``oof.npz`` (``logits`` ``float32 (8, N, K)``, ``labels`` ``(N,)``)."""
    with np.load(member / "oof.npz") as z:
        logits, y = z["logits"].astype(np.float64), z["labels"]
    four = logits[list(SERVED_VIEWS)].mean(0)
    t = fit_temperature(four, y)
    p = calibrated_probabilities(four, t)
    mel = CLASS_CODES.index("mel")
    return {
        "bal_acc_1view": balanced_accuracy_score(y, logits[0].argmax(1)),
        "bal_acc_4views": balanced_accuracy_score(y, four.argmax(1)),
        "bal_acc_8views": balanced_accuracy_score(y, logits.mean(0).argmax(1)),
        "mel_sens_4views": recall_score(y == mel, four.argmax(1) == mel),
        "nll_4views": float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean()),
        "n": len(y),
    }


def compare(base: str = "cv", other: str = "cv192") -> None:
    """Print one row per fold both families have, then the mean paired difference (``other - base``).

    Raises:
        ValueError: no fold in common, or the two families' members of a fold hold out different images (not
            the same split).
    """
    folds = sorted(p.parent.name for p in (ROOT / other).glob("fold*/oof.npz")
                   if (ROOT / base / p.parent.name / "oof.npz").exists())
    if not folds:
        raise ValueError(f"{base} and {other} (under {ROOT}) have no fold in common")
    cols = ["bal_acc_1view", "bal_acc_4views", "bal_acc_8views", "mel_sens_4views", "nll_4views"]
    width = max(7, len(base), len(other))
    print(f"{'fold':<6} {'family':<{width}} {'n':>5} " + " ".join(f"{c:>16}" for c in cols))
    diffs = []
    for f in folds:
        ids = [set(np.load(ROOT / fam / f / "oof.npz")["image_ids"]) for fam in (base, other)]
        if ids[0] != ids[1]:
            raise ValueError(f"{base}/{f} and {other}/{f} hold out different images: not the same split")
        rows = {fam: fold_row(ROOT / fam / f) for fam in (base, other)}
        for fam, r in rows.items():
            print(f"{f:<6} {fam:<{width}} {r['n']:>5} " + " ".join(f"{r[c]:>16.4f}" for c in cols))
        diffs.append([rows[other][c] - rows[base][c] for c in cols])
    d = np.array(diffs)
    print(f"\nmean paired difference {other} - {base} over {len(folds)} fold(s) ({', '.join(folds)}):")
    print(f"{'':<{width + 12}} " + " ".join(f"{v:>+16.4f}" for v in d.mean(0)))
    print("(NLL: lower is better; one seed per fold, and a member's seed alone moves it by several points)")


def main() -> None:
    """``[BASE OTHER]``: two family folders under trainer/results (default: cv cv192)."""
    if len(sys.argv) not in (1, 3):
        raise SystemExit(f"usage: {Path(sys.argv[0]).name} [BASE OTHER]  (two family folders under {ROOT})")
    compare(*sys.argv[1:3])


if __name__ == "__main__":
    main()
