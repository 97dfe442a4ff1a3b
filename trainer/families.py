"""Committed cross-validation members, grouped in families, with their out-of-fold predictions aligned.

A **family** is one complete lesion-grouped k-fold set of members of one recipe (architecture, input
size, epochs), e.g. ``trainer/results/cv`` (4 MobileNetV2 alpha 0.5 folds, 14 epochs) or ``trainer/results/cv_b``
(3 folds of another assignment, 8 epochs). Every pool image is held out by exactly one member of each family, so the
families' out-of-fold (OOF) logits can be averaged image by image: that average is an honest OOF
prediction of a cross-family ensemble (no model in it saw the image), which is what lets
:mod:`trainer.ensemble` weigh families against each other on OOF data, never on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.cv import MEMBERS_DIR, MemberConfig, member_config


@dataclass
class Members:
    """One family's members and their predictions.

    Attributes:
        root: the family's folder (``<root>/fold<i>/``).
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

    root: Path
    dirs: list[Path]
    configs: list[MemberConfig]
    oof_logits: np.ndarray
    oof_labels: np.ndarray
    oof_fold: np.ndarray
    oof_ids: list[str]
    test_logits: np.ndarray
    test_labels: np.ndarray
    test_ids: list[str]

    @property
    def name(self) -> str:
        """The family's folder name (``cv``, ``cv_b``)."""
        return self.root.name

    def reorder(self, ids: list[str]) -> Members:
        """The same family with its OOF rows in the order of ``ids``.

        Raises:
            ValueError: ``ids`` is not exactly this family's pool.
        """
        pos = {i: n for n, i in enumerate(self.oof_ids)}
        if len(ids) != len(pos) or set(ids) != set(pos):
            raise ValueError(f"family {self.name} holds out a different pool of images")
        idx = np.array([pos[i] for i in ids])
        return Members(self.root, self.dirs, self.configs, self.oof_logits[:, idx], self.oof_labels[idx],
                       self.oof_fold[idx], list(ids), self.test_logits, self.test_labels, self.test_ids)


def load_members(root: Path = MEMBERS_DIR) -> Members:
    """Read every ``root/fold*/`` with a ``member.json`` (one family).

    Raises:
        FileNotFoundError: no member under ``root``.
        ValueError: members disagree on the test images.
    """
    dirs = sorted(p.parent for p in Path(root).glob("fold*/member.json"))
    if not dirs:
        raise FileNotFoundError(f"no members (fold*/member.json) under {root}")
    configs, oof, test = [], [], []
    for d in dirs:
        configs.append(member_config(d))
        oof.append(dict(np.load(d / "oof.npz")))
        test.append(dict(np.load(d / "test.npz")))
    if any(list(t["image_ids"]) != list(test[0]["image_ids"]) for t in test):
        raise ValueError("members were scored on different test images")
    return Members(
        root=Path(root), dirs=dirs, configs=configs,
        oof_logits=np.concatenate([o["logits"] for o in oof], axis=1),
        oof_labels=np.concatenate([o["labels"] for o in oof]),
        oof_fold=np.concatenate([np.full(len(o["labels"]), c.fold) for o, c in zip(oof, configs)]),
        oof_ids=[str(i) for o in oof for i in o["image_ids"]],
        test_logits=np.stack([t["logits"] for t in test]),
        test_labels=test[0]["labels"], test_ids=[str(i) for i in test[0]["image_ids"]],
    )


def load_families(roots: list[Path]) -> list[Members]:
    """Load each family and align their OOF rows on the first family's order.

    Raises:
        FileNotFoundError: a family has no member.
        ValueError: two families share a folder name (reports key families by it), families differ in input size or resize method (one ONNX input serves them all), in
            the pool they hold out, or in the test images.
    """
    fams = [load_members(r) for r in roots]
    names = [f.name for f in fams]
    if len(set(names)) != len(names):
        raise ValueError(f"family folder names must differ (reports key families by them): {names}")
    first = fams[0]
    for f in fams[1:]:
        a, b = first.configs[0], f.configs[0]
        if (a.image_size, a.resize_method) != (b.image_size, b.resize_method):
            raise ValueError(f"family {f.name} takes {b.image_size} px ({b.resize_method}), "
                             f"{first.name} {a.image_size} px ({a.resize_method}): one served input cannot feed both")
        if f.test_ids != first.test_ids:
            raise ValueError(f"family {f.name} was scored on different test images")
    return [first] + [f.reorder(first.oof_ids) for f in fams[1:]]


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass of one image through ``model`` (a Keras model; nested
    models are walked): ``Conv2D`` ``H_out*W_out*k_h*k_w*C_in*C_out``, ``DepthwiseConv2D``
    ``H_out*W_out*k_h*k_w*C``, ``Dense`` ``in*out``. Element-wise layers (BatchNorm, activations, adds,
    pooling) are left out, as in the MobileNet and EfficientNet papers' counts.
    """
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * kh * kw * c
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * kh * kw * layer.input.shape[-1] // layer.groups * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


def member_macs(cfg: MemberConfig) -> int:
    """:func:`count_macs` of a member's architecture (built without weights)."""
    from trainer.data import CLASS_CODES
    from trainer.model import build_model

    model, _ = build_model(cfg.arch, cfg.image_size, len(CLASS_CODES), cfg.alpha, None, cfg.dropout,
                           cfg.colour_constancy)
    return count_macs(model)
