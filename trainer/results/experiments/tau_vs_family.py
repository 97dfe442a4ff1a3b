"""Experiment (2026-12-07): how much of 2.5.0's change against 2.4.0 is the new family and how much the new tau.

``python trainer/results/experiments/tau_vs_family.py > trainer/results/experiments/tau_vs_family.txt``

Rule 2 of :mod:`trainer.ensemble` picks tau on out-of-fold (OOF) data (the largest OOF balanced accuracy keeping OOF
accuracy >= 0.79): 0.35 for 2.4.0's weighting (cv 1/2 + cv_sog 1/4 + cv_v1_4 1/4), 0.4 for 2.5.0's (cv 1/2 + cv_sog
1/4 + cv_a035 1/4). A larger tau trades accuracy for minority-class recall, so the two models' difference mixes
both changes. This scores both weightings at both taus, 4 flip views (arg-max metrics: no temperature needed), on
OOF data and, reported only, on the test split. It chooses nothing.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from trainer.ensemble import CLASS_CODES, VIEW_SETS, adjust
from trainer.families import load_families

R = ROOT / "trainer" / "results"
WEIGHTINGS = {"2.4.0 (cv_v1_4)": ("cv", "cv_sog", "cv_v1_4"), "2.5.0 (cv_a035)": ("cv", "cv_sog", "cv_a035")}
WEIGHTS = (0.5, 0.25, 0.25)
MEL = CLASS_CODES.index("mel")


def scores(y: np.ndarray, logits: np.ndarray) -> str:
    pred = logits.argmax(1)
    mel = (pred[y == MEL] == MEL)
    return (f"{balanced_accuracy_score(y, pred):.3f} / {(pred == y).mean():.3f} / {mel.mean():.3f} "
            f"({mel.sum()}/{len(mel)})")


def main() -> None:
    views = list(VIEW_SETS[4])
    print(f"# python trainer/results/experiments/tau_vs_family.py  ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC): both "
          "weightings at both taus, 4 views; OOF figures and test figures (reported only, chose nothing). 2.4.0 serves "
          "tau 0.35, 2.5.0 tau 0.4 (rule 2 on OOF data).")
    print("| weighting | tau | OOF balanced acc. / acc. / mel sensitivity | test (reported only) |")
    print("|---|---:|---|---|")
    for label, names in WEIGHTINGS.items():
        fams = load_families([R / n for n in names])
        y, yt = fams[0].oof_labels, fams[0].test_labels
        prior = np.bincount(y, minlength=7) / len(y)
        oof = sum(w * f.oof_logits[views].mean(0) for w, f in zip(WEIGHTS, fams))
        test = sum(w * f.test_logits[:, views].mean(1).mean(0) for w, f in zip(WEIGHTS, fams))
        for tau in (0.35, 0.4):
            print(f"| {label} | {tau} | {scores(y, adjust(oof, prior, tau))} | {scores(yt, adjust(test, prior, tau))} |")


if __name__ == "__main__":
    main()
