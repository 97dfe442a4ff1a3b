"""``python -m trainer.study``: cheap, measured comparisons that guide the default config.

Full fine-tuning costs ~4-5 min per epoch on 2 cores, so comparing every option end to end does
not fit the time budget. This study uses a proxy: frozen ImageNet MobileNetV2 features (one
forward pass per image and resolution), then a linear softmax head trained on them per option.
It compares

- input resolution (square side in pixels), and
- class-imbalance handling: none, sqrt class weights, full class weights, and post-hoc logit
  adjustment (Menon et al., ICLR 2021) of the unweighted head,

by **validation** balanced accuracy and accuracy (the test split is not touched).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer

from trainer.config import TrainConfig

app = typer.Typer(add_completion=False, help=__doc__)


def _features(backbone_fn, images: np.ndarray, batch: int = 64) -> np.ndarray:
    out = [np.asarray(backbone_fn(images[i:i + batch].astype(np.float32))) for i in range(0, len(images), batch)]
    return np.concatenate(out)


def _train_head(x, y, xv, yv, weights: dict | None, epochs: int, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    head = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(7)])
    head.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    head.fit(x, y, batch_size=64, epochs=epochs, class_weight=weights, verbose=0)
    return np.asarray(head.predict(xv, verbose=0))


@app.command()
def main(
    sizes: str = typer.Option("128,160,192,224", help="square input sides to compare, pixels"),
    epochs: int = typer.Option(30, help="epochs of head training on cached features"),
    output: Path = typer.Option(Path("runs/study.json")),
) -> None:
    """Run the study and write a JSON table (val metrics per resolution x imbalance option)."""
    import keras
    from sklearn.metrics import balanced_accuracy_score

    from service.preprocessing import PreprocessSpec
    from trainer.data import class_weights, load_split, read_labels, select_rows

    cfg = TrainConfig()
    rows = read_labels(cfg.data_dir)
    results = []
    for size in [int(s) for s in sizes.split(",")]:
        spec = PreprocessSpec(height=size, width=size)
        tr = load_split(cfg.data_dir, select_rows(rows, "train", None, 0), spec, cfg.cache_dir, cfg.workers)
        va = load_split(cfg.data_dir, select_rows(rows, "val", None, 0), spec, cfg.cache_dir, cfg.workers)
        base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=cfg.alpha, include_top=False,
                                              pooling="avg", weights=str(cfg.weights))
        fn = lambda b: base(b / 127.5 - 1.0, training=False)  # noqa: E731
        t0 = time.perf_counter()
        ftr, fva = _features(fn, tr.images), _features(fn, va.images)
        sec = time.perf_counter() - t0
        prior = np.bincount(tr.labels, minlength=7) / len(tr.labels)
        for mode in ("none", "sqrt_class_weight", "class_weight"):
            logits = _train_head(ftr, tr.labels, fva, va.labels, class_weights(tr.labels, 7, mode), epochs, cfg.seed)
            variants = {mode: logits}
            if mode == "none":
                variants["logit_adjustment_tau1"] = logits - np.log(prior)
            for name, lg in variants.items():
                row = {"size": size, "imbalance": name,
                       "val_balanced_accuracy": float(balanced_accuracy_score(va.labels, lg.argmax(1))),
                       "val_accuracy": float((lg.argmax(1) == va.labels).mean()),
                       "feature_seconds_per_1000_images": round(1000 * sec / (len(ftr) + len(fva)), 1)}
                results.append(row)
                print(json.dumps(row), flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    app()
