"""Where a training epoch goes: ``python -m trainer.timing`` (writes ``trainer/results/timing.json``).

Measures, in one process on the same cached 160 px train images, MobileNetV2 alpha 0.5, batch 32, all
layers trainable (ms per step, median of ``--steps`` after warm-up):

1. ``train_step_fixed_batch``: ``model.train_on_batch`` on one fixed batch (the learning itself);
2. ``pipeline_old_only`` / ``pipeline_new_only``: iterating the input pipeline alone
   (``trainer.data.make_dataset`` with per-image hue/saturation and Keras' rotation/zoom layers, vs
   :func:`trainer.cv.train_dataset` with :mod:`trainer.augment`);
3. ``fit_old`` / ``fit_new``: ``model.fit`` for ``--steps`` steps with each pipeline (what an epoch pays).

Run it on a quiet machine (no training job beside it): both need the two cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def _per_step(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def main(steps: int = 20, out: Path = Path("trainer/results/timing.json")) -> dict:
    """Run the measurements above and write them as JSON (ms per step)."""
    import keras
    import tensorflow as tf

    from trainer.cv import MemberConfig, fold_splits, train_dataset
    from trainer.data import make_dataset
    from trainer.model import build_model

    cfg = MemberConfig(fold=0)
    train, _, _ = fold_splits(cfg)
    model, _ = build_model("mobilenetv2", cfg.image_size, 7, cfg.alpha, cfg.weights, cfg.dropout)
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    x = train.images[:32].astype(np.float32)
    y = np.eye(7, dtype=np.float32)[train.labels[:32]]
    res = {"batch_size": 32, "image_size": cfg.image_size, "steps": steps}
    res["train_step_fixed_batch"] = _per_step(lambda: model.train_on_batch(x, y), steps)

    old = make_dataset(train, 32, True, True, 0).map(lambda a, b: (a, tf.one_hot(b, 7))).repeat()
    new = train_dataset(train, cfg, 0, 7).repeat()  # batch 32, augmented (defaults)
    for name, ds in (("old", old), ("new", new)):
        res[f"pipeline_{name}_only"] = _per_step(iter(ds).__next__, steps)
    for name, ds in (("old", old), ("new", new)):
        model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # warm-up / trace
        t = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        res[f"fit_{name}"] = (time.perf_counter() - t) / steps * 1000
    res = {k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
