"""Experiment (2026-12-07): do central-zoom test-time views beat the rotations, at the same cost?

``python trainer/results/experiments/zoom_views.py --family trainer/results/cv --family trainer/results/cv_sog
--weights 0.5,0.5 > trainer/results/experiments/zoom_views.txt``

The served ensemble (2.2.0) averages the member logits over 4 flip views of the 160 x 160 input (identity,
rot180, flip-lr, flip-ud; :data:`trainer.ensemble.VIEW_SETS`). The members trained on random resized crops of
65-100 % of the area (:mod:`trainer.augment`), so a *central zoom* (the middle ``s x s`` of the side, resized
back to 160 px, bilinear) is a view they know, and it shows the lesion (HAM10000 images are centred on it)
at a higher effective resolution, which the 192-px trial (``resolution_192.txt``) suggested helps melanoma.

Each member scores **its own held-out fold** (no figure uses the test split) under the zoom views
``zoom{s}`` x the 4 flips, cached in ``.cache/zoom_views/<family>_<member>.npz`` (logits, not committed);
the recorded 8 dihedral views come from ``oof.npz``. Then the family-weighted ensemble is scored the way
:func:`trainer.ensemble.choose_weights_and_views` scores a row (temperature fitted on the rows themselves,
the OOF NLL that rule 1 minimises) plus balanced accuracy and melanoma sensitivity after the served logit
adjustment (``--tau``, 2.2.0's 0.4). A view set's cost is its number of views (same members).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".cache" / "zoom_views"
#: Central crop side as a share of the image side (area 0.81 and 0.64; training crops covered 0.65-1.0).
ZOOMS: tuple[float, ...] = (0.9, 0.8)
#: The served flips, as (rot90 k, left-right flip): indices 0, 2, 4, 6 of :data:`trainer.cv.VIEWS`.
FLIPS: tuple[tuple[int, bool], ...] = ((0, False), (2, False), (0, True), (2, True))


def zoom(images: np.ndarray, side: float) -> np.ndarray:
    """Central ``side`` x ``side`` share of float32 ``(N, S, S, 3)`` images, resized back to ``S`` x ``S``
    (bilinear, half-pixel centres: ``tf.image.resize``, which the ONNX graph's ``Resize`` can match)."""
    import tensorflow as tf

    s = images.shape[1]
    c = round(s * side)
    o = (s - c) // 2
    return tf.image.resize(images[:, o:o + c, o:o + c], (s, s), method="bilinear").numpy().astype(np.float32)


@functools.cache
def member_zoom_logits(member_dir: Path) -> dict[str, np.ndarray]:
    """``{"image_ids", "zoom{s}": float32 (4, N_held_out, K)}`` (views in :data:`FLIPS` order) of one member
    on its own held-out fold, cached on disk."""
    from trainer.cv import apply_view, fold_splits, load_member, member_config

    path = CACHE / f"{member_dir.parent.name}_{member_dir.name}.npz"
    if path.exists():
        return dict(np.load(path))
    _, held, _ = fold_splits(member_config(member_dir))
    model = load_member(member_dir)
    x = held.images.astype(np.float32)
    out = {"image_ids": np.array(held.image_ids)}
    for side in ZOOMS:
        z = zoom(x, side)
        out[f"zoom{side}"] = np.stack([
            np.asarray(model.predict(apply_view(z, k, f), batch_size=64, verbose=0), np.float32) for k, f in FLIPS])
        print(f"{member_dir.parent.name}/{member_dir.name} zoom {side} done", file=sys.stderr, flush=True)
    rec = np.load(member_dir / "oof.npz")
    if list(rec["image_ids"]) != list(out["image_ids"]):
        raise SystemExit(f"{member_dir}: held-out images differ from oof.npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def family_views(fam, ids: list[str]) -> dict[str, np.ndarray]:
    """``{view name: float32 (N, K)}``: the recorded flips ``flip0..3`` and ``zoom{s}_0..3`` of one family
    (:class:`trainer.families.Members`) in the row order ``ids``."""
    parts = [member_zoom_logits(d) for d in fam.dirs]
    pos = {str(i): n for n, i in enumerate(i for p in parts for i in p["image_ids"])}
    idx = np.array([pos[i] for i in ids])
    own = {str(i): n for n, i in enumerate(fam.oof_ids)}
    rec = fam.oof_logits[:, np.array([own[i] for i in ids])]
    views = {f"flip{j}": rec[v] for j, v in enumerate((0, 2, 4, 6))}
    views |= {f"rot{j}": rec[v] for j, v in enumerate((1, 3, 5, 7))}
    for side in ZOOMS:
        z = np.concatenate([p[f"zoom{side}"] for p in parts], axis=1)[:, idx]
        views |= {f"zoom{side}_{j}": z[j] for j in range(4)}
    return views


def view_sets() -> dict[str, list[str]]:
    """Named view sets compared (names of :func:`family_views`)."""
    sets = {"1: identity": ["flip0"], "2: id + lr": ["flip0", "flip2"],
            "4: flips (served)": [f"flip{j}" for j in range(4)],
            "8: dihedral": [f"flip{j}" for j in range(4)] + [f"rot{j}" for j in range(4)]}
    for s in ZOOMS:
        sets[f"2: zoom{s} id + lr"] = [f"zoom{s}_0", f"zoom{s}_2"]
        sets[f"4: id + lr + zoom{s} id + lr"] = ["flip0", "flip2", f"zoom{s}_0", f"zoom{s}_2"]
        sets[f"4: zoom{s} flips"] = [f"zoom{s}_{j}" for j in range(4)]
        sets[f"8: flips + zoom{s} flips"] = [f"flip{j}" for j in range(4)] + [f"zoom{s}_{j}" for j in range(4)]
    sets["4: id + lr + zoom0.9 id + zoom0.8 id"] = ["flip0", "flip2", "zoom0.9_0", "zoom0.8_0"]
    sets["12: flips + both zooms' flips"] = ([f"flip{j}" for j in range(4)]
                                             + [f"zoom{s}_{j}" for s in ZOOMS for j in range(4)])
    return sets


def main(family: Annotated[list[Path], typer.Option(help="family folders, in the order of --weights")],
         weights: Annotated[str, typer.Option(help="comma-separated family weights, e.g. 0.5,0.5")],
         tau: Annotated[float, typer.Option(help="logit adjustment of the served model (2.2.0: 0.4)")] = 0.4,
         compare: Annotated[str, typer.Option(help="view set compared with the served one by paired bootstrap")]
         = "4: zoom0.9 flips") -> None:
    """Print one row per view set: OOF NLL (temperature-scaled, rule 1's criterion), balanced accuracy and
    melanoma sensitivity at the served ``tau`` and at the tau rule 2 picks for that view set (largest OOF
    balanced accuracy keeping OOF accuracy >= 0.79), and a lesion-resampled paired bootstrap of ``compare``
    minus the served 4 flips."""
    from scipy.special import log_softmax
    from sklearn.metrics import roc_auc_score

    from trainer.config import DEFAULT_DATA_DIR
    from trainer.data import CLASS_CODES, read_labels
    from trainer.ensemble import adjust, balanced_accuracy, choose_tau
    from trainer.families import load_families
    from trainer.metrics import bootstrap_ci, fit_temperature

    w = [float(v) for v in weights.split(",")]
    fams = load_families(family)
    if len(w) != len(fams):
        raise typer.BadParameter("one weight per family")
    y, ids = fams[0].oof_labels, fams[0].oof_ids
    per_fam = [family_views(f, ids) for f in fams]
    prior = np.bincount(y, minlength=len(CLASS_CODES)) / len(y)
    mel = CLASS_CODES.index("mel")
    print("$ python trainer/results/experiments/zoom_views.py " + " ".join(f"--family {f}" for f in family)
          + f" --weights {weights} --tau {tau}")
    print(f"OOF pool: {len(y)} images; each scored by the members that held it out; no figure uses the test split\n")
    print(f"{'view set':38s} {'nll':>6s} {'auc':>6s} | tau {tau}: {'bal_acc':>7s} {'mel':>5s} | "
          f"{'rule tau':>8s} {'acc':>6s} {'bal_acc':>7s} {'mel':>5s}  recall per class ({' '.join(CLASS_CODES)})")
    lgs = {}
    for name, views in view_sets().items():
        lg = lgs[name] = sum(wf * np.mean([fv[v] for v in views], axis=0) for wf, fv in zip(w, per_fam))
        t = fit_temperature(lg, y)
        logp = log_softmax(lg / t, axis=1)
        nll = float(-logp[np.arange(len(y)), y].mean())
        auc = float(roc_auc_score(y, np.exp(logp), multi_class="ovr"))
        fixed = adjust(lg, prior, tau)
        rule_tau, _ = choose_tau(y, lg, prior)
        adj = adjust(lg, prior, rule_tau)
        pred = adj.argmax(1)
        recall = [float((pred[y == k] == k).mean()) for k in range(len(CLASS_CODES))]
        print(f"{name:38s} {nll:6.4f} {auc:6.4f} | {balanced_accuracy(y, fixed):16.4f} "
              f"{(fixed.argmax(1)[y == mel] == mel).mean():5.3f} | {rule_tau:8.2f} {(pred == y).mean():6.4f} "
              f"{balanced_accuracy(y, adj):7.4f} {recall[mel]:5.3f}  " + " ".join(f"{r:.2f}" for r in recall),
              flush=True)

    lesion = {r["image_id"]: r["lesion_id"] for r in read_labels(DEFAULT_DATA_DIR)}
    groups = np.array([lesion[i] for i in ids])
    served = "4: flips (served)"

    def at_rule_tau(name: str, idx: np.ndarray) -> float:
        """Balanced accuracy on rows ``idx`` at the tau rule 2 picks on those same rows."""
        lg, yy = lgs[name][idx], y[idx]
        return balanced_accuracy(yy, adjust(lg, prior, choose_tau(yy, lg, prior)[0]))

    def diff(idx: np.ndarray) -> float:
        if len(np.unique(y[idx])) < len(CLASS_CODES):
            return float("nan")
        return at_rule_tau(compare, idx) - at_rule_tau(served, idx)

    ci = bootstrap_ci(diff, groups, n_resamples=1000)
    print(f"\npaired lesion bootstrap ({ci['resamples']} resamples, {ci['dropped']} dropped), balanced accuracy at "
          f"rule 2's tau re-chosen in every resample for each set, '{compare}' minus '{served}': "
          f"{ci['estimate']:+.4f} (95 % {ci['low']:+.4f} to {ci['high']:+.4f}); '{compare}' is the best of "
          f"{len(lgs)} view sets on these same images, so the interval is optimistic")


if __name__ == "__main__":
    typer.run(main)
