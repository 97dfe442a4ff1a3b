"""Stochastic weight averaging for cross-validation members (trainer.swa, trainer.cv's ``swa_epochs``).

The end-to-end path (a member trained with SWA, exported and served) runs in tests/test_cv_ensemble.py's tiny
ensemble; these tests check the averaging and the BatchNorm recomputation against NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_cv_ensemble import needs_tf


@needs_tf
def test_weight_average_is_the_running_mean_and_refuses_an_empty_window():
    from trainer.swa import WeightAverage

    avg = WeightAverage(start_epoch=0, every_steps=1)
    with pytest.raises(RuntimeError, match="never started"):
        avg.average()
    rng = np.random.default_rng(0)
    snapshots = [[rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
                 for _ in range(5)]
    for s in snapshots:
        avg.add(s)
    out = avg.average()
    assert avg.count == 5 and all(o.dtype == np.float32 for o in out)
    for i in range(2):
        np.testing.assert_allclose(out[i], np.mean([s[i] for s in snapshots], axis=0), rtol=1e-6, atol=1e-6)


@needs_tf
def test_weight_average_samples_every_n_steps_from_its_start_epoch():
    import keras

    from trainer.swa import WeightAverage

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = np.ones((8, 2), np.float32), np.zeros((8, 1), np.float32)
    avg = WeightAverage(start_epoch=1, every_steps=2)
    model.fit(x, y, batch_size=2, epochs=3, callbacks=[avg], verbose=0)   # 4 steps per epoch
    assert avg.count == 4   # epochs 1 and 2 (0-based), steps 2 and 4 of each


@needs_tf
def test_recompute_batchnorm_gives_the_mean_of_the_batch_statistics():
    """After the pass, moving mean = mean of the per-batch means and moving variance = mean of the per-batch
    (biased) variances, whatever the stale values were; batches follow the seeded order, a last partial batch is
    left out, the layers' momentum is restored and a frozen BatchNorm layer is neither counted nor changed."""
    import keras

    from trainer.swa import batchnorm_layers, recompute_batchnorm

    inner = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.9)])
    frozen = keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((3,)), inner, frozen, keras.layers.Dense(2)])
    frozen.trainable = False
    bn = next(batchnorm_layers(model))
    bn.moving_mean.assign(np.full(3, 50.0, np.float32))
    bn.moving_variance.assign(np.full(3, 9.0, np.float32))
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(70, 3)).astype(np.float32)
    assert recompute_batchnorm(model, x, batch_size=16, seed=5) == 1
    order = np.random.default_rng(5).permutation(70)
    batches = [x[np.sort(order[i:i + 16])] for i in range(0, 64, 16)]   # a last partial batch of 6 is left out
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), rtol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b.var(0) for b in batches], 0), rtol=1e-3)
    assert bn.momentum == 0.9
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.zeros(3))
    with pytest.raises(ValueError, match="no images"):
        recompute_batchnorm(model, x[:0])


def test_swa_window_must_leave_room_for_warmup_and_decay():
    from pydantic import ValidationError

    from trainer.cv import MemberConfig

    assert MemberConfig(finetune_epochs=14, swa_epochs=5).swa_epochs == 5
    assert MemberConfig(finetune_epochs=2, swa_epochs=1, warmup_epochs=0.5).swa_epochs == 1
    for bad in ({"finetune_epochs": 3, "swa_epochs": 3}, {"finetune_epochs": 3, "swa_epochs": 2, "warmup_epochs": 1}):
        with pytest.raises(ValidationError, match="swa_epochs"):
            MemberConfig(**bad)
