"""``REPORT.md`` of the cross-validated ensemble, written from ``report.json`` (see :mod:`trainer.ensemble`)."""

from __future__ import annotations

from pathlib import Path

_COLS = ("balanced_accuracy", "accuracy", "macro_roc_auc_ovr", "melanoma_sensitivity", "malignant_vs_benign_roc_auc",
         "ece_15")


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _table(rows: dict[str, dict]) -> list[str]:
    out = ["| | " + " | ".join(c.replace("_", " ") for c in _COLS) + " |", "|---|" + "---:|" * len(_COLS)]
    out += [f"| {name} | " + " | ".join(_f(r.get(c)) for c in _COLS) + " |" for name, r in rows.items()]
    return out


def write_markdown(report: dict, path: Path) -> None:
    """Render the CV table, the OOF and test ablations, the test metrics with 95 % CIs, the referral
    rule and the OOD guard as Markdown."""
    ch, cv, oof, test = report["choices"], report["cv"], report["oof"], report["test"]
    fams = cv.get("families") or {"members": cv}
    weights = {Path(f["dir"]).name: f["weight"] for f in ch.get("families", [])}
    lines = ["# Cross-validated ensemble: report", "",
             (f"Members: {len(ch['members'])} from {len(fams)} famil{'y' if len(fams) == 1 else 'ies'} of lesion-grouped "
             f"k-fold CV over train + val. Chosen on out-of-fold data: family weights "
             f"{', '.join(f'{k} {v:g}' for k, v in weights.items()) or 'n/a'}, TTA views {len(ch['view_indices'])} "
             f"({ch.get('gmacs_per_image', float('nan')):.2f} GMAC per image), logit adjustment tau {ch['tau']}, "
             f"temperature {ch['temperature']:.3f}, referral threshold "
             f"{ch['referral']['malignant_probability_threshold']:.3f}."), ""]
    for name, fam in fams.items():
        lines += [(f"## Cross-validation of family `{name}` ({fam.get('arch', '')} {fam.get('image_size', '')} px; "
                  f"held-out fold of each member)"), "",
                  "| fold | held-out images | balanced accuracy | with TTA |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['fold']} | {r['n_held_out']} | {_f(r['balanced_accuracy'])} | "
                  f"{_f(r['balanced_accuracy_tta'])} |" for r in fam["folds"]]
        lines += ["", f"Mean ± sd: **{_f(fam['balanced_accuracy_mean'])} ± {_f(fam['balanced_accuracy_sd'])}**.", ""]
    if oof.get("weights_views_grid"):
        budget = oof.get("budget_gmacs_per_image", float("inf"))
        lines += [(f"## Family weights x TTA views (out-of-fold; chosen by the lowest NLL within {budget:g} GMAC "
                  "per image)"), "",
                  "| weights | views | GMAC per image | NLL | balanced accuracy |", "|---|---:|---:|---:|---:|"]
        chosen = ([f["weight"] for f in ch.get("families", [])] or [1.0], len(ch["view_indices"]))
        for g in oof["weights_views_grid"]:
            mark = "**" if (g["weights"], g["views"]) == chosen else ""
            cost = f"{g['gmacs_per_image']:.2f}" + (" (over)" if g["gmacs_per_image"] > budget else "")
            lines.append(f"| {mark}{' / '.join(f'{w:g}' for w in g['weights'])}{mark} | {g['views']} | {cost} | "
                         f"{g['nll']:.4f} | {_f(g['balanced_accuracy'])} |")
        lines.append("")
    lines += [f"## Ablation on out-of-fold predictions ({oof['n']} pool images; temperature refitted per row)", ""]
    lines += _table(oof["ablation"])
    lines += ["", "OOF balanced accuracy per TTA view set: " +
              ", ".join(f"{k} views {_f(v)}" for k, v in oof["view_sets_balanced_accuracy"].items()) + ".", "",
              f"## Ablation on the test split ({test['n']} images; reported only, chose nothing)", ""]
    lines += _table(test["ablation"])
    lines += ["", "## Test split, served configuration, 95 % lesion-bootstrap confidence intervals", "",
              "| metric | estimate | 95 % CI |", "|---|---:|---|"]
    for k, ci in test["confidence_intervals"].items():
        lines.append(f"| {k.replace('_', ' ')} | {_f(ci['estimate'])} | {_f(ci['low'])} – {_f(ci['high'])} |")
    r = ch["referral"]
    lines += ["", "## Referral rule", "",
              (f"Refer when P(mel)+P(bcc)+P(akiec) ≥ {r['malignant_probability_threshold']:.3f}, chosen on OOF data for "
              f"malignant sensitivity ≥ {r['target_sensitivity']:.2f} (OOF sensitivity {_f(r['oof_sensitivity'])}, "
              f"specificity {_f(r['oof_specificity'])}). Test: sensitivity {_f(test['referral']['sensitivity'])}, "
              f"specificity {_f(test['referral']['specificity'])}."
              + (f" As the service answers (default OOD policy `flag`, the manifest's OOD threshold), with every "
                 f"OOD-flagged image referred too ({test['referral']['served']['ood_referred_malignant']} malignant "
                 f"and {test['referral']['served']['ood_referred_benign']} benign images more): sensitivity "
                 f"{_f(test['referral']['served']['sensitivity'])}, specificity "
                 f"{_f(test['referral']['served']['specificity'])}." if "served" in test["referral"] else "")),
              f"Adding the low-confidence reason (top-1 < 0.5) at the same OOF sensitivity gives OOF specificity "
              f"{_f(r['with_low_confidence_reason']['oof_specificity'])}: "
              + ("kept." if r["keep_low_confidence_reason"] else
                 "dropped (less than one point of specificity gained at the same sensitivity).")]
    ood = report.get("ood")
    if ood:
        lines += ["", "## Out-of-distribution guard", "",
                  (f"{ood['method']}: AUROC {_f(ood['auroc'])} ({ood['n_ood_images']} non-dermoscopic images vs "
                  f"{ood['n_test_images']} test images); flagged at the threshold: {_f(ood['ood_flagged_share'])} of the "
                  f"OOD set, {_f(ood['test_flagged_share'])} of the test split. For comparison, AUROC of the energy score "
                  f"{_f(ood['comparison_auroc']['energy'])}, of the maximum softmax probability "
                   f"{_f(ood['comparison_auroc']['max_softmax_probability'])}."), "",
                  "| image | category | score | flagged |", "|---|---|---:|---|"]
        lines += [f"| {p['name']} | {p['category']} | {p['ood_score']:.2f} | {'yes' if p['flagged'] else '**no**'} |"
                  for p in ood["per_image"]]
    lines += ["", "Training wall time per member (s): " +
              ", ".join(f"{k} {v}" for k, v in report["training_wall_time_seconds"].items()) + "."]
    Path(path).write_text("\n".join(lines) + "\n")
