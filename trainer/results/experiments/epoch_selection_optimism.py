"""Experiment (2026-12-07): how optimistic is a member's held-out figure when its own held-out fold chose its epoch?

``python trainer/results/experiments/epoch_selection_optimism.py > trainer/results/experiments/epoch_selection_optimism.txt``

Each committed member (``trainer.cv`` without weight averaging) keeps the fine-tuning epoch with the best
balanced accuracy on its held-out fold, and that same fold then supplies its out-of-fold (OOF) predictions: a
selection bias. Every epoch's held-out balanced accuracy (identity view) is in ``history.json``, so the bias can
be bounded without retraining, against two rules that never look at the member's own fold:

- **last**: the last epoch run (early stopping still looked at the fold, so for members that stopped early this
  is not fully blind either);
- **others**: the median best epoch of the *other* members of the same family (rounded down, capped at the
  epochs this member ran), i.e. an epoch count fixed from other folds (leave-one-fold-out).

Epochs are numbered as in ``history.json`` and ``member.json``: the head epoch is 1, fine-tuning starts at 2.
Families: every ``trainer/results/<family>/`` with two or more members that chose an epoch (weight-averaged
members choose none and are skipped).

Printed per family: mean held-out balanced accuracy at the chosen epoch, under each blind rule, and the mean
difference (chosen - blind) = the optimism of one member's figure. This is a member-level bound; the ensemble
rules score averaged logits (``oof.npz`` keeps only the chosen epoch's), so the ensemble's own optimism cannot
be read off these files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
def curve(member: Path) -> dict[int, float]:
    """``{epoch number: held-out balanced accuracy}`` of every epoch in ``history.json`` (head epoch included)."""
    rows = json.loads((member / "history.json").read_text())
    return {r["epoch"]: r["val_balanced_accuracy"] for r in rows}


def main() -> None:
    """One row per family (members with a chosen epoch only), then the mean over all members and the typical
    change of the figure between neighbouring fine-tuning epochs."""
    print(f"{'family':<10} {'members':>7} {'chosen':>8} {'last':>8} {'others':>8} {'chosen-last':>12} "
          f"{'chosen-others':>14} {'stopped early':>14}")
    all_last, all_others, steps = [], [], []
    for fam in sorted(p.name for p in ROOT.iterdir() if p.is_dir()):
        members = sorted(p.parent for p in (ROOT / fam).glob("fold*/member.json"))
        info = [json.loads((m / "member.json").read_text()) for m in members]
        if len(members) < 2 or any(i["best_epoch"] is None for i in info):
            continue
        curves = [curve(m) for m in members]
        early = sum(max(c) < 1 + json.loads((m / "member.json").read_text())["config"]["finetune_epochs"]
                    for m, c in zip(members, curves))
        for c in curves:
            later = [c[e] for e in sorted(c) if e >= 3]   # fine-tuning epochs after the first
            steps += list(np.abs(np.diff(later)))
        chosen, last, others = [], [], []
        for k, (i, c) in enumerate(zip(info, curves)):
            chosen.append(c[i["best_epoch"]])
            last.append(c[max(c)])
            rest = [j["best_epoch"] for n, j in enumerate(info) if n != k]
            epoch = min(int(np.median(rest)), max(c)) if rest else max(c)
            others.append(c[epoch])
        d_last, d_others = np.subtract(chosen, last), np.subtract(chosen, others)
        all_last += list(d_last)
        all_others += list(d_others)
        print(f"{fam:<10} {len(members):>7} {np.mean(chosen):>8.4f} {np.mean(last):>8.4f} {np.mean(others):>8.4f} "
              f"{d_last.mean():>+12.4f} {d_others.mean():>+14.4f} {early:>14}")
    print(f"{'all':<10} {len(all_last):>7} {'':>8} {'':>8} {'':>8} {np.mean(all_last):>+12.4f} "
          f"{np.mean(all_others):>+14.4f}")
    print(f"median |change| of the figure between neighbouring fine-tuning epochs: {np.median(steps):.4f}")
    print("(balanced accuracy of the identity view on each member's held-out fold; chosen - blind is an upper bound"
          " on the optimism: it also holds whatever real gain the pick brings. A member that stopped early ran its"
          " best epoch + patience, so its 'last' epoch was itself set by the fold)")


if __name__ == "__main__":
    sys.exit(main())
