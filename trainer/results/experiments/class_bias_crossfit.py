"""Experiment (2026-12-07): would per-class logit biases beat the single logit-adjustment tau?

``python trainer/results/experiments/class_bias_crossfit.py > trainer/results/experiments/class_bias_crossfit.txt``

On the out-of-fold (OOF) predictions of families cv + cv_b (weights 1/2, 4 flip views; the 2.1.0 choices),
seven per-class biases are fitted by coordinate ascent (0.05 steps within +-1 of tau = 0.25's offset,
3 sweeps) to maximise OOF balanced accuracy subject to OOF accuracy >= 0.79 and melanoma sensitivity
>= 0.61, on one half of the pool's lesions, and scored on the other half against tau = 0.25 alone.
Six random lesion halves. No figure here uses the test split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from trainer.data import CLASS_CODES, read_labels
from trainer.families import load_families

MEL = CLASS_CODES.index("mel")


def scores(y: np.ndarray, logits: np.ndarray) -> tuple[float, float, float]:
    """(balanced accuracy, accuracy, melanoma sensitivity) of the arg-max."""
    p = logits.argmax(1)
    return balanced_accuracy_score(y, p), float((p == y).mean()), float((p[y == MEL] == MEL).mean())


def fit_bias(y, lg, start, floor=0.79, mel_floor=0.61, step=0.05, span=1.0, sweeps=3):
    """Coordinate ascent on per-class biases added to ``lg`` ``(N, K)``; returns ``(K,)``."""
    def objective(b):
        ba, acc, mel = scores(y, lg + b)
        return ba if acc >= floor and mel >= mel_floor else -1 + mel

    b, best = start.copy(), objective(start)
    for _ in range(sweeps):
        for k in range(len(b)):
            for d in np.arange(-span, span + 1e-9, step):
                cand = b.copy()
                cand[k] = start[k] + d
                if (s := objective(cand)) > best + 1e-9:
                    best, b = s, cand
    return b


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    cv, cv_b = load_families([root / "cv", root / "cv_b"])
    y = cv.oof_labels
    lg = (0.5 * cv.oof_logits + 0.5 * cv_b.oof_logits)[[0, 2, 4, 6]].mean(0)
    prior = np.bincount(y, minlength=len(CLASS_CODES)) / len(y)
    tau_offset = -0.25 * np.log(prior)
    lesion_of = {r["image_id"]: r["lesion_id"] for r in read_labels(cv.configs[0].data_dir)}
    lesions = np.array([lesion_of[i] for i in cv.oof_ids])
    unique = np.unique(lesions)
    rng = np.random.default_rng(1)
    gains = []
    print("half | tau 0.25: bal.acc / acc / mel sens | per-class biases: bal.acc / acc / mel sens")
    for r in range(6):
        a = np.isin(lesions, rng.permutation(unique)[: len(unique) // 2])
        b = fit_bias(y[a], lg[a], tau_offset)
        base, fitted = scores(y[~a], lg[~a] + tau_offset), scores(y[~a], lg[~a] + b)
        gains.append(np.subtract(fitted, base))
        print(f"{r} | {' / '.join(f'{v:.3f}' for v in base)} | {' / '.join(f'{v:.3f}' for v in fitted)}")
    g = np.mean(gains, axis=0)
    print(f"mean gain on the held-out halves: balanced accuracy {g[0]:+.4f}, accuracy {g[1]:+.4f}, "
          f"melanoma sensitivity {g[2]:+.4f}")


if __name__ == "__main__":
    main()
