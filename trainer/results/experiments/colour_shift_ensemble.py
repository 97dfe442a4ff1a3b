"""Experiment (2026-12-07): colour-shift robustness of whole *ensembles* (family weights), out of fold.

``python trainer/results/experiments/colour_shift_ensemble.py --family trainer/results/cv
--family trainer/results/cv_b --family trainer/results/cv_c --family trainer/results/cv_sog
--ensemble 0.5,0.5,0,0 --ensemble ... > trainer/results/experiments/colour_shift_ensemble.txt``

:mod:`colour_shift` scores single members. The served model is a weighted sum of families
(:mod:`trainer.ensemble` rule 1, chosen on clean out-of-fold data only), so this scores a family-weight
vector the same way rule 1 does, but under the fixed global colour transforms of
:data:`colour_shift.SHIFTS` (a proxy for other dermatoscopes and light, not independent data):

- every member scores **its own held-out fold** under each shift (identity view only, to keep it to
  ~7 x 7,821 forward passes per family; the served 4 flip views are colour-neutral), cached per member
  in ``.cache/colour_shift/<family>_<member>.npz`` (logits, not committed);
- the families' out-of-fold logits are aligned image by image (every family holds each pool image out
  once), weighted, logit-adjusted with the given ``--tau`` (default 0.25, 2.1.0's) and scored: balanced
  accuracy of the arg-max and negative log-likelihood (temperature fitted on the *clean* rows and kept
  under the shifts, as a served model would).

No figure here uses the test split (the shared loaders load its committed logits; unused).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import typer
from sklearn.metrics import balanced_accuracy_score, log_loss

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from colour_shift import SHIFTS, member_logits

CACHE = ROOT / ".cache" / "colour_shift"


def family_logits(fam, ids: list[str]) -> dict[str, np.ndarray]:
    """``{shift: float32 (N, K)}`` of one family (:class:`trainer.families.Members`) in the row order ``ids``."""
    parts = [member_logits(d, CACHE) for d in fam.dirs]
    pos = {str(i): n for n, i in enumerate(i for p in parts for i in p["image_ids"])}
    idx = np.array([pos[i] for i in ids])
    return {s: np.concatenate([p[s] for p in parts])[idx] for s in SHIFTS}


def main(family: list[Path] = typer.Option(..., help="family folders, in the order of --ensemble's weights"),  # noqa: B008
         ensemble: list[str] = typer.Option(..., help="comma-separated family weights, e.g. 0.5,0.5,0,0"),  # noqa: B008
         tau: float = 0.25) -> None:
    """Print one row per weight vector: balanced accuracy under each shift, mean drop, clean and mean NLL."""
    from trainer.ensemble import adjust
    from trainer.families import load_families
    from trainer.metrics import calibrated_probabilities, fit_temperature

    fams = load_families([Path(f) for f in family])  # raises unless the families hold out the same pool
    y, ids = fams[0].oof_labels, fams[0].oof_ids
    aligned = [family_logits(f, ids) for f in fams]
    prior = np.bincount(y, minlength=aligned[0]["none"].shape[1]) / len(y)
    names = [Path(f).name for f in family]
    print(f"# families {' / '.join(names)}; {len(y)} pool images, each scored by the members that held it out; "
          f"identity view, tau {tau}, temperature fitted on the clean rows")
    print("| weights | " + " | ".join(SHIFTS) + " | mean drop | NLL clean | NLL mean under shifts |")
    print("|---|" + "---:|" * (len(SHIFTS) + 3))
    for spec in ensemble:
        w = [float(v) for v in spec.split(",")]
        if len(w) != len(fams):
            raise SystemExit(f"--ensemble {spec}: {len(w)} weights for {len(fams)} families")
        z = {s: adjust(sum(wi * a[s] for wi, a in zip(w, aligned)), prior, tau) for s in SHIFTS}
        t = fit_temperature(z["none"], y)
        bacc = {s: float(balanced_accuracy_score(y, v.argmax(1))) for s, v in z.items()}
        nll = {s: float(log_loss(y, calibrated_probabilities(v, t), labels=range(len(prior)))) for s, v in z.items()}
        drop = np.mean([bacc["none"] - v for s, v in bacc.items() if s != "none"])
        shifted_nll = np.mean([v for s, v in nll.items() if s != "none"])
        print(f"| {' / '.join(f'{v:g}' for v in w)} | " + " | ".join(f"{v:.3f}" for v in bacc.values())
              + f" | {drop:.3f} | {nll['none']:.4f} | {shifted_nll:.4f} |", flush=True)


if __name__ == "__main__":
    typer.run(main)
