"""The evaluation report: PNG plots (matplotlib), an image gallery and a short model card."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from schemas.manifest import HAM10000_CLASSES  # noqa: E402
from trainer.data import CLASS_CODES  # noqa: E402
from trainer.metrics import calibrated_probabilities  # noqa: E402


def _confusion(ax, cm: np.ndarray, normalise: bool) -> None:
    data = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalise else cm
    ax.imshow(data, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            txt = f"{data[i, j]:.2f}" if normalise else str(int(data[i, j]))
            ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                    color="white" if data[i, j] > data.max() / 2 else "black")
    ax.set_xticks(range(len(CLASS_CODES)), CLASS_CODES, rotation=45)
    ax.set_yticks(range(len(CLASS_CODES)), CLASS_CODES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("row-normalised (recall on diagonal)" if normalise else "counts")


def _reliability(ax, y: np.ndarray, probs: np.ndarray, title: str, n_bins: int = 15) -> None:
    conf, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, n_bins + 1)
    accs, confs, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        accs.append(correct[m].mean() if m.any() else np.nan)
        confs.append(conf[m].mean() if m.any() else np.nan)
        counts.append(m.sum())
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.bar(edges[:-1], accs, width=1 / n_bins, align="edge", alpha=0.6, edgecolor="k", label="accuracy")
    ax.plot(confs, accs, "o-", ms=3, color="C3", label="mean confidence vs accuracy")
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)


def write_plots(out: Path, history: list[dict], y: np.ndarray, logits: np.ndarray, temperature: float,
                metrics: dict) -> list[str]:
    """Write training curves, confusion matrices, reliability diagrams and ROC curves (PNG)."""
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    ep = [h["epoch"] for h in history]
    axes[0].plot(ep, [h["loss"] for h in history], label="train loss")
    axes[0].plot(ep, [h["val_loss"] for h in history], label="val loss")
    axes[1].plot(ep, [h["train_accuracy"] for h in history], label="train accuracy (augmented)")
    axes[1].plot(ep, [h["val_accuracy"] for h in history], label="val accuracy")
    axes[1].plot(ep, [h["val_balanced_accuracy"] for h in history], label="val balanced accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)
    files.append("training_curves.png")

    cm = np.array(metrics["test"]["confusion_matrix"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    _confusion(axes[0], cm, False)
    _confusion(axes[1], cm, True)
    fig.suptitle("Confusion matrix, test split")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=110)
    plt.close(fig)
    files.append("confusion_matrix.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _reliability(axes[0], y, calibrated_probabilities(logits, 1.0),
                 f"uncalibrated (ECE {metrics['test_uncalibrated']['ece_15']:.3f})")
    _reliability(axes[1], y, calibrated_probabilities(logits, temperature),
                 f"temperature {temperature:.2f} (ECE {metrics['test']['ece_15']:.3f})")
    fig.tight_layout()
    fig.savefig(out / "reliability_diagram.png", dpi=110)
    plt.close(fig)
    files.append("reliability_diagram.png")

    probs = calibrated_probabilities(logits, temperature)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, code in enumerate(CLASS_CODES):
        if (y == i).any() and (y != i).any():
            fpr, tpr, _ = roc_curve(y == i, probs[:, i])
            ax.plot(fpr, tpr, lw=1.2, label=code)
    mal = np.isin(y, [CLASS_CODES.index(c) for c in ("mel", "bcc", "akiec")])
    if mal.any() and (~mal).any():
        fpr, tpr, _ = roc_curve(mal, probs[:, [CLASS_CODES.index(c) for c in ("mel", "bcc", "akiec")]].sum(1))
        ax.plot(fpr, tpr, "k--", lw=1.5, label="malignant vs benign")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC curves, test split (one-vs-rest)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roc_curves.png", dpi=110)
    plt.close(fig)
    files.append("roc_curves.png")
    return files


def write_gallery(out: Path, split, probs: np.ndarray, seed: int, per_class: int = 6) -> list[str]:
    """PNG grids of test images with true label, predicted label and calibrated confidence.

    ``gallery_samples.png``: a seeded random sample per true class.
    ``gallery_mistakes.png``: per true class, the most confident wrong predictions.
    """
    rng = np.random.default_rng(seed)
    pred, conf = probs.argmax(1), probs.max(1)
    files = []
    for name, pick in (
        ("gallery_samples.png", lambda idx: rng.permutation(idx)[:per_class]),
        ("gallery_mistakes.png", lambda idx: idx[pred[idx] != split.labels[idx]][
            np.argsort(-conf[idx[pred[idx] != split.labels[idx]]])][:per_class]),
    ):
        fig, axes = plt.subplots(len(CLASS_CODES), per_class, figsize=(per_class * 1.9, len(CLASS_CODES) * 2.1))
        for r, code in enumerate(CLASS_CODES):
            chosen = pick(np.flatnonzero(split.labels == r))
            for c in range(per_class):
                ax = axes[r, c]
                ax.axis("off")
                if c < len(chosen):
                    i = chosen[c]
                    ax.imshow(split.images[i])
                    ok = pred[i] == split.labels[i]
                    ax.set_title(f"true {code}\npred {CLASS_CODES[pred[i]]} {conf[i]:.2f}", fontsize=7,
                                 color="green" if ok else "red")
        fig.suptitle("Test images: random sample per class" if "samples" in name
                     else "Test images: most confident mistakes per true class", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        files.append(name)
    return files


def write_model_card(out: Path, cfg, metrics: dict, files: list[str]) -> None:
    """``MODEL_CARD.md``: intended use, data and license, metrics, known limits."""
    t, tu = metrics["test"], metrics["test_uncalibrated"]
    rows = "\n".join(
        f"| {c} | {HAM10000_CLASSES[c]} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for c, v in t["per_class"].items()
    )
    fmt = lambda k, d=t: f"{d[k]:.4f}" if k in d else "n/a"  # noqa: E731
    card = f"""# Model card: dermserve {cfg.arch} ({cfg.image_size}x{cfg.image_size})

## Intended use
Decision support for clinicians triaging dermoscopic images of pigmented skin lesions into the seven
HAM10000 classes. **Not a diagnosis.** Every output is a calibrated probability; uncertain or possibly
malignant lesions are flagged for referral. Not validated on clinical (non-dermoscopic) photos, on
non-pigmented lesions, or on skin types under-represented in HAM10000.

## Data and license
HAM10000 (Tschandl, Rosendahl & Kittler, *Sci. Data* 5, 180161, 2018, doi:10.1038/sdata.2018.161),
CC BY-NC 4.0 (non-commercial use only), 200x150 copies in `{cfg.data_dir}`; split by `lesion_id`
into train / val / test (no lesion in two splits). Model selection (best epoch by validation balanced
accuracy) and the calibration temperature use the **validation** split only; the test split was used
for no choice.

## Training
{cfg.arch}, alpha {cfg.alpha}, input {cfg.image_size}x{cfg.image_size} RGB, ImageNet weights
`{cfg.weights}`; head {cfg.head_epochs} epochs at lr {cfg.head_lr}, then full fine-tuning up to
{cfg.finetune_epochs} epochs (cosine lr from {cfg.finetune_lr}), imbalance handling `{cfg.imbalance}`,
augmentation {'on' if cfg.augment else 'off'}, seed {cfg.seed}. Best epoch {metrics['best_epoch']}.
Wall time {metrics['wall_time_seconds']['total'] / 60:.1f} min on this machine. Full config: `config.json`.

## Test-split metrics (n = {t['n']})
| metric | value |
|---|---|
| accuracy | {fmt('accuracy')} |
| balanced accuracy (mean recall) | {fmt('balanced_accuracy')} |
| macro one-vs-rest ROC-AUC | {fmt('macro_roc_auc_ovr')} |
| melanoma sensitivity / specificity | {fmt('melanoma_sensitivity')} / {fmt('melanoma_specificity')} |
| malignant-vs-benign ROC-AUC | {fmt('malignant_vs_benign_roc_auc')} |
| ECE (15 bins, top label), uncalibrated | {fmt('ece_15', tu)} |
| ECE after temperature scaling (T = {metrics['temperature']:.3f}) | {fmt('ece_15')} |

| code | class | precision | recall | F1 | support |
|---|---|---:|---:|---:|---:|
{rows}

Plots: {', '.join(f'[{f}]({f})' for f in files)}.

## Known limits
- One data source (HAM10000: two sites, Vienna and Queensland, mostly fair skin); performance on other
  devices, populations and clinical photos is unknown.
- Class imbalance: nv is 67 % of images; df and vasc have 16 and 20 test images, so their recall has
  wide confidence intervals.
- About half of the labels are histopathology-confirmed; the rest rest on follow-up or consensus.
- Low input resolution (200x150 sources resized to {cfg.image_size}x{cfg.image_size}).
"""
    (out / "MODEL_CARD.md").write_text(card)


def write_report(out: Path, cfg, metrics: dict, history: list[dict], test_split, test_logits: np.ndarray,
                 temperature: float) -> None:
    """Everything above, into ``out``."""
    files = write_plots(out, history, test_split.labels, test_logits, temperature, metrics)
    if cfg.gallery:
        files += write_gallery(out, test_split, calibrated_probabilities(test_logits, temperature), cfg.seed)
    write_model_card(out, cfg, metrics, files)
    (out / "report_files.json").write_text(json.dumps(files))
