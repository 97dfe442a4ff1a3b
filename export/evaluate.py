"""Score a model directory *as served* on a labelled split: ``python -m export.evaluate``.

The trainer's report scores the Keras members' committed logits; the service runs ``model.onnx``. The two
differ by the export's rounding (with ``--float16-weights``, up to ~2e-3 in a probability), which can move an
image across the referral threshold or swap a near-tie. This module closes that gap: every image of a split goes
through the service's own path — file bytes, :func:`service.preprocessing.preprocess_bytes`, one
:class:`service.runtime.ModelRuntime` call per batch — and the answers are scored with the trainer's metric
functions (:func:`trainer.metrics.classification_metrics`), the service's referral rule
(:meth:`service.answers.ReferralRule.decide` with the manifest's thresholds) and the manifest's OOD threshold
(flagged when ``ood_score > threshold``, as :meth:`service.answers.AnswerShaper.ood_flag`). The referral figures
are reported twice: by the probability rule alone, and as the service answers with its default OOD policy
(``flag``) and the manifest's OOD threshold, which refers every flagged image too (``referral.served_*``); each
is compared with the manifest's figure where the manifest records it (the served one only in manifests exported
after 2.5.0).

It prints each figure next to the one the manifest records for the same split (``metrics.test``), so a served
file whose behaviour drifted from its report shows. It chooses nothing; with the test split it is reporting only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

#: Figures compared with the manifest's ``metrics.test`` (name in :func:`trainer.metrics.classification_metrics`).
COMPARED = ("accuracy", "balanced_accuracy", "macro_roc_auc_ovr", "melanoma_sensitivity",
            "malignant_vs_benign_roc_auc", "ece_15")


def evaluate_model_dir(model_dir: Path, data_dir: Path, split: str = "test", batch_size: int = 32,
                       limit: int | None = None) -> dict:
    """Run every image of ``split`` through the served model and score the answers.

    Args:
        model_dir: a model directory (``manifest.json`` + its ONNX file), loaded by
            :class:`service.runtime.ModelRuntime` (sha256 checked).
        data_dir: a dataset laid out like ``../shared/data/ham10000`` (``labels.csv`` + ``images/``).
        split: ``train``, ``val`` or ``test`` (the ``split`` column of ``labels.csv``).
        batch_size: images per runtime call (answers do not depend on it beyond float rounding).
        limit: score a seeded class-stratified subset of at most this many images (None: all); a subset's figures
            are not comparable with the manifest's, so ``manifest_metrics`` is then None.

    Returns:
        ``{"model", "version", "model_file", "split", "n", "metrics", "referral", "ood", "per_image", "manifest_metrics"}``:
        ``metrics`` from :func:`trainer.metrics.classification_metrics` (probabilities after the manifest's
        temperature); ``referral`` ``{"threshold", "sensitivity", "specificity", "referred", "malignant",
        "malignant_referred", "benign_referred", "benign", "served_sensitivity", "served_specificity",
        "served_referred", "served_malignant_referred", "served_benign_referred"}`` (counts are images; ``served_*`` with the out-of-distribution referrals); ``ood`` ``{"threshold", "flagged",
        "flagged_share"}`` or None for a model without a guard; ``per_image`` lists in row order (``image_ids``,
        ``labels`` as class codes, ``probabilities`` ``(N, K)`` rounded to 1e-6, ``referred``, ``ood_scores`` or
        None); ``manifest_metrics`` the figures the manifest records for this split
        (:func:`_recorded`; None when it records none, another split, or ``limit`` is set).

    Raises:
        service.runtime.ModelLoadError: the model directory does not load.
        FileNotFoundError: no ``labels.csv`` in ``data_dir``, or an image file is missing.
        service.preprocessing.ImageDecodeError: an image file does not decode.
        ValueError: the split has no images, or a label is not one of the model's classes.
    """
    from export.parity import run_served, served_images
    from service.answers import ReferralRule
    from service.runtime import ModelRuntime
    from trainer.data import read_labels, select_rows
    from trainer.metrics import classification_metrics, is_malignant, sensitivity_specificity

    runtime = ModelRuntime(Path(model_dir), providers=["CPUExecutionProvider"])
    m = runtime.manifest
    codes = runtime.class_codes
    rows = select_rows(read_labels(Path(data_dir)), split, limit, 0)
    if not rows:
        raise ValueError(f"no {split!r} images in {data_dir}")
    unknown = sorted({r["label"] for r in rows} - set(codes))
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of model {m.name} {m.version}")
    y = np.array([codes.index(r["label"]) for r in rows])
    probs, extras = run_served(runtime, served_images(Path(data_dir), rows, runtime.spec), batch_size)
    p = probs.astype(np.float64)

    rule = ReferralRule.resolve(m)
    referred = np.array([rule.decide(dict(zip(codes, map(float, row))))[1] for row in p])
    malignant = is_malignant(y, codes)
    sens, spec = sensitivity_specificity(referred, malignant)
    result = {
        "model": m.name, "version": m.version, "model_file": m.model_file, "split": split, "n": len(rows),
        "metrics": classification_metrics(y, p, codes),
        "referral": {"threshold": rule.malignant_threshold, "sensitivity": sens, "specificity": spec,
                     "referred": int(referred.sum()), "malignant": int(malignant.sum()),
                     "malignant_referred": int((referred & malignant).sum()),
                     "benign_referred": int((referred & ~malignant).sum()), "benign": int((~malignant).sum())},
        "ood": None,
        "per_image": {"image_ids": [r["image_id"] for r in rows], "labels": [codes[i] for i in y],
                      "probabilities": p.round(6).tolist(), "referred": referred.tolist(), "ood_scores": None},
        "manifest_metrics": (_recorded(m.metrics) if limit is None and split == m.metrics.get("split", "test")
                             else None),
    }
    if m.ood is not None and m.ood.output in extras:
        scores = extras[m.ood.output]
        flagged = scores > m.ood.threshold
        result["ood"] = {"threshold": m.ood.threshold, "flagged": int(flagged.sum()),
                         "flagged_share": float(flagged.mean())}
        result["per_image"]["ood_scores"] = scores.round(6).tolist()
        served = referred | flagged
    else:
        served = referred
    served_sens, served_spec = sensitivity_specificity(served, malignant)
    result["referral"] |= {"served_sensitivity": served_sens, "served_specificity": served_spec,
                           "served_referred": int(served.sum()),
                           "served_malignant_referred": int((served & malignant).sum()),
                           "served_benign_referred": int((served & ~malignant).sum())}
    return result


def _recorded(metrics: dict) -> dict | None:
    """The manifest's test-split figures flattened to :data:`COMPARED` names plus ``referral_sensitivity``,
    ``referral_specificity``, ``ood_flagged_share`` and, when the manifest records them, the referral as served
    (``served_referral_sensitivity`` / ``_specificity``: OOD-flagged images referred too); None when the manifest
    has no ``metrics.test``."""
    if not metrics.get("test"):
        return None
    rec = dict(metrics["test"])
    intervals = metrics.get("confidence_intervals") or {}
    for key in ("referral_sensitivity", "referral_specificity", "ood_flagged_share",
                "served_referral_sensitivity", "served_referral_specificity"):
        if key in intervals:
            rec[key] = intervals[key]["estimate"]
    return rec


def format_table(result: dict) -> str:
    """Markdown table: each figure as served next to the manifest's (the trainer's report of the same split)."""
    rec = result["manifest_metrics"] or {}
    lines = [f"# {result['model']} {result['version']} as served, {result['split']} split ({result['n']} images)", "",
             f"| metric | {result['model_file']} as served | manifest (trainer report) |", "|---|---:|---:|"]
    for key in COMPARED:
        got = result["metrics"].get(key)
        want = rec.get(key)
        lines.append(f"| {key} | {'' if got is None else f'{got:.4f}'} | {'' if want is None else f'{want:.4f}'} |")
    r = result["referral"]
    nan = float("nan")
    lines.append(f"| referral sensitivity ({r['malignant_referred']}/{r['malignant']}) | {r['sensitivity']:.4f} | "
                 f"{rec.get('referral_sensitivity', nan):.4f} |")
    lines.append(f"| referral specificity ({r['benign_referred']}/{r['benign']} benign referred) | "
                 f"{r['specificity']:.4f} | {rec.get('referral_specificity', nan):.4f} |")
    if result["ood"] is not None:
        lines.append(f"| OOD-flagged share ({result['ood']['flagged']}) | {result['ood']['flagged_share']:.4f} | "
                     f"{rec.get('ood_flagged_share', nan):.4f} |")
    lines.append(f"| referral as the service answers, with OOD-flagged images (sensitivity / specificity) | "
                 f"{r['served_sensitivity']:.4f} / {r['served_specificity']:.4f} | "
                 + (f"{rec['served_referral_sensitivity']:.4f} / {rec['served_referral_specificity']:.4f} |"
                    if "served_referral_sensitivity" in rec else "|"))
    per_class = result["metrics"]["per_class"]
    lines += ["", "Per-class recall as served: " + ", ".join(f"{c} {v['recall']:.2f}" for c, v in per_class.items())]
    return "\n".join(lines)


def main(model_dir: Path = typer.Option(Path("models/default"), help="model directory to score"),  # noqa: B008
         data_dir: Path = typer.Option(None, help="dataset folder (default: env DERMSERVE_DATA_DIR, else "  # noqa: B008
                                                   "../shared/data/ham10000 beside the repository)"),
         split: str = typer.Option("test", help="train, val or test"),
         limit: int = typer.Option(None, help="score a class-stratified subset of at most this many images"),
         out: Path = typer.Option(None, help="also write the full result as JSON here")) -> None:  # noqa: B008
    """Score the served model file on a labelled split and print it beside the manifest's figures."""
    from trainer.config import DEFAULT_DATA_DIR

    result = evaluate_model_dir(model_dir, data_dir or DEFAULT_DATA_DIR, split, limit=limit)
    print(format_table(result))
    if out is not None:
        out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    typer.run(main)
