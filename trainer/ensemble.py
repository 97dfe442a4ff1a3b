"""Assemble the cross-validated ensemble from committed members and choose everything on out-of-fold data.

``python -m trainer.ensemble [--members trainer/results/cv [--members trainer/results/cv_b]]
[--out trainer/results/ensemble]``

Reads each member's ``member.json`` / ``oof.npz`` / ``test.npz`` / ``weights.npz`` (see :mod:`trainer.cv`)
of one or more **families** (complete k-fold member sets, :mod:`trainer.families`) and writes
``choices.json`` (what the exporter builds), ``ood_member<i>.npz`` (detector parameters, not committed:
rebuilt from members + data), ``report.json`` and ``REPORT.md``.

Choices, each made on the **out-of-fold** (OOF) predictions of the train + val pool, by rules fixed
before any test figure was looked at (the test split is scored once, at the end, for the report):

1. **Family weights and TTA views, jointly** (the members-vs-views trade-off): the served logits are
   ``sum_f w_f * mean(members of f)``, each member averaged over a subset of the dihedral views (1, 2, 4
   or 8; :data:`VIEW_SETS`). Every pair of ``w`` on a 0.25 simplex grid and view set whose cost
   ``views x sum of the kept members' multiply-accumulates`` stays within :data:`MAX_GMACS_PER_IMAGE`
   (the single-image latency budget) is scored by the OOF negative log-likelihood (temperature refitted)
   of ``sum_f w_f * OOF_f`` averaged over the views; the lowest wins (within 1e-4 of it: the cheapest).
   This is an OOF ensemble, as every family holds each pool image out once (slightly optimistic, like
   every OOF figure here: each member picked its best epoch on its own held-out fold). A family with
   weight 0 is left out of the served graph. (Until 2.1.0 the weights were chosen on the identity view
   and the views afterwards by OOF balanced accuracy; one proper score now chooses both, so that more
   members at fewer views and fewer members at more views compete on one scale.) The rule knows no
   file-size budget: the exporter refuses a model over 50 MB and offers float16 weights.
2. **Logit adjustment** ``logits - tau * log(prior)`` (Menon et al., "Long-tail learning via logit
   adjustment", ICLR 2021; prior = class frequencies of the pool): tau on a 0.05 grid maximising OOF
   balanced accuracy subject to OOF accuracy >= :data:`MIN_OOF_ACCURACY`.
3. **Temperature** (Guo et al., ICML 2017): minimises OOF negative log-likelihood of the adjusted logits.
4. **Referral threshold** on the malignant probability P(mel)+P(bcc)+P(akiec): the highest threshold
   whose OOF malignant sensitivity is >= the target (default 0.90).
5. **Out-of-distribution guard** (:mod:`trainer.ood`): one detector per member of the highest-weight
   served family **without colour constancy** (any served family if all have it; ties: the first given),
   the guarding members, fitted on that member's training folds, thresholded at 95 % of its held-out fold;
   the served score is their mean. Why not a colour-constant family (:func:`choose_guard`): measured on the
   held-out fold and the project's OOD set, a colour-constant member's guard stays near 5 % under colour
   shifts but lets natural photographs through (fold 0: 7 of 48 OOD images, against 0 for the plain member of
   the same fold; ``trainer/results/experiments/ood_colour_shift.txt``). The rule was written after that
   measurement on the same 48-image OOD set whose flagged share the report gives, so that figure is not an
   independent check of the rule.

An ensemble of one family's fold models cannot be scored on OOF data (each pool image has exactly one
member of the family that did not train on it), so OOF figures are one member per family; the
within-family ensemble rows of the ablation are test figures, reported and never used for a choice.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np

from trainer.config import portable_path
from trainer.cv import MEMBERS_DIR, VIEWS, MemberConfig, load_member
from trainer.data import CLASS_CODES, read_labels
from trainer.families import Members, load_families, member_macs
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
#: Budget of model work per served image, in multiply-accumulates (10^9) summed over members x views
#: (:func:`trainer.families.count_macs`). Measured side by side in one ``python -m benchmarks`` run
#: (2026-12-07, benchmarks/RESULTS.md): HTTP p50 at concurrency 1 was 25.9 ms for 2.0.0 (0.78 GMAC) and
#: 39.8 ms for 2.1.0 (1.37 GMAC), i.e. ~7.5 ms + 23.6 ms per GMAC; the issue's budget is p50 <= 60 ms, and
#: 1.8 GMAC (~50 ms) leaves ~10 ms for a noisier machine. (2.4 until 2.1.0, scaled from a quieter day's
#: 17.3 ms for 2.0.0: the same model measured 50 % slower five days later.)
MAX_GMACS_PER_IMAGE = 1.8
#: Step of the family-weight grid (rule 1).
FAMILY_WEIGHT_STEP = 0.25
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


def balanced_accuracy(y: np.ndarray, logits: np.ndarray) -> float:
    """Mean per-class recall of the arg-max (ISIC 2018 Task 3 metric)."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, logits.argmax(1)))


def adjust(logits: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment ``logits - tau * log(prior)`` (Menon et al. 2021), same shape."""
    return (logits - tau * np.log(prior)).astype(np.float32)


def weight_grid(n_families: int, step: float = FAMILY_WEIGHT_STEP) -> list[tuple[float, ...]]:
    """Every weight vector on the probability simplex with entries in multiples of ``step``."""
    n = round(1 / step)
    return [tuple(k * step for k in c) for c in itertools.product(range(n + 1), repeat=n_families) if sum(c) == n]


def choose_weights_and_views(y: np.ndarray, fams: list[Members], macs: dict[str, int],
                             budget_gmacs: float = MAX_GMACS_PER_IMAGE) -> tuple[tuple[float, ...], int, list[dict]]:
    """Rule 1 of the module docstring.

    Args:
        y: OOF labels ``int (N,)`` (the same images in every family, :func:`trainer.families.load_families`).
        fams: the families; ``f.oof_logits`` is ``float32 (8, N, K)``.
        macs: multiply-accumulates of one pass of one member, per family name.
        budget_gmacs: the per-image budget (10^9 multiply-accumulates over members x views).

    Returns:
        (weight per family, number of views, the grid: one row per weight vector and view set with its
        cost, OOF NLL and balanced accuracy). Among the rows within 1e-4 of the lowest affordable NLL the
        cheapest wins (then fewer views). If nothing fits the budget, the cheapest rows are the candidates
        (with a warning).
    """
    from scipy.special import log_softmax

    grid = []
    for w in (weight_grid(len(fams)) if len(fams) > 1 else [(1.0,)]):
        gmacs = sum(len(f.dirs) * macs[f.name] for wf, f in zip(w, fams) if wf > 0) / 1e9
        lg8 = sum(wf * f.oof_logits for wf, f in zip(w, fams) if wf > 0)
        for n_views, idx in VIEW_SETS.items():
            lg = lg8[list(idx)].mean(0)
            t = fit_temperature(lg, y)
            nll = float(-log_softmax(lg / t, axis=1)[np.arange(len(y)), y].mean())
            grid.append({"weights": list(w), "views": n_views, "gmacs_per_image": gmacs * n_views, "nll": nll,
                         "balanced_accuracy": balanced_accuracy(y, lg)})
    ok = [g for g in grid if g["gmacs_per_image"] <= budget_gmacs]
    if not ok:
        cheapest = min(g["gmacs_per_image"] for g in grid)
        print(f"warning: nothing fits the {budget_gmacs} GMAC budget; serving the cheapest ({cheapest:.2f} GMAC)",
              flush=True)
        ok = [g for g in grid if g["gmacs_per_image"] <= cheapest + 1e-12]
    lowest = min(g["nll"] for g in ok)
    best = min((g for g in ok if g["nll"] <= lowest + 1e-4), key=lambda g: (g["gmacs_per_image"], g["views"]))
    return tuple(best["weights"]), best["views"], grid


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


def referral_decisions(referral: dict, probs: np.ndarray) -> np.ndarray:
    """The referral rule as the exporter writes it into the manifest and the service applies it (without the
    out-of-distribution reason), on ``float (N, K)`` probabilities -> ``bool (N,)``.

    With the low-confidence reason kept (:func:`referral_rule`), the rule is ``P(malignant) >= t2`` or top-1
    probability < 0.5, where ``t2`` is the threshold chosen *for that pair*; otherwise ``P(malignant) >= t``.
    """
    p_mal = malignant_probability(probs, CLASS_CODES)
    if referral["keep_low_confidence_reason"]:
        return (p_mal >= referral["with_low_confidence_reason"]["malignant_probability_threshold"]) | \
            (probs.max(1) < 0.5)
    return p_mal >= referral["malignant_probability_threshold"]


def summary_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    """The headline figures of one row of the ablation tables."""
    m = classification_metrics(y, probs, CLASS_CODES)
    return {k: m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_roc_auc_ovr", "melanoma_sensitivity",
                                  "malignant_vs_benign_roc_auc", "ece_15")}


def ensemble_logits(test_logits: np.ndarray, views: tuple[int, ...], member_weights: np.ndarray) -> np.ndarray:
    """Weighted sum over members of each member's mean over ``views``: ``float32 (M, 8, N, K)`` logits and
    ``(M,)`` weights summing to 1 -> ``(N, K)``."""
    return np.tensordot(member_weights, test_logits[:, list(views)].mean(axis=1), axes=1)


def test_confidence_intervals(y: np.ndarray, probs: np.ndarray, lesions: np.ndarray, refer: np.ndarray,
                              ood_flag: np.ndarray | None, n_resamples: int = 1000) -> dict:
    """95 % lesion-bootstrap intervals (:func:`trainer.metrics.bootstrap_ci`) of the headline test metrics.

    Args:
        y: ``int (N,)`` labels; probs: ``float (N, K)`` served probabilities; lesions: ``(N,)`` lesion ids.
        refer: ``bool (N,)`` referral decisions of the rule (:func:`referral_decisions`).
        ood_flag: ``bool (N,)`` images the guard flags (the service refers them too), or None.
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pred = probs.argmax(1)
    mel = CLASS_CODES.index("mel")
    mal = is_malignant(y, CLASS_CODES)
    p_mal = malignant_probability(probs, CLASS_CODES)

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
        # as the service answers: an OOD-flagged image is referred whatever its malignant probability
        served = refer | ood_flag
        stats["served_referral_sensitivity"] = lambda i: sensitivity_specificity(served[i], mal[i])[0]
        stats["served_referral_specificity"] = lambda i: sensitivity_specificity(served[i], mal[i])[1]
    return {k: bootstrap_ci(f, lesions, n_resamples, seed=7) for k, f in stats.items()}


def member_features(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Penultimate (backbone global-average-pool) features ``float32 (N, D)`` of a member model."""
    import keras

    # the dropout layer's input is the backbone's pooled output in the outer graph (trainer.model)
    extractor = keras.Model(model.inputs, model.get_layer("dropout").input)
    return np.asarray(extractor.predict(images.astype(np.float32), batch_size=batch_size, verbose=0), np.float32)


def fit_ood(dirs: list[Path], configs: list[MemberConfig], indices: list[int], test_logit_mean: np.ndarray,
            out: Path) -> dict:
    """Fit and calibrate the Mahalanobis detector (:mod:`trainer.ood`) of each member in ``dirs``; score
    test and the OOD set.

    Args:
        dirs, configs: the guarding members.
        indices: their positions among the served members (``choices.json`` ``members``).
        test_logit_mean: ``float32 (N_test, K)`` identity-view mean logits of the guarding members (for
            the energy and maximum-softmax comparisons, which score the OOD set with the same members).
        out: where ``ood_member<index>.npz`` (``chol``, ``means_proj``, ``threshold``) are written.

    Returns OOD figures:
    AUROC of the ensemble score (OOD set vs test dermoscopic images), share of each flagged at the
    threshold, and the same for the energy score and the maximum softmax probability for comparison.
    """
    from sklearn.metrics import roc_auc_score

    from service.preprocessing import PreprocessSpec
    from trainer.cv import fold_splits
    from trainer.ood import MahalanobisDetector, energy_score, ensemble_ood_score
    from trainer.oodset import build_ood_set, decode_all

    cfg0 = configs[0]
    ood_set = build_ood_set()
    ood_images = decode_all(ood_set, PreprocessSpec(height=cfg0.image_size, width=cfg0.image_size,
                                                    resize_method=cfg0.resize_method))
    detectors, test_feats, ood_feats, ood_logits = [], [], [], []
    for i, d, cfg in zip(indices, dirs, configs):
        model = load_member(d)
        train, held, test = fold_splits(cfg)
        det = MahalanobisDetector.fit(member_features(model, train.images), train.labels, len(CLASS_CODES))
        det.calibrate(member_features(model, held.images))
        np.savez(out / f"ood_member{i}.npz", chol=det.chol, means_proj=det.means_proj, threshold=det.threshold)
        detectors.append(det)
        test_feats.append(member_features(model, test.images))
        ood_feats.append(member_features(model, ood_images))
        ood_logits.append(np.asarray(model.predict(ood_images.astype(np.float32), verbose=0)))
        print(f"OOD detector of {d.parent.name}/{d.name}: threshold {det.threshold:.1f}", flush=True)
    s_test = ensemble_ood_score(detectors, test_feats)
    s_ood = ensemble_ood_score(detectors, ood_feats)
    y = np.r_[np.zeros(len(s_test)), np.ones(len(s_ood))]
    ood_logit_mean = np.mean(ood_logits, axis=0)
    msp = lambda lg: -calibrated_probabilities(lg, 1.0).max(1)
    return {
        "method": "mahalanobis_penultimate_mean_ratio",
        "members": [portable_path(d) for d in dirs],
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


def choose_guard(served: list[tuple[Members, float]]) -> Members:
    """Rule 5: the guarding family among the served ``(family, weight)`` pairs: the highest-weight family
    whose members have no colour-constancy layer (the first of equal weights), else the highest-weight one.

    A colour-constant member's features no longer carry an image's colour cast, which is much of what
    tells a photograph from a dermoscopic image: measured (held-out fold 0 and the OOD set of
    :mod:`trainer.oodset`, ``trainer/results/experiments/ood_colour_shift.txt``) it missed 7 of 48
    non-dermoscopic images where the plain member of that fold missed none, though it flags colour-shifted
    lesions less. A family counts as colour-constant when its first member is (a family is one recipe).

    Raises:
        ValueError: ``served`` is empty.
    """
    if not served:
        raise ValueError("no served family to guard with")
    plain = [fw for fw in served if fw[0].configs[0].colour_constancy == "none"]
    return max(plain or served, key=lambda fw: fw[1])[0]


def resolve_member(path: str) -> Path:
    """A member folder recorded by :func:`trainer.config.portable_path` (``choices.json``) on this machine:
    :func:`trainer.config.local_path` (relative paths are under the repository root)."""
    from trainer.config import local_path

    return local_path(path)


def family_cv_table(fam: Members, y: np.ndarray, views: tuple[int, ...], macs: int) -> dict:
    """Per-fold held-out balanced accuracy of one family (identity view and with ``views``), mean and sd."""
    rows = []
    tta = fam.oof_logits[list(views)].mean(0)
    for fold in sorted(set(fam.oof_fold.tolist())):
        held = fam.oof_fold == fold
        rows.append({"fold": int(fold), "n_held_out": int(held.sum()),
                     "balanced_accuracy": balanced_accuracy(y[held], fam.oof_logits[0][held]),
                     "balanced_accuracy_tta": balanced_accuracy(y[held], tta[held])})
    b = np.array([r["balanced_accuracy"] for r in rows])
    return {"folds": rows, "arch": fam.configs[0].arch, "image_size": fam.configs[0].image_size,
            "gmacs_per_pass": macs / 1e9, "balanced_accuracy_mean": float(b.mean()),
            "balanced_accuracy_sd": float(b.std(ddof=1)) if len(b) > 1 else 0.0}


def analyse(members_dirs: list[Path] | Path = MEMBERS_DIR, out: Path = ENSEMBLE_DIR,
            target_sensitivity: float = TARGET_SENSITIVITY, with_ood: bool = True, n_resamples: int = 1000) -> dict:
    """Make every choice on OOF data, then score the test split once; write choices.json and the report.

    Args:
        members_dirs: one family folder or several (:mod:`trainer.families`).
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    roots = [Path(members_dirs)] if isinstance(members_dirs, (str, Path)) else [Path(p) for p in members_dirs]
    fams = load_families(roots)
    y = fams[0].oof_labels
    prior = np.bincount(y, minlength=len(CLASS_CODES)) / len(y)

    macs = {f.name: member_macs(f.configs[0]) for f in fams}
    fam_w, n_views, choice_grid = choose_weights_and_views(y, fams, macs)
    served = [(f, w) for f, w in zip(fams, fam_w) if w > 0]
    dirs = [d for f, _ in served for d in f.dirs]
    configs = [c for f, _ in served for c in f.configs]
    member_w = np.array([w / len(f.dirs) for f, w in served for _ in f.dirs])
    oof_all = sum(w * f.oof_logits for f, w in served)  # (8, N, K)
    views = VIEW_SETS[n_views]
    # the chosen weights' row of each view set (also those over the budget, for the report)
    rows = {g["views"]: g for g in choice_grid if tuple(g["weights"]) == fam_w}
    view_scores = {v: g["balanced_accuracy"] for v, g in rows.items()}
    oof_tta = oof_all[list(views)].mean(0)
    tau, tau_grid = choose_tau(y, oof_tta, prior)
    oof_adj = adjust(oof_tta, prior, tau)
    temperature = fit_temperature(oof_adj, y)
    oof_probs = calibrated_probabilities(oof_adj, temperature)
    referral = referral_rule(y, oof_probs, target_sensitivity)

    cv_families = {f.name: family_cv_table(f, y, views, macs[f.name]) for f in fams}

    def oof_row(logits):
        return summary_metrics(y, calibrated_probabilities(logits, fit_temperature(logits, y)))

    ablation_oof = {f"single model of {f.name} (identity view)": oof_row(f.oof_logits[0]) for f in fams}
    if len(fams) == 1:
        ablation_oof = {"single model (identity view)": ablation_oof.popitem()[1]}
    else:
        ablation_oof["families weighted " + " / ".join(f"{w:g}" for w in fam_w) + " (identity view)"] = \
            oof_row(oof_all[0])
    ablation_oof[f"+ TTA ({n_views} views)"] = oof_row(oof_tta)
    ablation_oof[f"+ logit adjustment (tau {tau})"] = oof_row(oof_adj)

    yt = fams[0].test_labels
    lesion_of = {r["image_id"]: r["lesion_id"] for r in read_labels(Path(configs[0].data_dir))}
    lesions = np.array([lesion_of[i] for i in fams[0].test_ids])
    test_logits = np.concatenate([f.test_logits for f, _ in served])  # (M, 8, N, K)
    members_single = [summary_metrics(yt, calibrated_probabilities(test_logits[i, 0], temperature))
                      for i in range(len(dirs))]
    ens = ensemble_logits(test_logits, (0,), member_w)
    ens_tta = ensemble_logits(test_logits, views, member_w)
    final_probs = calibrated_probabilities(adjust(ens_tta, prior, tau), temperature)
    ablation_test = {
        "single member (identity view), mean over members": {
            k: float(np.mean([s[k] for s in members_single])) for k in members_single[0]},
        f"ensemble of {len(dirs)} (identity view)": summary_metrics(yt, calibrated_probabilities(ens, temperature)),
        f"+ TTA ({n_views} views)": summary_metrics(yt, calibrated_probabilities(ens_tta, temperature)),
        f"+ logit adjustment (tau {tau}) = served": summary_metrics(yt, final_probs),
    }
    # the guard: the members of one family (one 1280 x 1280 Cholesky factor per member is 6.5 MB, so
    # guarding with every member of several families would break the model-size budget)
    guard_family = choose_guard(served)
    guard_idx = [i for i, d in enumerate(dirs) if d in guard_family.dirs]
    guard_test_logits = test_logits[guard_idx, 0].mean(0)  # the same members score the OOD set
    ood = fit_ood([dirs[i] for i in guard_idx], [configs[i] for i in guard_idx], guard_idx, guard_test_logits, out) \
        if with_ood else None
    ood_flag = np.array(ood["test_scores"]) > 1.0 if ood else None
    choices = {
        "members": [portable_path(d) for d in dirs],
        "member_weights": member_w.tolist(),
        "families": [{"dir": portable_path(f.root), "weight": w, "members": len(f.dirs), "folds": f.configs[0].folds,
                      "fold_seed": f.configs[0].fold_seed} for f, w in zip(fams, fam_w)],
        "views": [list(VIEWS[v]) for v in views], "view_indices": list(views),
        "gmacs_per_image": rows[n_views]["gmacs_per_image"],
        "prior": prior.tolist(), "tau": tau, "temperature": temperature,
        "referral": referral, "ood_members": guard_idx if ood else [],
        "ood": {k: v for k, v in (ood or {}).items() if k not in ("per_image", "test_scores")},
    }
    test_final = classification_metrics(yt, final_probs, CLASS_CODES)
    mal = is_malignant(yt, CLASS_CODES)
    refer = referral_decisions(referral, final_probs)
    sens, spec = sensitivity_specificity(refer, mal)
    test_referral = {"sensitivity": sens, "specificity": spec, "malignant": int(mal.sum()),
                     "benign": int((~mal).sum())}
    if ood_flag is not None:
        # as the service answers with its default policy (flag) and the manifest's OOD threshold: it also
        # refers every OOD-flagged image (the threshold was chosen without that reason)
        s_sens, s_spec = sensitivity_specificity(refer | ood_flag, mal)
        extra = ood_flag & ~refer
        test_referral["served"] = {"sensitivity": s_sens, "specificity": s_spec,
                                   "ood_referred_malignant": int((extra & mal).sum()),
                                   "ood_referred_benign": int((extra & ~mal).sum())}
    report = {
        "choices": choices,
        # one CV table per family (each family is its own k-fold split; their folds are not comparable)
        "cv": {"families": cv_families},
        "oof": {"n": len(y), "weights_views_grid": choice_grid, "budget_gmacs_per_image": MAX_GMACS_PER_IMAGE,
                "view_sets_balanced_accuracy": {str(k): v for k, v in view_scores.items()},
                "tau_grid": tau_grid, "ablation": ablation_oof},
        "test": {"n": len(yt), "metrics": test_final, "referral": test_referral,
                 "ablation": ablation_test, "members": members_single,
                 "confidence_intervals": test_confidence_intervals(yt, final_probs, lesions, refer,
                                                                   ood_flag, n_resamples)},
        "ood": ood,
        "training_wall_time_seconds": {
            f"{d.parent.name}/{d.name}": json.loads((d / "member.json").read_text())["wall_time_seconds"]["total"]
            for f in fams for d in f.dirs},
        "analysis_seconds": round(time.perf_counter() - t0, 1),
    }
    report["training_wall_time_seconds"]["all_members"] = round(sum(report["training_wall_time_seconds"].values()), 1)
    (out / "choices.json").write_text(json.dumps(choices, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    from trainer.ensemble_report import write_markdown

    write_markdown(report, out / "REPORT.md")
    return report


def main(members: list[Path] = [MEMBERS_DIR], out: Path = ENSEMBLE_DIR,  # noqa: B006 (typer reads the default)
         target_sensitivity: float = TARGET_SENSITIVITY, no_ood: bool = False, resamples: int = 1000) -> None:
    """Choose on OOF, score test once, write choices.json + report.json + REPORT.md. ``--members`` may be
    given once per family."""
    analyse(members, out, target_sensitivity, not no_ood, resamples)


if __name__ == "__main__":
    import typer

    typer.run(main)
