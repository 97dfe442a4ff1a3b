"""The dynamic batcher alone: no HTTP. Fake models where control is needed, the real runtime
where the answer must be right. No timed performance assertions: time bounds are generous and
only check behaviour (a delay was or was not applied)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import (
    BatcherClosed,
    BatcherObserver,
    BatchPolicy,
    DeadlineExceeded,
    DynamicBatcher,
    InferenceError,
    QueueFullError,
    QueueLimits,
)
from service.preprocessing import preprocess_file

TIMEOUT = 30.0  # seconds: upper bound for any single test body (a hang is a failure)


def run(coro):
    """Run an async test body with an overall timeout."""
    async def bounded():
        return await asyncio.wait_for(coro, TIMEOUT)
    return asyncio.run(bounded())


def img(marker: int) -> np.ndarray:
    """A tiny (4, 4, 3) uint8 image whose every pixel is ``marker`` (0..255)."""
    return np.full((4, 4, 3), marker, dtype=np.uint8)


class FakeModel:
    """``run_batch`` double: output row = [marker, batch size]; can block, sleep, or fail.

    ``gate``: when not set, each call waits for it (the test releases it). ``poison``: a marker
    that makes the whole batch raise. ``batches``: the markers of every batch that ran.
    """

    def __init__(self, sleep_s: float = 0.0, blocking: bool = False, poison: int | None = None) -> None:
        self.sleep_s = sleep_s
        self.gate = threading.Event()
        if not blocking:
            self.gate.set()
        self.poison = poison
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.uint8 and batch.ndim == 4
        markers = [int(x) for x in batch[:, 0, 0, 0]]
        with self.lock:
            self.batches.append(markers)
        self.started.set()
        assert self.gate.wait(TIMEOUT)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.poison is not None and self.poison in markers:
            raise RuntimeError("poisoned batch")
        out = np.zeros((len(markers), 2), dtype=np.float32)
        out[:, 0] = markers
        out[:, 1] = len(markers)
        return out

    def ran(self) -> list[int]:
        return [m for b in self.batches for m in b]


async def wait_started(model: FakeModel) -> None:
    """Wait (without blocking the loop) until the fake model has been entered once."""
    while not model.started.is_set():
        await asyncio.sleep(0.005)


class Recorder(BatcherObserver):
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.refused_images = 0
        self.expired_images = 0
        self.depths: list[int] = []

    def batch_done(self, size, seconds, ok):
        self.sizes.append(size)

    def refused(self, images, reason):
        self.refused_images += images

    def expired(self, images):
        self.expired_images += images

    def queue_depth(self, images):
        self.depths.append(images)


# ------------------------------------------------------------------ correctness with the real model
def test_results_never_cross_callers_real_model(runtime, test_images):
    """Many concurrent callers with distinct real images (1-3 per request) each get exactly
    their own answers, equal to single-image inference through the same runtime."""
    paths = test_images(24)
    arrays = [preprocess_file(str(p), runtime.spec) for p in paths]
    # logits (not T-scaled probabilities) so that different images differ clearly
    reference = np.stack([runtime.run_logits(a[None])[0] for a in arrays])
    dist = np.abs(reference[:, None, :] - reference[None, :, :]).max(-1) + np.eye(len(arrays)) * 1e9
    assert dist.min() > 1e-3, "test images must give distinguishable outputs for this check to mean anything"

    groups, i = [], 0
    for size in [1, 2, 3, 1, 1, 2, 3, 1, 2, 1, 3, 1, 2, 1]:
        groups.append(list(range(i, min(i + size, len(arrays)))))
        i += size
    groups = [g for g in groups if g]
    rec = Recorder()

    async def body():
        b = DynamicBatcher(runtime.run_logits, BatchPolicy(max_batch_size=8, max_delay_s=0.005),
                           QueueLimits(max_images=64), observer=rec)
        b.start()
        results = await asyncio.gather(*(b.submit([arrays[j] for j in g]) for g in groups))
        await b.close(5)
        return results

    results = run(body())
    for g, out in zip(groups, results):
        assert out.shape == (len(g), reference.shape[1])
        np.testing.assert_allclose(out, reference[g], atol=1e-4, rtol=1e-4)
        assert list(out.argmax(1)) == list(reference[g].argmax(1))
    assert sum(rec.sizes) == len(arrays)
    assert max(rec.sizes) > 1, f"expected batches to form under concurrency, saw sizes {rec.sizes}"


def test_batches_form_and_rows_route_back():
    """With a slowish model and 40 concurrent single-image callers, batches > 1 form and every
    caller's row carries its own marker."""
    model = FakeModel(sleep_s=0.03)
    rec = Recorder()

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=8, max_delay_s=0.01),
                           QueueLimits(max_images=64), observer=rec)
        b.start()
        outs = await asyncio.gather(*(b.submit([img(m)]) for m in range(40)))
        await b.close(5)
        return outs

    outs = run(body())
    assert [int(o[0, 0]) for o in outs] == list(range(40))
    assert max(rec.sizes) > 1, rec.sizes
    assert max(rec.sizes) <= 8
    assert sorted(model.ran()) == list(range(40))


def test_multi_image_request_spans_batches_in_order():
    model = FakeModel()
    rec = Recorder()

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=3, max_delay_s=0.001), observer=rec)
        b.start()
        out = await b.submit(np.stack([img(m) for m in range(10, 18)]))
        await b.close(5)
        return out

    out = run(body())
    assert [int(x) for x in out[:, 0]] == list(range(10, 18))
    assert len(rec.sizes) >= 3 and max(rec.sizes) <= 3


# ------------------------------------------------------------------ the delay bound
def test_lone_request_is_not_delayed():
    """An idle batcher runs a lone image at once, even with a 3 s batch window."""
    model = FakeModel()

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=32, max_delay_s=3))
        b.start()
        times = []
        for m in (1, 2):  # idle again before the second
            t0 = time.monotonic()
            await b.submit([img(m)])
            times.append(time.monotonic() - t0)
        await b.close(5)
        return times

    times = run(body())
    assert max(times) < 1.5, f"a lone request waited {times} s; the 3 s window must not apply when idle"


def test_partial_batch_closes_after_max_batch_delay():
    """Busy path: an image queued behind a running batch waits at most ~max_batch_delay_ms
    (counted from its arrival) for company, then runs as a partial batch."""
    model = FakeModel(blocking=True)
    rec = Recorder()

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=16, max_delay_s=0.4), observer=rec)
        b.start()
        first = asyncio.create_task(b.submit([img(1)]))
        await wait_started(model)
        t0 = time.monotonic()
        second = asyncio.create_task(b.submit([img(2)]))
        await asyncio.sleep(0.02)
        model.gate.set()  # the first batch ends right away; the second image is ~20 ms old
        await first
        out = await second
        elapsed = time.monotonic() - t0
        await b.close(5)
        return out, elapsed

    out, elapsed = run(body())
    assert int(out[0, 0]) == 2
    assert rec.sizes == [1, 1], rec.sizes  # the partial batch closed without reaching 16
    assert elapsed >= 0.3, f"the batch window was not applied on the busy path ({elapsed:.3f} s)"
    assert elapsed < 10, "a partial batch must close after max_batch_delay_ms"


def test_full_batch_closes_before_the_delay():
    model = FakeModel(blocking=True)
    rec = Recorder()

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=4, max_delay_s=5), observer=rec)
        b.start()
        first = asyncio.create_task(b.submit([img(1)]))
        await wait_started(model)
        t0 = time.monotonic()
        rest = [asyncio.create_task(b.submit([img(m)])) for m in (2, 3, 4, 5)]
        await asyncio.sleep(0.02)
        model.gate.set()
        await first
        await asyncio.gather(*rest)
        elapsed = time.monotonic() - t0
        await b.close(5)
        return elapsed

    elapsed = run(body())
    assert rec.sizes == [1, 4], rec.sizes
    assert elapsed < 3.0, f"a full batch must not wait for the 5 s window ({elapsed:.2f} s)"


# ------------------------------------------------------------------ admission, deadlines, cancellation
def test_queue_full_refuses_whole_request_atomically():
    model = FakeModel(blocking=True)
    rec = Recorder()

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=8, max_delay_s=0.001),
                           QueueLimits(max_images=4), observer=rec)
        b.start()
        running = asyncio.create_task(b.submit([img(1)]))
        await wait_started(model)  # image 1 is inside the model, not in the queue
        queued = asyncio.create_task(b.submit([img(m) for m in (2, 3, 4)]))
        await asyncio.sleep(0.01)
        assert b.queue_depth == 3
        with pytest.raises(QueueFullError) as ei:
            await b.submit([img(5), img(6)])  # 3 + 2 > 4: refused whole
        assert ei.value.retry_after_s >= 1
        assert b.queue_depth == 3, "a refused request must not be half-enqueued"
        fits = asyncio.create_task(b.submit([img(7)]))  # 3 + 1 <= 4
        await asyncio.sleep(0.01)
        model.gate.set()
        outs = await asyncio.gather(running, queued, fits)
        await b.close(5)
        return outs

    outs = run(body())
    assert [int(x) for x in outs[1][:, 0]] == [2, 3, 4]
    assert int(outs[2][0, 0]) == 7
    assert 5 not in model.ran() and 6 not in model.ran()
    assert rec.refused_images == 2


def test_deadline_drops_unstarted_images():
    model = FakeModel(blocking=True)
    rec = Recorder()

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=8, max_delay_s=0.001), request_timeout_s=10, observer=rec)
        b.start()
        running = asyncio.create_task(b.submit([img(1)]))
        await wait_started(model)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await b.submit([img(2), img(3)], timeout_s=0.15)
        waited = time.monotonic() - t0
        assert b.queue_depth == 0, "expired images must leave the queue"
        model.gate.set()
        await running
        ok = await b.submit([img(4)])  # the batcher still serves
        await b.close(5)
        return waited, ok

    waited, ok = run(body())
    assert waited < 5
    assert int(ok[0, 0]) == 4
    assert 2 not in model.ran() and 3 not in model.ran()
    assert rec.expired_images == 2


def test_cancelled_caller_has_unstarted_images_removed():
    model = FakeModel(blocking=True)

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=8, max_delay_s=0.001))
        b.start()
        running = asyncio.create_task(b.submit([img(1)]))
        await wait_started(model)
        victim = asyncio.create_task(b.submit([img(m) for m in (2, 3, 4)]))
        await asyncio.sleep(0.01)
        assert b.queue_depth == 3
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert b.queue_depth == 0
        survivor = asyncio.create_task(b.submit([img(5)]))
        await asyncio.sleep(0.01)
        model.gate.set()
        await running
        out = await survivor
        await b.close(5)
        return out, b.stats.cancelled_images

    out, cancelled = run(body())
    assert int(out[0, 0]) == 5
    assert cancelled == 3
    assert not {2, 3, 4} & set(model.ran())


def test_failing_batch_fails_only_its_callers_and_batcher_keeps_serving():
    model = FakeModel(blocking=True, poison=13)

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=2, max_delay_s=0.001))
        b.start()
        first = asyncio.create_task(b.submit([img(1)]))
        await wait_started(model)
        # queued behind the running batch, in order: [13, 20] form the poisoned batch, [21, 22] the next
        tasks = [asyncio.create_task(b.submit([img(m)])) for m in (13, 20, 21, 22)]
        await asyncio.sleep(0.01)
        model.gate.set()
        results = await asyncio.gather(first, *tasks, return_exceptions=True)
        after = await b.submit([img(30), img(31)])
        running = b.running
        await b.close(5)
        return results, after, running, b.stats.failed_batches

    results, after, running, failed = run(body())
    assert int(results[0][0, 0]) == 1
    assert isinstance(results[1], InferenceError) and isinstance(results[2], InferenceError)
    assert int(results[3][0, 0]) == 21 and int(results[4][0, 0]) == 22
    assert [int(x) for x in after[:, 0]] == [30, 31]
    assert running and failed == 1


def test_wrong_output_shape_is_an_inference_error():
    async def body():
        b = DynamicBatcher(lambda x: np.zeros((x.shape[0] + 1, 7), np.float32), BatchPolicy(max_batch_size=4))
        b.start()
        with pytest.raises(InferenceError):
            await b.submit([img(1)])
        await b.close(5)

    run(body())


def test_drain_finishes_accepted_work_and_refuses_new():
    model = FakeModel(blocking=True)

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=4, max_delay_s=1))
        b.start()
        a = asyncio.create_task(b.submit([img(1)]))
        await wait_started(model)
        q = asyncio.create_task(b.submit([img(2), img(3)]))
        await asyncio.sleep(0.01)
        drain = asyncio.create_task(b.drain(10))
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosed):
            await b.submit([img(4)])
        model.gate.set()
        drained = await drain
        outs = await asyncio.gather(a, q)
        await b.close(1)
        return drained, outs

    drained, outs = run(body())
    assert drained is True
    assert [int(x) for x in outs[1][:, 0]] == [2, 3]
    assert 4 not in model.ran()


def test_submit_validates_input():
    async def body():
        b = DynamicBatcher(FakeModel(), item_shape=(4, 4, 3))
        b.start()
        with pytest.raises(ValueError):
            await b.submit([])
        with pytest.raises(ValueError):
            await b.submit([np.zeros((5, 4, 3), np.uint8)])
        with pytest.raises(ValueError):
            await b.submit([np.zeros((4, 4, 3), np.float32)])
        await b.close(1)

    run(body())


def test_inline_when_idle_runs_a_lone_image_on_the_event_loop_thread():
    """inline_when_idle: the idle one-image batch runs in the loop's thread; off, in the worker."""
    seen: list[str] = []

    def model(batch):
        seen.append(threading.current_thread().name)
        return np.zeros((len(batch), 2), np.float32)

    async def body(inline: bool):
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=4), inline_when_idle=inline)
        b.start()
        await b.submit([img(1)])
        await b.close(5)

    run(body(True))
    run(body(False))
    assert seen[0] == threading.main_thread().name and seen[1].startswith("dermserve-infer"), seen
