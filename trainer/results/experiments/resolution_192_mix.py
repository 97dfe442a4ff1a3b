"""Experiment (2026-12-07): would a 192-px family *mixed* with the served 160-px families lower the OOF NLL?

``python trainer/results/experiments/resolution_192_mix.py > trainer/results/experiments/resolution_192_mix.txt``

``resolution_192.py`` compared ``cv192`` with ``cv`` member against member (no clear gain). An ensemble gains
from members that err differently, so this scores weight vectors over families the way rule 1 of
:mod:`trainer.ensemble` does (temperature-scaled OOF NLL of the weighted mean logits; rule 2's tau and the
balanced accuracy it gives), restricted to the pool images ``cv192``'s two members hold out (folds 0 and 1 of
``cv``'s split; every other family holds each of them out in one of its members too). The cost is rule 1's:
multiply-accumulates per image over every member of every weighted family x views
(:func:`trainer.families.member_macs`), against the 1.8 GMAC budget, **as if** ``cv192`` had four members (it
has two; folds 2-3 were not trained). The exporter feeds one input size to every member, so mixing needs a
resize inside the graph; this measures whether that would pay before building it. Test split not read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

RESULTS = Path(__file__).resolve().parents[1]
FAMILIES = ("cv", "cv_b", "cv_sog", "cv_sog4", "cv192")
#: family -> members it has (or would have) in a served ensemble
MEMBERS = {"cv": 4, "cv_b": 4, "cv_sog": 3, "cv_sog4": 4, "cv192": 4}
VIEWS = {1: (0,), 2: (0, 4), 4: (0, 2, 4, 6)}
WEIGHTS = ({"cv": .5, "cv_sog": .5}, {"cv": .25, "cv_b": .25, "cv_sog": .5}, {"cv192": .5, "cv_sog": .5},
           {"cv": .5, "cv192": .5}, {"cv": .25, "cv_sog": .5, "cv192": .25}, {"cv": .25, "cv_sog": .25, "cv192": .5},
           {"cv_sog": .5, "cv_sog4": .25, "cv192": .25}, {"cv": 1.0}, {"cv192": 1.0})


def main() -> None:
    """Print one row per weight vector and view count: GMAC per image, OOF NLL, rule-2 tau, balanced accuracy."""
    from scipy.special import log_softmax

    from trainer.cv import member_config
    from trainer.ensemble import MAX_GMACS_PER_IMAGE, adjust, balanced_accuracy, choose_tau
    from trainer.families import load_members, member_macs
    from trainer.metrics import fit_temperature

    fams = {n: load_members(RESULTS / n) for n in FAMILIES}
    ids = fams["cv192"].oof_ids
    logits = {}
    for n, f in fams.items():
        pos = {i: k for k, i in enumerate(f.oof_ids)}
        logits[n] = f.oof_logits[:, [pos[i] for i in ids]]
    y = fams["cv192"].oof_labels
    prior = np.bincount(y, minlength=logits["cv"].shape[2]) / len(y)
    gmacs = {n: MEMBERS[n] * member_macs(member_config(f.dirs[0])) / 1e9 for n, f in fams.items()}
    print("$ python trainer/results/experiments/resolution_192_mix.py")
    print(f"{len(y)} pool images (those cv192's members fold0, fold1 hold out); budget {MAX_GMACS_PER_IMAGE} GMAC")
    print("GMAC per pass of all members: " + ", ".join(f"{n} {g:.3f}" for n, g in gmacs.items()) + "\n")
    print(f"{'family weights':48s} {'views':>5s} {'gmac':>5s} {'fits':>4s} {'nll':>7s} {'tau':>5s} {'bal_acc':>7s}")
    for w in WEIGHTS:
        for n_views, views in VIEWS.items():
            lg = sum(wt * logits[n][list(views)].mean(0) for n, wt in w.items())
            t = fit_temperature(lg, y)
            nll = float(-log_softmax(lg / t, axis=1)[np.arange(len(y)), y].mean())
            tau, _ = choose_tau(y, lg, prior)
            cost = sum(gmacs[n] for n in w) * n_views
            label = " + ".join(f"{wt:g} {n}" for n, wt in w.items())
            print(f"{label:48s} {n_views:5d} {cost:5.2f} {'yes' if cost <= MAX_GMACS_PER_IMAGE else 'no':>4s} "
                  f"{nll:7.4f} {tau:5.2f} {balanced_accuracy(y, adjust(lg, prior, tau)):7.4f}")


if __name__ == "__main__":
    main()
