"""Background decoding yields to interactive requests (no HTTP, no model): job images are decoded
only while no ``/predict`` request is in flight, with a bounded wait so jobs still progress; and the
idle fast path of interactive decoding."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from service.decoder import ImageDecoder
from service.inputs import EncodedImage
from service.preprocessing import PreprocessSpec
from service.traffic import InteractiveTraffic


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _decoder(pool: ThreadPoolExecutor, traffic: InteractiveTraffic, yield_wait_s: float | None = None,
             inline_max_bytes: int = 0) -> ImageDecoder:
    return ImageDecoder(PreprocessSpec(height=32, width=32), pool, traffic, yield_wait_s=yield_wait_s,
                        inline_max_bytes=inline_max_bytes)


def test_background_decode_waits_for_interactive_requests_to_finish():
    async def body():
        with ThreadPoolExecutor(1) as pool:
            traffic = InteractiveTraffic()
            decoder = _decoder(pool, traffic, yield_wait_s=30.0)
            images = [EncodedImage(data=_jpeg(i), id=f"i{i}") for i in range(3)]
            assert await traffic.wait_idle(0.01)  # nothing in flight
            with traffic.request():
                task = asyncio.ensure_future(decoder.decode(images))
                await asyncio.sleep(0.2)
                assert not task.done(), "job decoding ran while an interactive request was in flight"
            arrays = await asyncio.wait_for(task, 30)
            assert len(arrays) == 3 and arrays[0].pixels.shape == (32, 32, 3)

    asyncio.run(body())


def test_background_decode_still_progresses_under_sustained_interactive_load():
    """The wait per image is bounded: with a request permanently in flight, 3 images still decode."""
    async def body():
        with ThreadPoolExecutor(1) as pool:
            traffic = InteractiveTraffic()
            decoder = _decoder(pool, traffic, yield_wait_s=0.02)
            images = [EncodedImage(data=_jpeg(i), id=f"i{i}") for i in range(3)]
            with traffic.request():
                assert not await traffic.wait_idle(0.01)
                arrays = await asyncio.wait_for(decoder.decode(images), 30)
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
            dp = _decoder(pool, InteractiveTraffic())
            small = EncodedImage(data=_jpeg(1), id="a")
            dp.inline_max_bytes = 0
            await dp.decode([small])
            assert CountingPool.submitted == 1
            dp.inline_max_bytes = 1 << 20
            out = await dp.decode([small])
            assert CountingPool.submitted == 1 and out[0].pixels.shape == (32, 32, 3)
            await dp.decode([small, small])
            assert CountingPool.submitted == 3
            dp.inline_max_bytes = 100
            await dp.decode([small])
            assert CountingPool.submitted == 4

    asyncio.run(body())
