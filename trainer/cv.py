"""One member of the lesion-grouped k-fold cross-validated ensemble (``python -m trainer.cv``).

A member is trained on k-1 folds of the train + val pool and validated on its held-out fold, which
chooses its best epoch (balanced accuracy, the ISIC 2018 Task 3 metric) -- or, with ``swa_epochs``, only
watches: the member is then the average of the weights of its last epochs (:mod:`trainer.swa`) and no choice
touches the held-out fold. It writes, small enough to commit as soon as it exists:

- ``weights.npz``: the model's weights in ``model.get_weights()`` order (``w0000``, ``w0001``, ...;
  ~2.7 MB compressed, against ~9 MB for a ``.keras`` file); :func:`load_member` rebuilds the Keras
  model (logits output, float32 ``(B, S, S, 3)`` in 0..255) from ``member.json`` + these weights;
- ``oof.npz``: held-out fold ``image_ids``, ``labels`` and ``logits`` ``float32 (8, N, 7)`` for the
  eight dihedral test-time views (:data:`VIEWS`);
- ``test.npz``: the same for the test split (reported, never used for a choice);
- ``history.json`` and ``member.json`` (config, fold, best epoch, timings).

Everything downstream (epoch, temperature, logit-adjustment tau, TTA views, OOD threshold) is chosen on
the out-of-fold predictions by :mod:`trainer.ensemble`; the test split stays untouched.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from service.preprocessing import PreprocessSpec
from trainer.config import REPO_ROOT, TrainConfig, local_config, portable_config
from trainer.data import CLASS_CODES, Split, class_weights, load_split, read_labels, select_rows
from trainer.folds import lesion_folds, pool_rows

#: The eight dihedral views (rotation k x 90 degrees counter-clockwise, then left-right flip) in the
#: order the logits are stored. View 0 is the identity.
VIEWS: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))

#: Where committed members live by default.
MEMBERS_DIR = REPO_ROOT / "trainer" / "results" / "cv"


class MemberConfig(TrainConfig):
    """A cross-validation member: a :class:`TrainConfig` plus which fold it holds out."""

    folds: int = Field(4, ge=2, description="k of the lesion-grouped k-fold split of train + val")
    fold: int = Field(0, ge=0, description="the held-out fold (0..folds-1)")
    fold_seed: int = Field(2026, description="seed of the fold assignment (same for every member)")
    finetune_epochs: int = 14
    early_stopping_patience: int = 5
    swa_epochs: int = Field(
        0, ge=0, description="stochastic weight averaging (trainer.swa): the last N fine-tuning epochs run at the "
        "constant rate swa_lr_ratio x finetune_lr and the member is the average of the weights visited (BatchNorm "
        "statistics recomputed); no early stopping and no epoch chosen on the held-out fold. 0 = off: the member "
        "keeps its best epoch by held-out balanced accuracy")
    swa_lr_ratio: float = Field(0.1, gt=0, le=1, description="SWA learning rate as a share of finetune_lr")
    swa_every_steps: int = Field(20, ge=1, description="SWA: average the weights every N training steps")

    @model_validator(mode="after")
    def _swa_window_fits(self) -> MemberConfig:
        if self.swa_epochs and self.swa_epochs + self.warmup_epochs >= self.finetune_epochs:
            raise ValueError(f"swa_epochs ({self.swa_epochs}) + warmup_epochs ({self.warmup_epochs}) must be below "
                             f"finetune_epochs ({self.finetune_epochs}): the decay comes between them")
        return self


def apply_view(images: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """One dihedral view of ``images`` (``(N, H, W, C)``, any dtype): ``rot90`` by ``k`` then a
    left-right flip; the same transform as :func:`trainer.augment.dihedral` and the ONNX TTA graph."""
    out = np.rot90(images, k, axes=(1, 2))
    if flip:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def view_logits(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits of every view in :data:`VIEWS`: ``float32 (8, N, K)``."""
    return np.stack([
        np.asarray(model.predict(apply_view(images, k, f).astype(np.float32), batch_size=batch_size, verbose=0),
                   dtype=np.float32)
        for k, f in VIEWS
    ])


def subset(split: Split, idx: np.ndarray) -> Split:
    """Rows ``idx`` of ``split``."""
    return Split(images=split.images[idx], labels=split.labels[idx],
                 image_ids=[split.image_ids[i] for i in idx], paths=[split.paths[i] for i in idx])


def fold_splits(cfg: MemberConfig) -> tuple[Split, Split, Split]:
    """``(train, held_out, test)`` of this member, decoded with the shared preprocessing (cached).

    Raises:
        ValueError: ``cfg.fold`` outside ``0..cfg.folds-1``.
    """
    if cfg.fold >= cfg.folds:
        raise ValueError(f"fold {cfg.fold} outside 0..{cfg.folds - 1}")
    spec = PreprocessSpec(height=cfg.image_size, width=cfg.image_size, resize_method=cfg.resize_method)
    rows = read_labels(Path(cfg.data_dir))
    pool = pool_rows(rows)
    if cfg.limit_per_split is not None:
        pool = select_rows([dict(r, split="pool") for r in pool], "pool", cfg.limit_per_split * 2, cfg.seed)
    fold = lesion_folds(pool, cfg.folds, cfg.fold_seed)
    data = load_split(Path(cfg.data_dir), pool, spec, cfg.cache_dir, cfg.workers)
    test = load_split(Path(cfg.data_dir), select_rows(rows, "test", cfg.limit_per_split, cfg.seed), spec,
                      cfg.cache_dir, cfg.workers)
    return subset(data, np.flatnonzero(fold != cfg.fold)), subset(data, np.flatnonzero(fold == cfg.fold)), test


def train_dataset(split: Split, cfg: TrainConfig, seed: int, n_classes: int):
    """Shuffled ``tf.data`` batches of ``(float32 (B, S, S, 3) in 0..255, float32 one-hot (B, K))``:
    ``cfg.batch_size`` per batch, augmented (:func:`trainer.augment.make_batch_augment`, strengths from
    ``cfg``) when ``cfg.augment``."""
    import tensorflow as tf

    from trainer.augment import make_batch_augment

    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    ds = ds.shuffle(len(split.labels), seed=seed, reshuffle_each_iteration=True).batch(cfg.batch_size)
    aug = make_batch_augment(seed, cfg.crop_min_area, cfg.aug_brightness, cfg.aug_contrast, cfg.aug_saturation,
                             cfg.aug_hue, cfg.aug_sharpness) if cfg.augment else None

    def prepare(step, xy):
        x, y = tf.cast(xy[0], tf.float32), tf.one_hot(xy[1], n_classes)
        return aug(step, x, y) if aug else (x, y)

    return ds.enumerate().map(prepare, num_parallel_calls=1).prefetch(2)


def run_member(cfg: MemberConfig) -> dict:
    """Train one member and write its files to ``cfg.output_dir`` (see the module docstring).

    Returns:
        The ``member.json`` dict.
    """
    import keras

    from trainer.model import build_model
    from trainer.swa import WeightAverage, recompute_batchnorm
    from trainer.train import BalancedAccuracyCheckpoint, finetune_schedule, prepare_finetune, set_seeds

    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seeds(cfg.seed + cfg.fold)
    train, held, test = fold_splits(cfg)
    print(f"fold {cfg.fold}/{cfg.folds}: train {len(train.labels)}, held-out {len(held.labels)}, "
          f"test {len(test.labels)} images", flush=True)
    t_data = time.perf_counter() - t0

    n_classes = len(CLASS_CODES)
    model, backbone = build_model(cfg.arch, cfg.image_size, n_classes, cfg.alpha,
                                  cfg.weights if cfg.arch != "simple_cnn" else None, cfg.dropout,
                                  cfg.colour_constancy)
    cw = class_weights(train.labels, n_classes, cfg.imbalance)
    ds = train_dataset(train, cfg, cfg.seed + cfg.fold, n_classes)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing)
    history: list[dict] = []
    swa = cfg.swa_epochs > 0
    # with SWA the held-out fold is only watched (history), never used to stop or to choose
    patience = cfg.finetune_epochs + 1 if swa else cfg.early_stopping_patience
    cb = BalancedAccuracyCheckpoint(held, 64, patience, history)
    if backbone is not None and cfg.head_epochs > 0:
        backbone.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(cfg.head_lr), loss=loss, metrics=["accuracy"])
        cb.phase = "head"
        model.fit(ds, epochs=cfg.head_epochs, class_weight=cw, callbacks=[cb], verbose=0)
    if backbone is not None:
        prepare_finetune(backbone, cfg)
    if swa:
        schedule = finetune_schedule(cfg, len(train.labels), cfg.finetune_epochs - cfg.swa_epochs, cfg.swa_lr_ratio)
    else:
        schedule = finetune_schedule(cfg, len(train.labels))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=["accuracy"])
    cb.phase, cb.wait = "finetune", 0
    averager = WeightAverage(cfg.finetune_epochs - cfg.swa_epochs, cfg.swa_every_steps) if swa else None
    if cfg.finetune_epochs > 0:
        model.fit(ds, epochs=cfg.finetune_epochs, class_weight=cw, callbacks=[cb] + ([averager] if swa else []),
                  verbose=0)
    from sklearn.metrics import balanced_accuracy_score

    extra = {}
    if swa:
        extra["held_out_balanced_accuracy_last_epoch"] = history[-1]["val_balanced_accuracy"]
        model.set_weights(averager.average())
        recompute_batchnorm(model, train.images, seed=cfg.seed + cfg.fold)
        extra["swa_snapshots"] = averager.count
        print(f"SWA: {averager.count} snapshots over the last {cfg.swa_epochs} epochs averaged; "
              "BatchNorm statistics recomputed", flush=True)
    elif cb.best_weights is not None:
        model.set_weights(cb.best_weights)
        print(f"best epoch {cb.best_epoch} (held-out balanced accuracy {cb.best:.4f})", flush=True)
    t_train = time.perf_counter() - t0 - t_data

    save_weights(model, out / "weights.npz")
    oof = view_logits(model, held.images)
    np.savez_compressed(out / "oof.npz", image_ids=np.array(held.image_ids), labels=held.labels, logits=oof)
    np.savez_compressed(out / "test.npz", image_ids=np.array(test.image_ids), labels=test.labels,
                        logits=view_logits(model, test.images))
    info = {
        "fold": cfg.fold, "folds": cfg.folds, "fold_seed": cfg.fold_seed,
        "n_train": len(train.labels), "n_held_out": len(held.labels),
        # None: the weights are an average (SWA), no epoch was chosen
        "best_epoch": None if swa else cb.best_epoch,
        "held_out_balanced_accuracy": float(balanced_accuracy_score(held.labels, oof[0].argmax(1))),
        "held_out_balanced_accuracy_tta8": float(balanced_accuracy_score(held.labels, oof.mean(0).argmax(1))),
        **extra,
        "wall_time_seconds": {"data": round(t_data, 1), "train": round(t_train, 1),
                              "total": round(time.perf_counter() - t0, 1)},
        "config": portable_config(json.loads(cfg.model_dump_json())),
    }
    (out / "history.json").write_text(json.dumps(history, indent=2))
    (out / "member.json").write_text(json.dumps(info, indent=2))
    print(json.dumps({k: info[k] for k in ("fold", "best_epoch", "held_out_balanced_accuracy",
                                           "held_out_balanced_accuracy_tta8", "wall_time_seconds")}), flush=True)
    return info


def save_weights(model, path: Path) -> None:
    """Write ``model.get_weights()`` (float32 arrays, in order) to a compressed ``.npz``."""
    np.savez_compressed(path, **{f"w{i:04d}": w for i, w in enumerate(model.get_weights())})


def member_config(member_dir: Path) -> MemberConfig:
    """The :class:`MemberConfig` recorded in ``member_dir/member.json``, its paths made local
    (:func:`trainer.config.local_config`: ``../shared/...`` honours ``DERMSERVE_DATA_DIR`` /
    ``DERMSERVE_WEIGHTS_DIR``, other relative paths are relative to the repository root).

    Raises:
        FileNotFoundError: no ``member.json``.
        KeyError: ``member.json`` has no ``config``.
        pydantic.ValidationError: the recorded config is not a valid :class:`MemberConfig`.
    """
    return MemberConfig(**local_config(json.loads((Path(member_dir) / "member.json").read_text())["config"]))


def load_member(member_dir: Path):
    """Rebuild a member's Keras model (logits output) from ``member.json`` + ``weights.npz``.

    Raises:
        FileNotFoundError: either file is missing.
        ValueError: the weights do not fit the architecture in the config.
    """
    from trainer.model import build_model

    member_dir = Path(member_dir)
    cfg = member_config(member_dir)
    model, _ = build_model(cfg.arch, cfg.image_size, len(CLASS_CODES), cfg.alpha, None, cfg.dropout,
                           cfg.colour_constancy)
    with np.load(member_dir / "weights.npz") as z:
        weights = [z[k] for k in sorted(z.files)]
    model.set_weights(weights)
    return model


def main() -> None:
    """CLI: ``python -m trainer.cv --fold I [--folds K] [--output-dir DIR] [TrainConfig flags as --key value]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--folds", type=int, default=MemberConfig.model_fields["folds"].default)
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="default: trainer/results/cv/fold<I> (committed)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="any MemberConfig field, e.g. --set finetune_epochs=2 image_size=64 limit_per_split=40")
    args = parser.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    out = args.output_dir or MEMBERS_DIR / f"fold{args.fold}"
    cfg = MemberConfig(fold=args.fold, folds=args.folds, output_dir=out, **overrides)
    run_member(cfg)


if __name__ == "__main__":
    main()
