"""Evaluation metrics the field uses for HAM10000 / ISIC 2018 Task 3, computed with scikit-learn.

Inputs everywhere: ``y_true`` int ``(N,)`` class indices, ``probs`` float ``(N, K)`` rows summing to 1.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from schemas.manifest import MALIGNANT_CLASSES
from service.runtime import softmax_with_temperature


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width confidence bins.

    ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)| (Guo et al., ICML 2017; 15 bins as there).
    """
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T > 0 minimising the negative log-likelihood of softmax(logits / T).

    Temperature scaling (Guo et al., ICML 2017); fit on the validation split only.
    Searched over log T in [-3, 3] with bounded Brent minimisation.
    """
    def nll(log_t: float) -> float:
        lp = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-lp[np.arange(len(y_true)), y_true].mean())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x))


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) along axis 1, float32 ``(N, K)``: the service's own function
    (:func:`service.runtime.softmax_with_temperature`), so reports and served answers agree."""
    return softmax_with_temperature(logits, temperature)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_codes: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class P/R/F1/support, macro one-vs-rest ROC-AUC,
    melanoma sensitivity/specificity, malignant-vs-benign ROC-AUC and top-label ECE (15 bins).

    Balanced accuracy = mean per-class recall (the ISIC 2018 Task 3 ranking metric).
    """
    k = len(class_codes)
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(k)), zero_division=0
    )
    present = np.unique(y_true)
    out: dict = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "per_class": {
            code: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, code in enumerate(class_codes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist(),
        "ece_15": expected_calibration_error(y_true, probs, 15),
        "nll": float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1)).mean()),
    }
    if len(present) == k:
        out["macro_roc_auc_ovr"] = float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
    if "mel" in class_codes:
        m = class_codes.index("mel")
        is_mel = y_true == m
        pred_mel = y_pred == m
        out["melanoma_sensitivity"] = float((pred_mel & is_mel).sum() / max(is_mel.sum(), 1))
        out["melanoma_specificity"] = float((~pred_mel & ~is_mel).sum() / max((~is_mel).sum(), 1))
    mal_idx = [class_codes.index(c) for c in MALIGNANT_CLASSES if c in class_codes]
    is_mal = np.isin(y_true, mal_idx)
    if 0 < is_mal.sum() < len(y_true):
        out["malignant_vs_benign_roc_auc"] = float(roc_auc_score(is_mal, probs[:, mal_idx].sum(axis=1)))
    return out


def malignant_probability(probs: np.ndarray, class_codes: list[str]) -> np.ndarray:
    """P(mel) + P(bcc) + P(akiec) per row: float ``(N,)`` (the service's ``malignant_probability``)."""
    idx = [class_codes.index(c) for c in MALIGNANT_CLASSES if c in class_codes]
    return probs[:, idx].sum(axis=1)


def is_malignant(y_true: np.ndarray, class_codes: list[str]) -> np.ndarray:
    """bool ``(N,)``: the true class is one of :data:`schemas.manifest.MALIGNANT_CLASSES`."""
    return np.isin(y_true, [class_codes.index(c) for c in MALIGNANT_CLASSES if c in class_codes])


def threshold_for_sensitivity(scores: np.ndarray, positive: np.ndarray, target: float) -> float:
    """The highest threshold ``t`` with sensitivity ``mean(scores[positive] >= t) >= target``.

    Args:
        scores: float ``(N,)``, higher = more likely positive.
        positive: bool ``(N,)``.
        target: wanted sensitivity in (0, 1].

    Raises:
        ValueError: no positives.
    """
    pos = np.sort(scores[positive])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive examples to choose a threshold on")
    need = int(np.ceil(target * len(pos)))  # the need-th highest positive score keeps `need` positives
    return float(pos[max(need, 1) - 1])


def sensitivity_specificity(flag: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(sensitivity, specificity) of a bool decision ``flag`` against bool truth ``positive``."""
    sens = float((flag & positive).sum() / max(positive.sum(), 1))
    spec = float((~flag & ~positive).sum() / max((~positive).sum(), 1))
    return sens, spec


def bootstrap_ci(statistic, groups: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Percentile bootstrap confidence interval resampling whole groups (lesions) with replacement.

    Images of one lesion are correlated, so the resampling unit is the lesion (``lesion_id``), not the
    image (cluster bootstrap; Field & Welsh, "Bootstrapping clustered data", JRSS-B 2007).

    Args:
        statistic: ``f(idx int (M,)) -> float`` computing the metric on the rows ``idx``; may return
            NaN when a resample lacks a class (such resamples are dropped and counted).
        groups: ``(N,)`` group key of each row.
        n_resamples: bootstrap resamples (>= 1000 for a 95 % interval).
        seed: NumPy seed.
        level: coverage of the interval.

    Returns:
        ``{"estimate", "low", "high", "level", "resamples", "dropped"}``; ``estimate`` is on all rows.
    """
    keys, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(keys))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(keys), len(keys))
        v = statistic(np.concatenate([members[g] for g in pick]))
        if np.isfinite(v):
            values.append(v)
    alpha = (1 - level) / 2
    return {"estimate": float(statistic(np.arange(len(groups)))),
            "low": float(np.quantile(values, alpha)) if values else float("nan"),
            "high": float(np.quantile(values, 1 - alpha)) if values else float("nan"),
            "level": level, "resamples": n_resamples, "dropped": n_resamples - len(values)}
