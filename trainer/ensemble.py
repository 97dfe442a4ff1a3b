"""Assemble the cross-validated ensemble from committed members and choose everything on out-of-fold data.

``python -m trainer.ensemble [--members trainer/results/cv] [--out trainer/results/ensemble]``

Reads each member's ``member.json`` / ``oof.npz`` / ``test.npz`` / ``weights.npz`` (see :mod:`trainer.cv`)
and writes ``choices.json`` (what the exporter builds), ``ood_member<i>.npz`` (detector parameters, not
committed: rebuilt from members + data), ``report.json`` and ``REPORT.md``.

Choices, each made on the **out-of-fold** (OOF) predictions of the train + val pool, by rules fixed
before any test figure was looked at (the test split is scored once, at the end, for the report):

1. **TTA views**: the subset of the dihedral views (1, 2, 4 or 8; :data:`VIEW_SETS`) with the highest OOF
   balanced accuracy among those whose cost ``members x views`` stays within :data:`MAX_FORWARD_PASSES`
   (the single-image latency budget: one image = members x views forward passes).
2. **Logit adjustment** ``logits - tau * log(prior)`` (Menon et al., "Long-tail learning via logit
   adjustment", ICLR 2021; prior = class frequencies of the pool): tau on a 0.05 grid maximising OOF
   balanced accuracy subject to OOF accuracy >= :data:`MIN_OOF_ACCURACY`.
3. **Temperature** (Guo et al., ICML 2017): minimises OOF negative log-likelihood of the adjusted logits.
4. **Referral threshold** on the malignant probability P(mel)+P(bcc)+P(akiec): the highest threshold
   whose OOF malignant sensitivity is >= the target (default 0.90).
5. **Out-of-distribution guard** (:mod:`trainer.ood`): per member, fitted on that member's training folds,
   thresholded at 95 % of its held-out fold.

An ensemble of fold models cannot be scored on OOF data (each pool image has exactly one member that did
not train on it), so OOF figures are single-member figures; the ensemble rows of the ablation are test
figures, reported and never used for a choice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.cv import MEMBERS_DIR, VIEWS, MemberConfig, load_member
from trainer.data import CLASS_CODES, read_labels
from trainer.metrics import (
    bootstrap_ci,
    calibrated_probabilities,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    is_malignant,
    malignant_probability,
    sensitivity_specificity,
    threshold_for_sensitivity,
)

#: Candidate TTA view sets, as indices into :data:`trainer.cv.VIEWS`: identity; + left-right flip;
#: the four flips (identity, rot180, flip-lr, flip-ud: no transposition); all eight.
VIEW_SETS: dict[int, tuple[int, ...]] = {1: (0,), 2: (0, 4), 4: (0, 2, 4, 6), 8: tuple(range(8))}
#: Budget of forward passes per served image (members x views); see README "trade-off".
MAX_FORWARD_PASSES = 16
#: Logit adjustment keeps OOF accuracy at or above this (the issue's 0.78 floor plus one point of margin).
MIN_OOF_ACCURACY = 0.79
#: The low-confidence referral reason is kept only if it adds this much OOF specificity at equal sensitivity.
MIN_SPECIFICITY_GAIN = 0.01
#: Default target malignant sensitivity of the referral rule.
TARGET_SENSITIVITY = 0.90
#: Target sensitivities whose thresholds the manifest also carries (the service can pick one).
OPERATING_POINTS: tuple[float, ...] = (0.80, 0.85, 0.90, 0.95, 0.97, 0.99)
#: Where the analysis is written.
ENSEMBLE_DIR = MEMBERS_DIR.parent / "ensemble"


@dataclass
class Members:
    """The committed members and their predictions.

    Attributes:
        dirs: member folders, ordered by fold.
        configs: each member's :class:`MemberConfig`.
        oof_logits: ``float32 (8, N_pool, K)``: every pool image scored by the member that held it out.
        oof_labels: ``int64 (N_pool,)``.
        oof_fold: ``int64 (N_pool,)``: which member scored the row.
        oof_ids: image ids of the OOF rows.
        test_logits: ``float32 (M, 8, N_test, K)``.
        test_labels: ``int64 (N_test,)``.
        test_ids: image ids of the test rows.
    """

    dirs: list[Path]
    configs: list[MemberConfig]
    oof_logits: np.ndarray
    oof_labels: np.ndarray
    oof_fold: np.ndarray
    oof_ids: list[str]
    test_logits: np.ndarray
    test_labels: np.ndarray
    test_ids: list[str]


def load_members(root: Path = MEMBERS_DIR) -> Members:
    """Read every ``root/fold*/`` with a ``member.json``.

    Raises:
        FileNotFoundError: no member under ``root``.
        ValueError: members disagree on the test images.
    """
    dirs = sorted(p.parent for p in Path(root).glob("fold*/member.json"))
    if not dirs:
        raise FileNotFoundError(f"no members (fold*/member.json) under {root}")
    configs, oof, test = [], [], []
    for d in dirs:
        info = json.loads((d / "member.json").read_text())
        configs.append(MemberConfig(**info["config"]))
        oof.append(dict(np.load(d / "oof.npz")))
        test.append(dict(np.load(d / "test.npz")))
    if any(list(t["image_ids"]) != list(test[0]["image_ids"]) for t in test):
        raise ValueError("members were scored on different test images")
    return Members(
        dirs=dirs, configs=configs,
        oof_logits=np.concatenate([o["logits"] for o in oof], axis=1),
        oof_labels=np.concatenate([o["labels"] for o in oof]),
        oof_fold=np.concatenate([np.full(len(o["labels"]), c.fold) for o, c in zip(oof, configs)]),
        oof_ids=[str(i) for o in oof for i in o["image_ids"]],
        test_logits=np.stack([t["logits"] for t in test]),
        test_labels=test[0]["labels"], test_ids=[str(i) for i in test[0]["image_ids"]],
    )


def balanced_accuracy(y: np.ndarray, logits: np.ndarray) -> float:
    """Mean per-class recall of the arg-max (ISIC 2018 Task 3 metric)."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, logits.argmax(1)))


def adjust(logits: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment ``logits - tau * log(prior)`` (Menon et al. 2021), same shape."""
    return (logits - tau * np.log(prior)).astype(np.float32)


def choose_views(members: Members) -> tuple[int, dict]:
    """Rule 1 of the module docstring. Returns (number of views, OOF balanced accuracy per view set)."""
    scores = {v: balanced_accuracy(members.oof_labels, members.oof_logits[list(idx)].mean(0))
              for v, idx in VIEW_SETS.items()}
    allowed = [v for v in VIEW_SETS if v * len(members.dirs) <= MAX_FORWARD_PASSES] or [1]
    best = max(allowed, key=lambda v: (round(scores[v], 4), -v))
    return best, scores


def choose_tau(y: np.ndarray, logits: np.ndarray, prior: np.ndarray) -> tuple[float, list[dict]]:
    """Rule 2 of the module docstring. Returns (tau, the grid with OOF balanced accuracy and accuracy)."""
    grid = []
    for tau in np.round(np.arange(0, 1.51, 0.05), 2):
        adj = adjust(logits, prior, tau)
        grid.append({"tau": float(tau), "balanced_accuracy": balanced_accuracy(y, adj),
                     "accuracy": float((adj.argmax(1) == y).mean())})
    ok = [g for g in grid if g["accuracy"] >= MIN_OOF_ACCURACY] or grid[:1]
    return max(ok, key=lambda g: g["balanced_accuracy"])["tau"], grid


def referral_rule(y: np.ndarray, probs: np.ndarray, target: float) -> dict:
    """Rule 4: threshold for ``target`` malignant sensitivity, and what the low-confidence reason adds.

    The low-confidence reason (refer when the top-1 probability is < 0.5) is measured by choosing the
    malignant threshold again so that *both reasons together* reach the same sensitivity, and comparing
    specificity: the reason is kept only if it raises OOF specificity by at least
    :data:`MIN_SPECIFICITY_GAIN` (a reason a clinician must read has to change something).
    """
    mal = is_malignant(y, CLASS_CODES)
    p_mal = malignant_probability(probs, CLASS_CODES)
    t = threshold_for_sensitivity(p_mal, mal, target)
    sens, spec = sensitivity_specificity(p_mal >= t, mal)
    low = probs.max(1) < 0.5
    # the highest threshold t2 such that (p_mal >= t2) | low reaches the target sensitivity
    cands = np.unique(p_mal[mal])[::-1]
    t2 = float(cands[-1])
    for c in cands:
        if sensitivity_specificity((p_mal >= c) | low, mal)[0] >= target:
            t2 = float(c)
            break
    sens2, spec2 = sensitivity_specificity((p_mal >= t2) | low, mal)
    points = []
    for goal in OPERATING_POINTS:
        tg = threshold_for_sensitivity(p_mal, mal, goal)
        s_, sp_ = sensitivity_specificity(p_mal >= tg, mal)
        points.append({"target_sensitivity": goal, "malignant_probability_threshold": round(tg, 4),
                       "sensitivity": s_, "specificity": sp_})
    return {"target_sensitivity": target, "malignant_probability_threshold": t, "operating_points": points,
            "oof_sensitivity": sens, "oof_specificity": spec,
            "with_low_confidence_reason": {"malignant_probability_threshold": t2, "oof_sensitivity": sens2,
                                           "oof_specificity": spec2},
            "keep_low_confidence_reason": bool(spec2 - spec >= MIN_SPECIFICITY_GAIN)}


def summary_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    """The headline figures of one row of the ablation tables."""
    m = classification_metrics(y, probs, CLASS_CODES)
    return {k: m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_roc_auc_ovr", "melanoma_sensitivity",
                                  "malignant_vs_benign_roc_auc", "ece_15")}


def ensemble_logits(test_logits: np.ndarray, views: tuple[int, ...]) -> np.ndarray:
    """Mean over members and ``views`` of ``float32 (M, 8, N, K)`` logits: ``(N, K)``."""
    return test_logits[:, list(views)].mean(axis=(0, 1))


def test_confidence_intervals(y: np.ndarray, probs: np.ndarray, lesions: np.ndarray, referral_threshold: float,
                              ood_flag: np.ndarray | None, n_resamples: int = 1000) -> dict:
    """95 % lesion-bootstrap intervals (:func:`trainer.metrics.bootstrap_ci`) of the headline test metrics."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pred = probs.argmax(1)
    mel = CLASS_CODES.index("mel")
    mal = is_malignant(y, CLASS_CODES)
    p_mal = malignant_probability(probs, CLASS_CODES)
    refer = p_mal >= referral_threshold

    def macro_auc(i):
        return float(roc_auc_score(y[i], probs[i], multi_class="ovr", average="macro",
                                   labels=list(range(len(CLASS_CODES))))) if len(np.unique(y[i])) == len(CLASS_CODES) else np.nan

    stats = {
        "accuracy": lambda i: float((pred[i] == y[i]).mean()),
        "balanced_accuracy": lambda i: float(balanced_accuracy_score(y[i], pred[i])),
        "macro_roc_auc_ovr": macro_auc,
        "melanoma_sensitivity": lambda i: float((pred[i][y[i] == mel] == mel).mean()) if (y[i] == mel).any() else np.nan,
        "malignant_vs_benign_roc_auc": lambda i: float(roc_auc_score(mal[i], p_mal[i])) if 0 < mal[i].sum() < len(i) else np.nan,
        "ece_15": lambda i: expected_calibration_error(y[i], probs[i], 15),
        "referral_sensitivity": lambda i: sensitivity_specificity(refer[i], mal[i])[0],
        "referral_specificity": lambda i: sensitivity_specificity(refer[i], mal[i])[1],
    }
    if ood_flag is not None:
        stats["ood_flagged_share"] = lambda i: float(ood_flag[i].mean())
    return {k: bootstrap_ci(f, lesions, n_resamples, seed=7) for k, f in stats.items()}


def member_features(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Penultimate (backbone global-average-pool) features ``float32 (N, D)`` of a member model."""
    import keras

    # the dropout layer's input is the backbone's pooled output in the outer graph (trainer.model)
    extractor = keras.Model(model.inputs, model.get_layer("dropout").input)
    return np.asarray(extractor.predict(images.astype(np.float32), batch_size=batch_size, verbose=0), np.float32)


def fit_ood(members: Members, out: Path) -> dict:
    """Fit and calibrate each member's Mahalanobis detector (:mod:`trainer.ood`); score test and the OOD set.

    Writes ``out/ood_member<i>.npz`` (``chol``, ``means_proj``, ``threshold``). Returns OOD figures:
    AUROC of the ensemble score (OOD set vs test dermoscopic images), share of each flagged at the
    threshold, and the same for the energy score and the maximum softmax probability for comparison.
    """
    from sklearn.metrics import roc_auc_score

    from trainer.cv import fold_splits
    from trainer.ood import MahalanobisDetector, energy_score, ensemble_ood_score
    from trainer.oodset import build_ood_set, decode_all

    cfg0 = members.configs[0]
    from service.preprocessing import PreprocessSpec

    ood_set = build_ood_set()
    ood_images = decode_all(ood_set, PreprocessSpec(height=cfg0.image_size, width=cfg0.image_size,
                                                    resize_method=cfg0.resize_method))
    detectors, test_feats, ood_feats, ood_logits = [], [], [], []
    for i, (d, cfg) in enumerate(zip(members.dirs, members.configs)):
        model = load_member(d)
        train, held, test = fold_splits(cfg)
        det = MahalanobisDetector.fit(member_features(model, train.images), train.labels, len(CLASS_CODES))
        det.calibrate(member_features(model, held.images))
        np.savez(out / f"ood_member{i}.npz", chol=det.chol, means_proj=det.means_proj, threshold=det.threshold)
        detectors.append(det)
        test_feats.append(member_features(model, test.images))
        ood_feats.append(member_features(model, ood_images))
        ood_logits.append(np.asarray(model.predict(ood_images.astype(np.float32), verbose=0)))
        print(f"OOD detector of {d.name}: threshold {det.threshold:.1f}", flush=True)
    s_test = ensemble_ood_score(detectors, test_feats)
    s_ood = ensemble_ood_score(detectors, ood_feats)
    y = np.r_[np.zeros(len(s_test)), np.ones(len(s_ood))]
    test_logit_mean = members.test_logits[:, 0].mean(0)
    ood_logit_mean = np.mean(ood_logits, axis=0)
    msp = lambda lg: -calibrated_probabilities(lg, 1.0).max(1)
    return {
        "method": "mahalanobis_penultimate_mean_ratio",
        "threshold": 1.0,
        "n_ood_images": len(ood_set), "n_test_images": len(s_test),
        "auroc": float(roc_auc_score(y, np.r_[s_test, s_ood])),
        "ood_flagged_share": float((s_ood > 1.0).mean()),
        "test_flagged_share": float((s_test > 1.0).mean()),
        "comparison_auroc": {
            "energy": float(roc_auc_score(y, np.r_[energy_score(test_logit_mean), energy_score(ood_logit_mean)])),
            "max_softmax_probability": float(roc_auc_score(y, np.r_[msp(test_logit_mean), msp(ood_logit_mean)])),
        },
        "per_image": [{"name": im.name, "category": im.category, "ood_score": float(s), "flagged": bool(s > 1.0)}
                      for im, s in zip(ood_set, s_ood)],
        "test_scores": s_test.tolist(),
    }


def _portable(path: Path) -> str:
    """``path`` relative to the repository root when inside it (committed files stay machine-independent)."""
    from trainer.config import REPO_ROOT

    p = Path(path).resolve()
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def resolve_member(path: str) -> Path:
    """Inverse of :func:`_portable`: relative paths are under the repository root."""
    from trainer.config import REPO_ROOT

    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def analyse(members_dir: Path = MEMBERS_DIR, out: Path = ENSEMBLE_DIR, target_sensitivity: float = TARGET_SENSITIVITY,
            with_ood: bool = True, n_resamples: int = 1000) -> dict:
    """Make every choice on OOF data, then score the test split once; write choices.json and the report."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = load_members(members_dir)
    y = m.oof_labels
    prior = np.bincount(y, minlength=len(CLASS_CODES)) / len(y)

    n_views, view_scores = choose_views(m)
    views = VIEW_SETS[n_views]
    oof_tta = m.oof_logits[list(views)].mean(0)
    tau, tau_grid = choose_tau(y, oof_tta, prior)
    oof_adj = adjust(oof_tta, prior, tau)
    temperature = fit_temperature(oof_adj, y)
    oof_probs = calibrated_probabilities(oof_adj, temperature)
    referral = referral_rule(y, oof_probs, target_sensitivity)

    cv_table = []
    for fold in sorted(set(m.oof_fold.tolist())):
        rows = m.oof_fold == fold
        cv_table.append({"fold": int(fold), "n_held_out": int(rows.sum()),
                         "balanced_accuracy": balanced_accuracy(y[rows], m.oof_logits[0][rows]),
                         "balanced_accuracy_tta": balanced_accuracy(y[rows], oof_tta[rows])})
    b = np.array([r["balanced_accuracy"] for r in cv_table])

    def oof_row(logits):
        return summary_metrics(y, calibrated_probabilities(logits, fit_temperature(logits, y)))

    ablation_oof = {
        "single model (identity view)": oof_row(m.oof_logits[0]),
        f"+ TTA ({n_views} views)": oof_row(oof_tta),
        f"+ logit adjustment (tau {tau})": oof_row(oof_adj),
    }

    yt = m.test_labels
    lesion_of = {r["image_id"]: r["lesion_id"] for r in read_labels(Path(m.configs[0].data_dir))}
    lesions = np.array([lesion_of[i] for i in m.test_ids])
    members_single = [summary_metrics(yt, calibrated_probabilities(m.test_logits[i, 0], temperature))
                      for i in range(len(m.dirs))]
    ens = ensemble_logits(m.test_logits, (0,))
    ens_tta = ensemble_logits(m.test_logits, views)
    final_probs = calibrated_probabilities(adjust(ens_tta, prior, tau), temperature)
    ablation_test = {
        "single member (identity view), mean over members": {
            k: float(np.mean([s[k] for s in members_single])) for k in members_single[0]},
        f"ensemble of {len(m.dirs)} (identity view)": summary_metrics(yt, calibrated_probabilities(ens, temperature)),
        f"+ TTA ({n_views} views)": summary_metrics(yt, calibrated_probabilities(ens_tta, temperature)),
        f"+ logit adjustment (tau {tau}) = served": summary_metrics(yt, final_probs),
    }
    ood = fit_ood(m, out) if with_ood else None
    ood_flag = np.array(ood["test_scores"]) > 1.0 if ood else None
    choices = {
        "members": [_portable(d) for d in m.dirs],
        "views": [list(VIEWS[v]) for v in views], "view_indices": list(views),
        "prior": prior.tolist(), "tau": tau, "temperature": temperature,
        "referral": referral, "ood": {k: v for k, v in (ood or {}).items() if k not in ("per_image", "test_scores")},
    }
    test_final = classification_metrics(yt, final_probs, CLASS_CODES)
    mal = is_malignant(yt, CLASS_CODES)
    sens, spec = sensitivity_specificity(malignant_probability(final_probs, CLASS_CODES)
                                         >= referral["malignant_probability_threshold"], mal)
    report = {
        "choices": choices,
        "cv": {"folds": cv_table, "balanced_accuracy_mean": float(b.mean()), "balanced_accuracy_sd": float(b.std(ddof=1)) if len(b) > 1 else 0.0},
        "oof": {"n": len(y), "view_sets_balanced_accuracy": {str(k): v for k, v in view_scores.items()},
                "tau_grid": tau_grid, "ablation": ablation_oof},
        "test": {"n": len(yt), "metrics": test_final, "referral": {"sensitivity": sens, "specificity": spec},
                 "ablation": ablation_test, "members": members_single,
                 "confidence_intervals": test_confidence_intervals(yt, final_probs, lesions,
                                                                   referral["malignant_probability_threshold"],
                                                                   ood_flag, n_resamples)},
        "ood": ood,
        "training_wall_time_seconds": {d.name: json.loads((d / "member.json").read_text())["wall_time_seconds"]["total"]
                                       for d in m.dirs},
        "analysis_seconds": round(time.perf_counter() - t0, 1),
    }
    report["training_wall_time_seconds"]["all_members"] = round(sum(report["training_wall_time_seconds"].values()), 1)
    (out / "choices.json").write_text(json.dumps(choices, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    from trainer.ensemble_report import write_markdown

    write_markdown(report, out / "REPORT.md")
    return report


def main(members: Path = MEMBERS_DIR, out: Path = ENSEMBLE_DIR, target_sensitivity: float = TARGET_SENSITIVITY,
         no_ood: bool = False, resamples: int = 1000) -> None:
    """Choose on OOF, score test once, write choices.json + report.json + REPORT.md."""
    analyse(members, out, target_sensitivity, not no_ood, resamples)


if __name__ == "__main__":
    import typer

    typer.run(main)
