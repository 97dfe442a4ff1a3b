"""Stochastic weight averaging (SWA) for cross-validation members: no epoch is chosen on held-out data.

Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018: run the
last epochs at a constant learning rate and average the weights visited, then recompute the BatchNorm
statistics for the averaged weights. Cha et al., "SWAD: Domain Generalization by Seeking Flat Minima",
NeurIPS 2021, average densely (every few steps) and report better accuracy under domain shift, which is the
failure this project sees on independent data.

Why here: a member that keeps its best epoch by held-out balanced accuracy makes its out-of-fold
predictions slightly optimistic (the held-out fold chose the epoch). An averaged member is fixed by its
recipe alone (epochs, averaging window), so its held-out predictions are honest.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class WeightAverage:
    """Keras callback factory: running mean of all weights every ``every_steps`` training steps from
    fine-tuning epoch ``start_epoch`` (0-based, within the ``fit`` call it is passed to) on.

    ``average()`` returns the mean as ``model.get_weights()``-ordered float32 arrays; BatchNorm moving
    statistics are averaged too, and :func:`recompute_batchnorm` should replace them afterwards.
    """

    def __new__(cls, start_epoch: int, every_steps: int):
        import keras

        class _Callback(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.start_epoch, self.every_steps = start_epoch, every_steps
                self.epoch = 0
                self.count = 0
                self.mean: list[np.ndarray] | None = None

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_end(self, batch, logs=None):
                if self.epoch >= self.start_epoch and (batch + 1) % self.every_steps == 0:
                    self.add(self.model.get_weights())

            def add(self, weights: list[np.ndarray]) -> None:
                self.count += 1
                if self.mean is None:
                    self.mean = [w.astype(np.float64) for w in weights]
                else:
                    for m, w in zip(self.mean, weights):
                        m += (w - m) / self.count

            def average(self) -> list[np.ndarray]:
                """The averaged weights (float32). Raises RuntimeError if nothing was averaged."""
                if self.mean is None:
                    raise RuntimeError("no weights were averaged: the averaging window never started")
                return [m.astype(np.float32) for m in self.mean]

        return _Callback()


def batchnorm_layers(layer) -> Iterator:
    """Every ``keras.layers.BatchNormalization`` inside ``layer`` (nested models included)."""
    import keras

    for sub in getattr(layer, "layers", []):
        if isinstance(sub, keras.layers.BatchNormalization):
            yield sub
        else:
            yield from batchnorm_layers(sub)


def recompute_batchnorm(model, images: np.ndarray, batch_size: int = 64, seed: int = 0) -> int:
    """Replace every trainable BatchNorm layer's moving mean and variance by the average of its batch statistics
    over ``images`` (one pass in a seeded random order, training mode), like PyTorch's
    ``torch.optim.swa_utils.update_bn`` (which averages the unbiased batch variance; Keras' is the biased one).

    The cumulative average comes from setting each layer's momentum to ``i / (i + 1)`` before batch ``i``.
    Frozen BatchNorm layers (``freeze_batchnorm``, a frozen prefix) are left alone: Keras does not update them
    in training mode, and their statistics never changed. Dropout is active during the pass but sits after
    global pooling, so the statistics do not see it.

    Args:
        model: a Keras model (logits output) whose weights were just averaged.
        images: ``(N, S, S, 3)`` in 0..255 (any numeric dtype): the member's training images, unaugmented.
        batch_size: images per forward pass; a last partial batch is left out (its statistics are noisier)
            unless it is the only one.
        seed: seed of the order in which images are batched.

    Returns:
        The number of BatchNorm layers updated (0 for a model without trainable BatchNorm).

    Raises:
        ValueError: ``images`` is empty (the statistics would become NaN).
    """
    import tensorflow as tf

    if len(images) == 0:
        raise ValueError("no images to recompute the BatchNorm statistics on")
    layers = [layer for layer in batchnorm_layers(model) if layer.trainable]
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    order = np.random.default_rng(seed).permutation(len(images))
    try:
        starts = range(0, max(len(images) - batch_size, 0) + 1, batch_size)
        for i, start in enumerate(starts):
            for layer in layers:
                layer.momentum = i / (i + 1)
            batch = images[np.sort(order[start:start + batch_size])]
            model(tf.convert_to_tensor(batch, tf.float32), training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return len(layers)
