"""Experiment (2026-12-07): how much does a camera/illuminant colour shift cost each member?

``python trainer/results/experiments/colour_shift.py trainer/results/cv_c/fold0
trainer/results/experiments/cv_d/fold0 > trainer/results/experiments/colour_shift.txt``

(arguments: member directories, or family directories meaning all their members)

Independent evaluation data (other clinics, other dermatoscopes) scores the bundled model well below its
HAM10000 test split; a change of white balance or exposure is one plausible part of that gap, and the
one a stronger colour augmentation (the ``cv_d`` trial member, fold 0 of fold seed 11 like ``cv_c/fold0``:
brightness/contrast/saturation +-30 %, hue +-5 %, crops down to 40 % of the area) was meant to buy. This is a proxy, not independent data: each member is
scored on **its own held-out fold** (never the test split), once as recorded and once under each of a
few fixed, global colour transforms of the 0..255 RGB input (identity view, arg-max, no tau):

- ``warm`` / ``cool``: red x 1.12 and blue x 0.88 (or the reverse), a white-balance error;
- ``green``: green x 1.08;
- ``dark`` / ``bright``: all channels x 0.8 / x 1.2 (exposure), clipped to 0..255;
- ``gamma``: ``255 * (x / 255) ** 1.3``.

Members whose directories share a fold seed share held-out folds, so families compare pairwise per fold.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

#: name -> function of float32 (N, S, S, 3) in 0..255.
SHIFTS = {
    "none": lambda x: x,
    "warm": lambda x: x * np.array([1.12, 1.0, 0.88], np.float32),
    "cool": lambda x: x * np.array([0.88, 1.0, 1.12], np.float32),
    "green": lambda x: x * np.array([1.0, 1.08, 1.0], np.float32),
    "dark": lambda x: x * np.float32(0.8),
    "bright": lambda x: x * np.float32(1.2),
    "gamma": lambda x: 255.0 * (x / 255.0) ** np.float32(1.3),
}


def member_logits(member_dir: Path, cache: Path | None = None) -> dict[str, np.ndarray]:
    """``{"image_ids", "labels", <shift>: float32 (N_held_out, K) logits}`` of one member on its own
    held-out fold under each shift in :data:`SHIFTS` (identity view), cached in ``cache`` when given.

    Raises:
        SystemExit: the unshifted logits differ from the member's recorded ``oof.npz`` (identity view).
    """
    from trainer.cv import fold_splits, load_member, member_config

    path = cache / f"{member_dir.parent.name}_{member_dir.name}.npz" if cache else None
    if path is not None and path.exists():
        return dict(np.load(path))
    cfg = member_config(member_dir)
    _, held, _ = fold_splits(cfg)
    model = load_member(member_dir)
    x = held.images.astype(np.float32)
    out = {"image_ids": np.array(held.image_ids), "labels": held.labels}
    for name, fn in SHIFTS.items():
        z = np.clip(fn(x), 0.0, 255.0).astype(np.float32)
        out[name] = np.asarray(model.predict(z, batch_size=64, verbose=0), np.float32)
    rec = np.load(member_dir / "oof.npz")
    if list(rec["image_ids"]) != list(out["image_ids"]) or np.abs(rec["logits"][0] - out["none"]).max() > 1e-3:
        raise SystemExit(f"{member_dir}: recomputed held-out logits differ from oof.npz")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    return out


def member_scores(member_dir: Path) -> dict[str, float]:
    """Held-out balanced accuracy of one member under each shift in :data:`SHIFTS`."""
    logits = member_logits(member_dir)
    return {name: float(balanced_accuracy_score(logits["labels"], logits[name].argmax(1))) for name in SHIFTS}


def main(dirs: list[str]) -> None:
    print("| member | " + " | ".join(SHIFTS) + " | mean drop |")
    print("|---|" + "---:|" * (len(SHIFTS) + 1))
    for d in map(Path, dirs):
        members = [d] if (d / "weights.npz").exists() else sorted(p for p in d.iterdir() if (p / "weights.npz").exists())
        for member in members:
            s = member_scores(member)
            drop = np.mean([s["none"] - v for k, v in s.items() if k != "none"])
            print(f"| {member.parent.name}/{member.name} | " + " | ".join(f"{v:.3f}" for v in s.values())
                  + f" | {drop:.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
