"""Experiment (2026-12-07): why is melanoma sensitivity lower on the test split than out of fold?

``python trainer/results/experiments/melanoma_gap.py [trainer/results/ensemble/choices.json]
> trainer/results/experiments/melanoma_gap.txt``

Applies the served configuration of ``choices.json`` (family weights, TTA views, logit adjustment tau)
to the committed logits: out of fold (each pool image scored by the members of each family that held it
out) and on the test split (the mean of each family's members), then counts, per HAM10000 ``source``
sub-collection, the melanomas caught at the arg-max and those called melanocytic nevi. A reported
analysis of an existing model: it chooses nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    p = path.resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def rows(y: np.ndarray, pred: np.ndarray, sources: np.ndarray, mel: int, nv: int) -> list[str]:
    """One table row per source (and all): melanoma images, caught, called nv."""
    out = []
    for src in ["all", *sorted(set(sources[y == mel]))]:
        m = (y == mel) & ((sources == src) if src != "all" else True)
        n = int(m.sum())
        out.append(f"{src} | {n} | {(pred[m] == mel).mean():.3f} | {int((pred[m] == nv).sum())} "
                   f"({(pred[m] == nv).mean():.0%})")
    return out


def main(choices_path: str = str(ROOT / "trainer/results/ensemble/choices.json")) -> None:
    from trainer.data import CLASS_CODES, read_labels
    from trainer.ensemble import adjust, ensemble_logits, resolve_member
    from trainer.families import load_families

    choices = json.loads(Path(choices_path).read_text())
    served = [f for f in choices["families"] if f["weight"] > 0]
    fams = load_families([resolve_member(f["dir"]) for f in served])
    w = [f["weight"] for f in served]
    views = list(choices["view_indices"])
    prior = np.asarray(choices["prior"])
    tau = choices["tau"]
    meta = {r["image_id"]: r for r in read_labels(Path(fams[0].configs[0].data_dir))}
    mel, nv = CLASS_CODES.index("mel"), CLASS_CODES.index("nv")

    y_oof = fams[0].oof_labels
    oof = adjust(sum(wi * f.oof_logits[views].mean(0) for wi, f in zip(w, fams)), prior, tau)
    src_oof = np.array([meta[i]["source"] for i in fams[0].oof_ids])
    y_test = fams[0].test_labels
    member_w = np.array([wi / len(f.dirs) for wi, f in zip(w, fams) for _ in f.dirs])
    test = adjust(ensemble_logits(np.concatenate([f.test_logits for f in fams]), tuple(views), member_w),
                  prior, tau)
    src_test = np.array([meta[i]["source"] for i in fams[0].test_ids])
    mel_lesions = len({meta[i]["lesion_id"] for i, t in zip(fams[0].test_ids, y_test) if t == mel})

    print(f"# {_shown(Path(choices_path))}: families {' / '.join(f['dir'] for f in served)} weighted {w}, views {views}, "
          f"tau {tau}; arg-max")
    for name, y, pred, src in (("out of fold", y_oof, oof.argmax(1), src_oof),
                               ("test split", y_test, test.argmax(1), src_test)):
        print(f"\n## {name}\nsource | melanoma images | sensitivity | called nv")
        print("\n".join(rows(y, pred, src, mel, nv)))
    print(f"\ntest melanoma images come from {mel_lesions} lesions")


if __name__ == "__main__":
    main(*sys.argv[1:])
