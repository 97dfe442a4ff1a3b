"""Background decoding yields to interactive requests (no HTTP, no model): job images are decoded
only while no ``/predict`` request is in flight, with a bounded wait so jobs still progress."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from service.batching import DynamicBatcher
from service.dataplane import DataPlane, EncodedImage
from service.preprocessing import PreprocessSpec
from service.runtime import load_manifest

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _dataplane(pool: ThreadPoolExecutor) -> DataPlane:
    spec = PreprocessSpec(height=32, width=32)
    batcher = DynamicBatcher(lambda b: np.zeros((len(b), 7), np.float32), max_batch_size=4)
    return DataPlane(load_manifest(MODEL_DIR), spec, "CPUExecutionProvider", batcher, pool)


def test_background_decode_waits_for_interactive_requests_to_finish():
    async def body():
        with ThreadPoolExecutor(1) as pool:
            dp = _dataplane(pool)
            images = [EncodedImage(data=_jpeg(i), id=f"i{i}") for i in range(3)]
            assert await dp.wait_interactive_idle(0.01)  # nothing in flight
            with dp.interactive():
                task = asyncio.ensure_future(dp.decode_all(images, yield_to_interactive_s=30.0))
                await asyncio.sleep(0.2)
                assert not task.done(), "job decoding ran while an interactive request was in flight"
            arrays = await asyncio.wait_for(task, 30)
            assert len(arrays) == 3 and arrays[0].shape == (32, 32, 3)

    asyncio.run(body())


def test_background_decode_still_progresses_under_sustained_interactive_load():
    """The wait per image is bounded: with a request permanently in flight, 3 images still decode."""
    async def body():
        with ThreadPoolExecutor(1) as pool:
            dp = _dataplane(pool)
            images = [EncodedImage(data=_jpeg(i), id=f"i{i}") for i in range(3)]
            with dp.interactive():
                assert not await dp.wait_interactive_idle(0.01)
                arrays = await asyncio.wait_for(dp.decode_all(images, yield_to_interactive_s=0.02), 30)
            assert len(arrays) == 3

    asyncio.run(body())


def test_idle_fast_path_decodes_a_lone_small_image_without_the_pool():
    """inline_decode_max_bytes: a lone small image with nothing else in flight skips the thread
    pool; a second image, a bigger one, or the option off all use the pool."""
    class CountingPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *a, **kw):
            CountingPool.submitted += 1
            return super().submit(*a, **kw)

    async def body():
        with CountingPool(1) as pool:
            dp = _dataplane(pool)
            small = EncodedImage(data=_jpeg(1), id="a")
            dp.inline_decode_max_bytes = 0
            await dp.decode_all([small])
            assert CountingPool.submitted == 1
            dp.inline_decode_max_bytes = 1 << 20
            out = await dp.decode_all([small])
            assert CountingPool.submitted == 1 and out[0].shape == (32, 32, 3)
            await dp.decode_all([small, small])
            assert CountingPool.submitted == 3
            dp.inline_decode_max_bytes = 100
            await dp.decode_all([small])
            assert CountingPool.submitted == 4

    asyncio.run(body())
