"""Lesion-grouped, class-stratified k-fold assignment over the train + val pool.

One lesion (``lesion_id``) never sits in two folds, so a fold's held-out predictions are on lesions
its model never saw. The test split is never part of the pool.
"""

from __future__ import annotations

import numpy as np

#: The splits of ``labels.csv`` that cross-validation draws from; ``test`` is kept apart.
POOL_SPLITS: tuple[str, ...] = ("train", "val")


def pool_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows of the cross-validation pool (train + val), in ``labels.csv`` order."""
    return [r for r in rows if r["split"] in POOL_SPLITS]


def lesion_folds(rows: list[dict[str, str]], k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of each row, grouped by lesion and stratified by label.

    Uses scikit-learn's ``StratifiedGroupKFold`` (shuffled with ``seed``): every lesion's images go
    to one fold, and each fold's class mix is as close to the pool's as grouping allows.

    Args:
        rows: ``labels.csv`` rows (need ``label`` and ``lesion_id``).
        k: number of folds, >= 2.
        seed: shuffling seed.

    Returns:
        ``int64 (len(rows),)`` fold of each row.

    Raises:
        ValueError: ``k < 2`` or fewer lesions than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    labels = np.array([r["label"] for r in rows])
    groups = np.array([r["lesion_id"] for r in rows])
    if len(set(groups)) < k:
        raise ValueError(f"{len(set(groups))} lesions cannot fill {k} folds")
    fold = np.full(len(rows), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, held) in enumerate(splitter.split(np.zeros(len(rows)), labels, groups)):
        fold[held] = i
    return fold
