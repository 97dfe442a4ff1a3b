"""Model outputs beyond the probabilities (service.outputs): the batcher splits every per-image array
of a ModelOutput back to its request (the seam for an extra graph output such as an OOD score)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import BatchPolicy, DynamicBatcher, InferenceError
from service.outputs import ModelOutput


def test_extra_model_outputs_are_split_back_per_request():
    """A run_batch returning a ModelOutput: every request gets its own rows of the probabilities and
    of each extra output, also when its images spanned several batches."""
    def model(batch: np.ndarray) -> ModelOutput:
        markers = batch[:, 0, 0, 0].astype(np.float32)
        probs = np.stack([markers, np.full_like(markers, len(batch))], axis=1)
        return ModelOutput(probs, {"ood_score": markers / 100})

    def img(m: int) -> np.ndarray:
        return np.full((2, 2, 3), m, np.uint8)

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=3, max_delay_s=0.001))
        b.start()
        outs = await asyncio.gather(b.submit([img(1), img(2)]), b.submit([img(10 + i) for i in range(5)]))
        await b.close(5)
        return outs

    small, big = asyncio.run(body())
    assert isinstance(small, ModelOutput) and isinstance(big, ModelOutput)
    np.testing.assert_array_equal(small.probabilities[:, 0], [1, 2])
    np.testing.assert_allclose(small.extras["ood_score"], [0.01, 0.02])
    np.testing.assert_array_equal(big.probabilities[:, 0], [10, 11, 12, 13, 14])
    np.testing.assert_allclose(big.extras["ood_score"], [0.10, 0.11, 0.12, 0.13, 0.14])
    assert big.image(3).extras == {"ood_score": pytest.approx(0.13)}


def test_a_wrongly_shaped_extra_output_is_an_inference_error():
    async def body():
        b = DynamicBatcher(lambda x: ModelOutput(np.zeros((len(x), 2), np.float32), {"ood": np.zeros(len(x) + 1)}))
        b.start()
        try:
            with pytest.raises(InferenceError):
                await b.submit([np.zeros((2, 2, 3), np.uint8)])
        finally:
            await b.close(5)

    asyncio.run(body())


def test_memory_arena_setting_reaches_onnxruntime_and_changes_no_answer(model_dir):
    """``DERMSERVE_ORT_CPU_MEM_ARENA`` reaches the served session's ``enable_cpu_mem_arena`` through the service's
    own start-up path (:func:`service.components.load_model`); on or off, the same batch gets the same outputs
    (it changes where intermediate tensors live, not the arithmetic)."""
    import numpy as np

    from service.components import load_model
    from service.settings import Settings

    runs = {}
    for arena in ("true", "false"):
        settings = Settings(_env_file=None, model_dir=model_dir, ort_cpu_mem_arena=arena, max_batch_size=2)
        rt = asyncio.run(load_model(settings))
        assert rt.session.get_session_options().enable_cpu_mem_arena is (arena == "true")
        spec = rt.spec
        x = np.random.default_rng(0).integers(0, 256, (3, spec.height, spec.width, 3), dtype=np.uint8)
        runs[arena] = rt.predict(x)
    assert np.allclose(runs["true"].probabilities, runs["false"].probabilities, atol=1e-6)
