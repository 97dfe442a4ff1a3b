"""Reading ``labels.csv`` + images into arrays, and the ``tf.data`` input pipeline.

Images are decoded once with the service's own preprocessing (``service.preprocessing``), so
training sees exactly what the service feeds the model, and cached as a uint8 array
(``N x H x W x 3``) on disk. Augmentation then runs on tensors in ``tf.data``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.manifest import HAM10000_CLASSES
from service.preprocessing import PreprocessSpec, preprocess_file

log = logging.getLogger(__name__)

CLASS_CODES: list[str] = list(HAM10000_CLASSES)


@dataclass
class Split:
    """One split in memory.

    Attributes:
        images: ``uint8`` array ``(N, H, W, 3)``, RGB, 0..255.
        labels: ``int64`` array ``(N,)`` of indices into :data:`CLASS_CODES`.
        image_ids: the ``image_id`` of each row.
        paths: the image file of each row.
    """

    images: np.ndarray
    labels: np.ndarray
    image_ids: list[str]
    paths: list[Path]


def read_labels(data_dir: Path) -> list[dict[str, str]]:
    """Rows of ``data_dir/labels.csv`` (columns image_id, filename, label, lesion_id, split, ...).

    Raises:
        FileNotFoundError: no ``labels.csv`` in ``data_dir``.
        ValueError: a label outside the seven HAM10000 codes, or a lesion in two splits.
    """
    with open(data_dir / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    lesion_split: dict[str, str] = {}
    for row in rows:
        if row["label"] not in HAM10000_CLASSES:
            raise ValueError(f"unknown label {row['label']!r} for {row['image_id']}")
        prev = lesion_split.setdefault(row["lesion_id"], row["split"])
        if prev != row["split"]:
            raise ValueError(f"lesion {row['lesion_id']} is in both {prev} and {row['split']}: split leaks")
    return rows


def split_rows(data_dir: Path, split: str = "test") -> list[dict[str, str]]:
    """The rows of one split of ``data_dir/labels.csv``, sorted by ``image_id`` (a deterministic order
    for tests and benchmarks; see :func:`read_labels` for the columns and the checks)."""
    return sorted((r for r in read_labels(Path(data_dir)) if r["split"] == split), key=lambda r: r["image_id"])


def select_rows(rows: list[dict[str, str]], split: str, limit: int | None, seed: int) -> list[dict[str, str]]:
    """Rows of one split; with ``limit``, a seeded class-stratified subset of at most ``limit`` rows."""
    chosen = [r for r in rows if r["split"] == split]
    if limit is None or len(chosen) <= limit:
        return chosen
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[dict[str, str]]] = {}
    for r in chosen:
        by_class.setdefault(r["label"], []).append(r)
    per_class = max(1, limit // len(by_class))
    subset: list[dict[str, str]] = []
    for code in sorted(by_class):
        group = by_class[code]
        idx = rng.permutation(len(group))[:per_class]
        subset.extend(group[i] for i in sorted(idx))
    return subset[:limit]


def load_split(
    data_dir: Path, rows: list[dict[str, str]], spec: PreprocessSpec, cache_dir: Path | None, workers: int
) -> Split:
    """Decode and resize the images of ``rows`` (threaded), using an on-disk ``.npy`` cache.

    The cache key hashes the image ids, the target size and the resize method, so a changed
    subset or size never reuses a stale cache.
    """
    paths = [data_dir / r["filename"] for r in rows]
    labels = np.array([CLASS_CODES.index(r["label"]) for r in rows], dtype=np.int64)
    ids = [r["image_id"] for r in rows]
    key = hashlib.sha256(
        ("|".join(ids) + f"|{spec.height}x{spec.width}|{spec.resize_method}").encode()
    ).hexdigest()[:16]
    cache = cache_dir / f"{key}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        images = np.load(cache)
        log.info("loaded %d cached images from %s", len(images), cache)
    else:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            images = np.stack(list(pool.map(lambda p: preprocess_file(str(p), spec), paths)))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, images)
    return Split(images=images, labels=labels, image_ids=ids, paths=paths)


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """Loss weights per class index.

    ``class_weight``: n / (k * n_c) (scikit-learn's "balanced" heuristic, King & Zeng 2001);
    ``sqrt_class_weight``: its square root (milder); ``none``: no weights.
    """
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(counts, 1))
    if mode == "sqrt_class_weight":
        weights = np.sqrt(weights)
    return {i: float(w) for i, w in enumerate(weights)}


def make_dataset(split: Split, batch_size: int, training: bool, augment: bool, seed: int):
    """A ``tf.data.Dataset`` of ``(float32 (B, H, W, 3) in 0..255, int64 (B,))`` batches.

    Training: shuffled each epoch; augmented (see :func:`augmenter`) in parallel; prefetched.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    if training:
        ds = ds.shuffle(len(split.labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment:
        per_image = _per_image_augment(seed)
        ds = ds.map(per_image, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    if training and augment:
        layers = augmenter(seed)
        ds = ds.map(lambda x, y: (tf.clip_by_value(layers(x, training=True), 0.0, 255.0), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _per_image_augment(seed: int):
    """Per-image ops whose random draw is one per tensor: 90-degree rotations and hue jitter."""
    import tensorflow as tf

    def fn(x, y):
        k = tf.random.uniform([], 0, 4, dtype=tf.int32)
        x = tf.image.rot90(x, k)
        x = tf.image.random_hue(x / 255.0, 0.04) * 255.0
        x = tf.image.random_saturation(x, 0.85, 1.15)
        return tf.clip_by_value(x, 0.0, 255.0), y

    return fn


def augmenter(seed: int):
    """Batch augmentation suited to dermoscopy (lesions have no canonical orientation).

    Flips (both axes), small rotations (+-18 deg), zoom/crop (-15..+10 %), brightness (+-10 %)
    and contrast (+-15 %). Reflect fill keeps skin texture at the borders. Input and output are
    float32 ``(B, H, W, 3)`` in 0..255.
    """
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom((-0.15, 0.1), fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomBrightness(0.1, value_range=(0.0, 255.0), seed=seed + 3),
            keras.layers.RandomContrast(0.15, seed=seed + 4),
        ],
        name="augment",
    )
