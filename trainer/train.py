"""The training run: data -> head training -> fine-tuning -> best checkpoint -> calibration -> report."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np

from service.preprocessing import PreprocessSpec
from trainer.config import TrainConfig
from trainer.data import CLASS_CODES, class_weights, load_split, make_dataset, read_labels, select_rows
from trainer.metrics import calibrated_probabilities, classification_metrics, fit_temperature
from trainer.model import build_model

log = logging.getLogger(__name__)


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow/Keras (``keras.utils.set_random_seed``)."""
    import keras

    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def predict_logits(model, split, batch_size: int) -> np.ndarray:
    """Logits ``float32 (N, K)`` for a split (no augmentation)."""
    ds = make_dataset(split, batch_size, training=False, augment=False, seed=0)
    return np.asarray(model.predict(ds, verbose=0), dtype=np.float32)


class BalancedAccuracyCheckpoint:
    """Keras callback factory: val balanced accuracy each epoch, best weights kept, early stop.

    Balanced accuracy (mean per-class recall) is the ISIC 2018 Task 3 ranking metric, so it is
    the model-selection metric here (on the validation split, never on test). Each history row also
    records ``val_loss``: the unweighted cross-entropy (nats per image) of the same held-out logits.
    """

    def __new__(cls, val_split, batch_size: int, patience: int, history: list[dict]):
        import keras
        from scipy.special import softmax
        from sklearn.metrics import balanced_accuracy_score, log_loss

        class _Callback(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.best = -1.0
                self.best_weights = None
                self.best_epoch = -1
                self.wait = 0
                self.phase = "head"
                self.epoch_start = 0.0

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch_start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logits = predict_logits(self.model, val_split, batch_size)
                bacc = float(balanced_accuracy_score(val_split.labels, logits.argmax(1)))
                acc = float((logits.argmax(1) == val_split.labels).mean())
                # unweighted cross-entropy of the held-out logits (the training loss is class-weighted)
                val_loss = float(log_loss(val_split.labels, softmax(logits, axis=1), labels=range(logits.shape[1])))
                row = {"phase": self.phase, "epoch": len(history) + 1, "loss": float(logs.get("loss", np.nan)),
                       "train_accuracy": float(logs.get("accuracy", np.nan)),
                       "val_loss": val_loss,
                       "val_accuracy": acc, "val_balanced_accuracy": bacc,
                       "seconds": round(time.perf_counter() - self.epoch_start, 1)}
                history.append(row)
                improved = bacc > self.best
                if improved:
                    self.best, self.best_weights, self.best_epoch, self.wait = bacc, self.model.get_weights(), row["epoch"], 0
                else:
                    self.wait += 1
                print(f"[{self.phase}] epoch {row['epoch']}: loss {row['loss']:.4f} val_loss {row['val_loss']:.4f} "
                      f"val_acc {acc:.4f} val_bal_acc {bacc:.4f}{' *best*' if improved else ''} ({row['seconds']} s)",
                      flush=True)
                if self.phase == "finetune" and self.wait >= patience:
                    print(f"early stopping: no val balanced-accuracy gain for {patience} epochs", flush=True)
                    self.model.stop_training = True

        return _Callback()


def freeze_backbone_prefix(backbone, n_blocks: int) -> int:
    """Freeze the stem and the inverted-residual (MBConv) blocks ``0 .. n_blocks-1`` of Keras'
    MobileNetV2 or of :func:`trainer.efficientnet_lite.build_backbone` (both have 17 / 16 such blocks).

    Layers are frozen in graph order up to the first layer of block ``n_blocks`` (MobileNetV2:
    ``block_{n}_expand``, block 0 being Keras' ``expanded_conv``; EfficientNet-Lite0:
    ``block{n}_expand_conv``). Frozen BatchNorm layers run in inference mode. Gradients then stop
    above the frozen prefix, which on CPU skips the costly high-resolution depthwise backward passes
    (see ``TrainConfig.freeze_blocks`` for timings).

    Returns:
        The number of layers frozen (0 when ``n_blocks`` is 0).

    Raises:
        ValueError: ``n_blocks`` outside 0..16 or no such block in ``backbone``.
    """
    if n_blocks == 0:
        return 0
    if not 1 <= n_blocks <= 16:
        raise ValueError(f"n_blocks must be in 0..16, got {n_blocks}")
    names = [layer.name for layer in backbone.layers]
    candidates = (f"block_{n_blocks}_expand", f"block{n_blocks}_expand_conv")
    stop = next((c for c in candidates if c in names), None)
    if stop is None:
        raise ValueError(f"backbone has none of the layers {candidates}; is it MobileNetV2 or EfficientNet-Lite0?")
    frozen = 0
    for layer in backbone.layers:
        if layer.name == stop:
            break
        layer.trainable = False
        frozen += 1
    return frozen


def prepare_finetune(backbone, cfg: TrainConfig) -> None:
    """Unfreeze ``backbone`` for fine-tuning: all layers trainable except the frozen prefix
    (``cfg.freeze_blocks``); BatchNorm frozen (``cfg.freeze_batchnorm``) or trained with
    ``cfg.batchnorm_momentum``."""
    import keras

    backbone.trainable = True
    freeze_backbone_prefix(backbone, cfg.freeze_blocks)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if cfg.freeze_batchnorm:
                layer.trainable = False
            else:
                layer.momentum = cfg.batchnorm_momentum


def finetune_schedule(cfg: TrainConfig, n_train: int, decay_epochs: int | None = None, final_ratio: float = 0.01):
    """Cosine learning-rate decay with a linear warm-up of ``cfg.warmup_epochs`` from ``finetune_lr / 10`` to
    ``finetune_lr`` (Loshchilov & Hutter, SGDR, 2017).

    The decay spans ``decay_epochs`` (default: all ``cfg.finetune_epochs``) and ends at
    ``final_ratio * finetune_lr``, where the rate then stays (the constant tail of stochastic weight
    averaging, :mod:`trainer.swa`)."""
    import keras

    steps = max(1, int(np.ceil(n_train / cfg.batch_size)))
    warmup = int(cfg.warmup_epochs * steps)
    epochs = cfg.finetune_epochs if decay_epochs is None else decay_epochs
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.finetune_lr / 10 if warmup else cfg.finetune_lr,
        decay_steps=max(steps * max(epochs, 1) - warmup, 1), alpha=final_ratio,
        warmup_target=cfg.finetune_lr if warmup else None, warmup_steps=warmup)


def run(cfg: TrainConfig) -> dict:
    """Train, select, calibrate and evaluate one model; write everything to ``cfg.output_dir``.

    Writes ``model.keras`` (logits output), ``config.json``, ``history.json``, ``metrics.json``
    (test split, before and after calibration, plus the validation figures), ``calibration.json``,
    ``logits.npz`` (val/test logits and labels) and the report (see :mod:`trainer.report`).

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    import keras
    import tensorflow as tf

    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    set_seeds(cfg.seed)
    tf.config.threading.set_inter_op_parallelism_threads(cfg.workers)

    spec = PreprocessSpec(height=cfg.image_size, width=cfg.image_size, resize_method=cfg.resize_method)
    rows = read_labels(Path(cfg.data_dir))
    splits = {}
    for name in ("train", "val", "test"):
        chosen = select_rows(rows, name, cfg.limit_per_split, cfg.seed)
        splits[name] = load_split(Path(cfg.data_dir), chosen, spec, cfg.cache_dir, cfg.workers)
        print(f"{name}: {len(chosen)} images, class counts "
              f"{dict(zip(CLASS_CODES, np.bincount(splits[name].labels, minlength=7).tolist()))}", flush=True)
    t_data = time.perf_counter() - t0

    model, backbone = build_model(cfg.arch, cfg.image_size, len(CLASS_CODES), cfg.alpha,
                                  cfg.weights if cfg.arch != "simple_cnn" else None, cfg.dropout)
    cw = class_weights(splits["train"].labels, len(CLASS_CODES), cfg.imbalance)
    train_ds = make_dataset(splits["train"], cfg.batch_size, True, cfg.augment, cfg.seed)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing)
    onehot = lambda ds: ds.map(lambda x, y: (x, tf.one_hot(y, len(CLASS_CODES))))
    history: list[dict] = []
    cb = BalancedAccuracyCheckpoint(splits["val"], cfg.batch_size, cfg.early_stopping_patience, history)

    if backbone is not None and cfg.head_epochs > 0:
        backbone.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(cfg.head_lr), loss=loss, metrics=["accuracy"])
        cb.phase = "head"
        model.fit(onehot(train_ds), epochs=cfg.head_epochs,
                  class_weight=cw, callbacks=[cb], verbose=0)
    if backbone is not None:
        prepare_finetune(backbone, cfg)
    schedule = finetune_schedule(cfg, len(splits["train"].labels))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=["accuracy"])
    cb.phase = "finetune"
    cb.wait = 0
    if cfg.finetune_epochs > 0:
        model.fit(onehot(train_ds), epochs=cfg.finetune_epochs,
                  class_weight=cw, callbacks=[cb], verbose=0)
    if cb.best_weights is not None:
        model.set_weights(cb.best_weights)
    print(f"best epoch {cb.best_epoch} (val balanced accuracy {cb.best:.4f})", flush=True)
    t_train = time.perf_counter() - t0 - t_data

    model.save(out / "model.keras")
    val_logits = predict_logits(model, splits["val"], cfg.batch_size)
    test_logits = predict_logits(model, splits["test"], cfg.batch_size)
    temperature = fit_temperature(val_logits, splits["val"].labels)
    np.savez_compressed(out / "logits.npz", val_logits=val_logits, val_labels=splits["val"].labels,
                        test_logits=test_logits, test_labels=splits["test"].labels,
                        test_ids=np.array(splits["test"].image_ids))
    metrics = {
        "split": "test",
        "dataset": str(cfg.data_dir),
        "temperature": temperature,
        "best_epoch": cb.best_epoch,
        "val": classification_metrics(splits["val"].labels, calibrated_probabilities(val_logits, temperature), CLASS_CODES),
        "test_uncalibrated": classification_metrics(splits["test"].labels, calibrated_probabilities(test_logits, 1.0), CLASS_CODES),
        "test": classification_metrics(splits["test"].labels, calibrated_probabilities(test_logits, temperature), CLASS_CODES),
        "wall_time_seconds": {"data": round(t_data, 1), "train": round(t_train, 1)},
        "logit_adjustment_on_val": _logit_adjustment_study(val_logits, splits["val"].labels, splits["train"].labels),
    }
    metrics["wall_time_seconds"]["total"] = round(time.perf_counter() - t0, 1)
    (out / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": temperature, "fitted_on": "val"}, indent=2))
    (out / "history.json").write_text(json.dumps(history, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    from trainer.report import write_report

    write_report(out, cfg, metrics, history, splits["test"], test_logits, temperature)
    # "total" (in the report) ends before the report was drawn; this one includes it (plots, gallery)
    metrics["wall_time_seconds"]["total_with_report"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: metrics["test"][k] for k in ("accuracy", "balanced_accuracy", "ece_15")}
                     | {"wall_time_s": metrics["wall_time_seconds"]["total_with_report"]}), flush=True)
    return metrics


def _logit_adjustment_study(val_logits: np.ndarray, val_labels: np.ndarray, train_labels: np.ndarray) -> dict:
    """Val balanced accuracy after post-hoc logit adjustment ``logits - tau * log(prior)``.

    Menon et al., 'Long-tail learning via logit adjustment', ICLR 2021. Reported for the
    imbalance comparison only; the exported model does not use it.
    """
    from sklearn.metrics import balanced_accuracy_score

    prior = np.bincount(train_labels, minlength=val_logits.shape[1]) / len(train_labels)
    out = {}
    for tau in (0.0, 0.5, 1.0):
        adj = val_logits - tau * np.log(np.maximum(prior, 1e-12))
        out[f"tau_{tau}"] = {"balanced_accuracy": float(balanced_accuracy_score(val_labels, adj.argmax(1))),
                             "accuracy": float((adj.argmax(1) == val_labels).mean())}
    return out
