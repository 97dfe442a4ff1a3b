"""Experiment (2026-12-07): does the out-of-distribution guard reject dermoscopic images whose colours shifted?

``python trainer/results/experiments/ood_colour_shift.py --family trainer/results/cv
--family trainer/results/cv_sog4 [--fold fold0] > trainer/results/experiments/ood_colour_shift.txt``

The served guard (:mod:`trainer.ood`, Lee et al. 2018) fits each guarding member's class-conditional
Gaussians on its **training** folds' penultimate features and flags an image whose squared Mahalanobis distance
is above the 95th percentile of the member's **held-out** fold. Another clinic's dermatoscope changes white
balance and exposure; if the guard read such a change as "not a dermoscopic image", a hospital would see its
valid images refused. This measures, per member and on its own held-out fold (never the test split), the share
flagged at the member's own threshold under the fixed colour shifts of :data:`colour_shift.SHIFTS` (by
construction about 5 % unshifted), and the AUROC between those held-out images and the project's
non-dermoscopic OOD set (:mod:`trainer.oodset`, unshifted), i.e. whether the guard still separates the two.

A proxy, like ``colour_shift.py``: global colour transforms of HAM10000 images, not another dermatoscope.
Families on the same fold seed (``cv`` and ``cv_sog4``) hold out the same images, so they compare fold by fold.
Per-member distances are cached in ``--cache`` (default ``.cache/ood_shift``, not committed; a folder of its own:
``colour_shift.py``'s cache uses the same file names for logits).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from colour_shift import SHIFTS

from trainer.cv import member_config


def member_inputs(member_dir: Path):
    """What a guard experiment needs of one member: ``(model, train, held, ood)`` — the Keras model (logits
    output), its training folds and held-out fold (:class:`trainer.data.Split`, ``uint8 (N, S, S, 3)`` images),
    and the non-dermoscopic OOD set decoded at the member's input size (``uint8 (48, S, S, 3)``)."""
    from service.preprocessing import PreprocessSpec
    from trainer.cv import fold_splits, load_member
    from trainer.oodset import decode_all

    cfg = member_config(member_dir)
    train, held, _ = fold_splits(cfg)
    ood = decode_all(ood_set(), PreprocessSpec(height=cfg.image_size, width=cfg.image_size,
                                               resize_method=cfg.resize_method))
    return load_member(member_dir), train, held, ood


def member_distances(member_dir: Path, cache: Path) -> dict[str, np.ndarray]:
    """``{"threshold": (), "ood": float32 (N_ood,), <shift>: float32 (N_held_out,)}``: squared Mahalanobis
    distances of one member's fitted detector (training folds; threshold = 95 % of its unshifted held-out fold)
    on its held-out fold under each shift and on the OOD set. Cached in ``cache``."""
    path = cache / f"{member_dir.parent.name}_{member_dir.name}.npz"
    if path.exists():
        return dict(np.load(path))
    from trainer.data import CLASS_CODES
    from trainer.ensemble import member_features
    from trainer.ood import MahalanobisDetector

    model, train, held, ood = member_inputs(member_dir)
    det = MahalanobisDetector.fit(member_features(model, train.images), train.labels, len(CLASS_CODES))
    det.calibrate(member_features(model, held.images))
    out = {"threshold": np.float64(det.threshold), "ood": det.distance(member_features(model, ood))}
    x = held.images.astype(np.float32)
    for name, fn in SHIFTS.items():
        out[name] = det.distance(member_features(model, np.clip(fn(x), 0.0, 255.0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def main(family: Annotated[list[Path], typer.Option(help="family folders (<family>/fold<i>/member.json)")],
         fold: Annotated[list[str] | None, typer.Option(help="only these members (fold0, fold1, ...); default: all")]
         = None,
         cache: Annotated[Path, typer.Option(help="per-member distance cache")] = Path(".cache/ood_shift")) -> None:
    """Print, per family and shift, the held-out share flagged and the AUROC against the OOD set (and, for two
    or more families on one fold seed, the same for a guard averaging their members' ratios)."""
    print("Share of held-out dermoscopic images flagged out-of-distribution by each member's own guard "
          "(threshold = 95 % of its unshifted held-out fold), and AUROC of held-out (shifted) vs the "
          "non-dermoscopic OOD set. Mean over the family's members (min-max in brackets).\n")
    names = list(SHIFTS)
    print(f"{'guard':<16} {'measure':<14} " + " ".join(f"{n:>15}" for n in names) + f" {'OOD flagged':>12}")
    ratios: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    splits: set[tuple[int, int]] = set()  # (folds, fold seed) of every family: a mixed row needs one split
    for fam in family:
        members = sorted(p.parent for p in Path(fam).glob("fold*/member.json") if not fold or p.parent.name in fold)
        if not members:
            raise typer.BadParameter(f"no members under {fam}" + (f" among {fold}" if fold else ""))
        splits.update((c.folds, c.fold_seed) for c in map(member_config, members))
        d = {m.name: member_distances(m, cache) for m in members}
        ratios[Path(fam).name] = {k: {n: r[n] / r["threshold"] for n in [*names, "ood"]} for k, r in d.items()}
        print_rows(Path(fam).name, list(ratios[Path(fam).name].values()), names)
        print(f"{'':<16} members: {', '.join(m.name for m in members)}")
        for k, r in ratios[Path(fam).name].items():
            missed = [img.name for img, v in zip(ood_set(), r["ood"]) if v <= 1.0]
            print(f"{'':<16} {k} lets through {len(missed)} of {len(r['ood'])} OOD images: {', '.join(missed) or '-'}")
    folds = set.intersection(*(set(r) for r in ratios.values()))
    if len(ratios) > 1 and folds and len(splits) > 1:
        print(f"\n(no mixed row: the families use different fold splits {sorted(splits)}, so their fold<i> "
              "hold out different images)")
    elif len(ratios) > 1 and folds:
        # both families' guards on the same held-out images (same fold seed): mean of their distance ratios,
        # as the served graph averages its guarding members' ratios (flagged above 1.0)
        fams = list(ratios)
        mixed = [{n: np.mean([ratios[f][k][n] for f in fams], axis=0) for n in [*names, "ood"]} for k in sorted(folds)]
        print_rows("+".join(fams), mixed, names)
        print(f"{'':<16} folds: {', '.join(sorted(folds))} (each held-out image scored by one member of each family)")


@functools.cache
def ood_set() -> list:
    """The non-dermoscopic OOD set (:func:`trainer.oodset.build_ood_set`), built once, in the cached order."""
    from trainer.oodset import build_ood_set

    return build_ood_set()


def print_rows(label: str, ratios: list[dict[str, np.ndarray]], names: list[str]) -> None:
    """Two table rows for one guard: held-out share flagged (ratio > 1) and AUROC vs the OOD set per shift,
    mean (min-max) over ``ratios`` (one dict of distance/threshold arrays per member or fold); last column:
    share of the OOD set flagged."""
    flagged = np.array([[float((r[n] > 1.0).mean()) for n in names] for r in ratios])
    auroc = np.array([[roc_auc_score(np.r_[np.zeros(len(r[n])), np.ones(len(r["ood"]))], np.r_[r[n], r["ood"]])
                       for n in names] for r in ratios])
    ood_hit = np.array([float((r["ood"] > 1.0).mean()) for r in ratios])
    for measure, tab, last in (("flagged share", flagged, f"{ood_hit.mean():.3f}"), ("AUROC vs OOD", auroc, "")):
        cells = [f"{tab[:, j].mean():.3f} ({tab[:, j].min():.2f}-{tab[:, j].max():.2f})" for j in range(len(names))]
        print(f"{label:<16} {measure:<14} " + " ".join(f"{c:>15}" for c in cells) + f" {last:>12}")

if __name__ == "__main__":
    typer.run(main)
