"""Experiment (2026-12-07): would a 192-px family *mixed* with the 160-px families lower the OOF NLL?

``python trainer/results/experiments/resolution_192_mix.py > trainer/results/experiments/resolution_192_mix.txt``

``resolution_192.py`` compared ``cv192`` with ``cv`` member against member (no clear gain). An ensemble gains
from members that err differently, so this runs **rule 1 of** :mod:`trainer.ensemble` itself
(:func:`trainer.ensemble.choose_weights_and_views`: every family-weight vector on the 0.25 grid x the view sets,
temperature-scaled OOF NLL, the 1.8 GMAC budget) over the five families, restricted to the 3,911 pool images
``cv192``'s two members hold out (folds 0 and 1 of ``cv``'s split; every other family holds each of them out in
one of its members too). ``cv192`` is costed **as if** it had four members like ``cv`` (folds 2-3 were not
trained). The exporter feeds one input size to every member, so mixing needs a resize inside the graph; this
measures whether that would pay before building it. Rule 2's tau and the balanced accuracy it gives are shown
for the rows printed. No figure here uses the test split.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

RESULTS = Path(__file__).resolve().parents[1]
FAMILIES = ("cv", "cv_b", "cv_sog", "cv_sog4", "cv192")
#: members each family would serve with (``cv192`` has 2 trained; costed as 4)
SERVED_MEMBERS = {"cv": 4, "cv_b": 4, "cv_sog": 3, "cv_sog4": 4, "cv192": 4}


def main() -> None:
    """Print rule 1's best rows within the budget with and without ``cv192``, and the best at any cost.

    Raises:
        ValueError: a family does not hold out every image ``cv192`` holds out.
    """
    from trainer.ensemble import (
        MAX_GMACS_PER_IMAGE,
        VIEW_SETS,
        adjust,
        balanced_accuracy,
        choose_tau,
        choose_weights_and_views,
    )
    from trainer.families import load_members, member_macs

    full = {n: load_members(RESULTS / n) for n in FAMILIES}
    ids = full["cv192"].oof_ids
    fams = []
    for n in FAMILIES:
        f = full[n]
        pos = {i: k for k, i in enumerate(f.oof_ids)}
        if not set(ids) <= set(pos):
            raise ValueError(f"family {n} does not hold out every image cv192 holds out")
        idx = np.array([pos[i] for i in ids])
        fams.append(dataclasses.replace(f, oof_logits=f.oof_logits[:, idx], oof_labels=f.oof_labels[idx],
                                        oof_fold=f.oof_fold[idx], oof_ids=list(ids)))
    y = fams[0].oof_labels
    # rule 1 costs a family as len(dirs) x one member's MACs: scale so that cv192 counts as SERVED_MEMBERS
    macs = {f.name: member_macs(f.configs[0]) * SERVED_MEMBERS[f.name] / len(f.dirs) for f in fams}
    _, _, grid = choose_weights_and_views(y, fams, macs)
    prior = np.bincount(y, minlength=fams[0].oof_logits.shape[2]) / len(y)

    def show(row: dict, what: str) -> None:
        lg = sum(w * f.oof_logits[list(VIEW_SETS[row["views"]])].mean(0) for w, f in zip(row["weights"], fams) if w)
        tau, _ = choose_tau(y, lg, prior)
        label = " + ".join(f"{w:g} {f.name}" for w, f in zip(row["weights"], fams) if w)
        print(f"{what:34s} {label:52s} {row['views']:5d} {row['gmacs_per_image']:5.2f} {row['nll']:7.4f} "
              f"{tau:5.2f} {balanced_accuracy(y, adjust(lg, prior, tau)):7.4f}")

    print("$ python trainer/results/experiments/resolution_192_mix.py")
    print(f"{len(y)} pool images (those cv192's members fold0, fold1 hold out); rule 1 over {len(grid)} rows "
          f"(weight vectors x view sets); budget {MAX_GMACS_PER_IMAGE} GMAC; cv192 costed as 4 members\n")
    print(f"{'':34s} {'family weights':52s} {'views':>5s} {'gmac':>5s} {'nll':>7s} {'tau':>5s} {'bal_acc':>7s}")
    i192 = FAMILIES.index("cv192")
    fits = [g for g in grid if g["gmacs_per_image"] <= MAX_GMACS_PER_IMAGE]
    served = next(g for g in grid if g["views"] == 4 and g["weights"] == [0.5, 0, 0.5, 0, 0])
    show(served, "served weights (2.2.0)")
    show(min((g for g in fits if not g["weights"][i192]), key=lambda g: g["nll"]), "best in budget without cv192")
    for k, g in enumerate(sorted((g for g in fits if g["weights"][i192]), key=lambda g: g["nll"])[:5]):
        show(g, f"best in budget with cv192 #{k + 1}")
    show(min((g for g in grid if not g["weights"][i192]), key=lambda g: g["nll"]), "best at any cost without cv192")
    show(min(grid, key=lambda g: g["nll"]), "best at any cost")


if __name__ == "__main__":
    main()
