"""Dynamic batching of single images into model calls (asyncio; no HTTP, no onnxruntime).

The unit is the *image*, not the request: a request with N images enqueues N items, which may be
spread over several model calls; the caller still gets its N result rows back in order.

Batch-closing policy (Triton-like, with an idle fast path that MLServer's adaptive batcher lacks):

- **idle fast path** -- when no batch is running and the queue was empty, the first work to arrive
  runs at once (everything that arrived in the same event-loop tick is taken with it). A lone
  request is never delayed by ``max_batch_delay_ms``.
- **busy** -- while a batch runs, new images queue up. When the worker is free again, the next
  batch closes as soon as it holds ``max_batch_size`` images or the *oldest* waiting image has
  waited ``max_batch_delay_ms`` (time spent behind the running batch counts), whichever is first.
- **bounded queue** -- at most ``max_queue_images`` images (and optionally ``max_queue_bytes``
  bytes of decoded pixels) wait; a request that does not fit is refused whole with
  :class:`QueueFullError` before any of its images is enqueued.
- **deadlines** -- images of a request not *started* within ``request_timeout_ms`` are dropped and
  the caller gets :class:`DeadlineExceeded`. Images already inside a running batch finish.
- **cancellation** -- if the awaiting caller is cancelled (e.g. the HTTP client disconnected), its
  not-yet-started images are removed from the queue.
- **failure isolation** -- if ``run_batch`` raises, only the requests with images in that batch get
  :class:`InferenceError`; the batcher logs it and keeps serving.
- **priority** -- ``submit(..., priority="background")`` (asynchronous jobs) puts images in a
  second queue of at most ``max_background_images``. A batch is filled from the interactive queue
  first; background images only take the slots left over, and no more than
  ``max_background_per_batch`` of them per batch. Background images never count against
  ``max_queue_images`` / ``max_queue_bytes``, so a big job cannot make ``/predict`` answer 503.
- **idle-time scheduling of background work** -- while interactive traffic is *active* (an
  interactive image is queued, or one arrived or was announced with :meth:`note_interactive`
  within the last ``busy_window_ms``), a batch takes at most ``max_background_per_batch_busy``
  background images (the service sets 1). An interactive request arriving behind a job-only batch
  then waits for a one-image model call (~3 ms here), not for a full job chunk; jobs go back to
  full chunks once traffic pauses. While background images wait, interactive images fill at most
  ``max_batch_size - 1`` slots, so jobs progress by at least one image per batch under any load.

The model runs in a single worker thread (one InferenceSession is never called concurrently), so
the event loop stays free for HTTP while a batch is computed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

#: ``run_batch(batch)``: ``batch`` uint8 ``(B, H, W, 3)`` -> float32 ``(B, K)``.
RunBatch = Callable[[np.ndarray], np.ndarray]

#: Priorities accepted by :meth:`DynamicBatcher.submit`.
INTERACTIVE = "interactive"
BACKGROUND = "background"


class BatcherError(Exception):
    """Base class of the batcher's errors."""


class QueueFullError(BatcherError):
    """The request's images do not fit in the bounded queue; nothing of it was enqueued.

    Attributes:
        retry_after_s: a rough estimate (whole seconds, >= 1) of when the queue will have room,
            from the current queue depth and the recent time per batch (HTTP ``Retry-After``).
    """

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(BatcherError):
    """Some images of the request were not started within its deadline (``request_timeout_ms``)."""


class InferenceError(BatcherError):
    """The model call for a batch holding images of this request failed (see the server log)."""


class BatcherClosed(BatcherError):
    """The batcher is draining or closed and accepts no new work."""


class BatcherObserver:
    """Hooks for metrics; every method is a no-op here. Called on the event loop thread.

    Subclass and override what you need (see :mod:`service.metrics`).
    """

    def queue_depth(self, images: int) -> None:
        """The number of images waiting (not yet started) changed to ``images``."""

    def batch_done(self, size: int, seconds: float, ok: bool) -> None:
        """A batch of ``size`` images took ``seconds`` (wall time of ``run_batch``, incl. stacking)."""

    def refused(self, images: int, reason: str) -> None:
        """``images`` images were refused at submit time (``reason``: ``queue_full`` or ``closed``)."""

    def expired(self, images: int) -> None:
        """``images`` unstarted images were dropped because their request's deadline passed."""


@dataclass
class BatcherStats:
    """Cumulative counters (for tests and debugging; metrics use :class:`BatcherObserver`)."""

    batches: int = 0
    images: int = 0
    failed_batches: int = 0
    refused_images: int = 0
    expired_images: int = 0
    cancelled_images: int = 0
    batch_sizes: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))


class _Request:
    """One caller's submission: N images, a future for the (N, K) result."""

    __slots__ = ("future", "n", "results", "remaining", "deadline", "unstarted")

    def __init__(self, future: asyncio.Future, n: int, deadline: float) -> None:
        self.future = future
        self.n = n
        self.results: np.ndarray | None = None
        self.remaining = n  # rows not yet filled
        self.deadline = deadline  # time.monotonic() seconds
        self.unstarted = n  # images still in the queue


class _Item:
    """One image in the queue."""

    __slots__ = ("req", "index", "array", "enqueued_at")

    def __init__(self, req: _Request, index: int, array: np.ndarray, enqueued_at: float) -> None:
        self.req = req
        self.index = index
        self.array = array
        self.enqueued_at = enqueued_at


class DynamicBatcher:
    """Groups images from concurrent callers into batches for one model.

    Args:
        run_batch: the model call, ``uint8 (B, H, W, 3) -> float32 (B, K)``; runs in the worker
            thread, never on the event loop. It must return exactly ``B`` rows.
        max_batch_size: images per model call at most (>= 1).
        max_batch_delay_ms: how long (ms) the oldest waiting image may wait for the batch to fill
            when the worker is busy; never applied when the batcher is idle.
        max_queue_images: images waiting (not yet started) at most; more -> :class:`QueueFullError`.
        max_queue_bytes: optional cap on the waiting images' decoded size in bytes.
        request_timeout_ms: default deadline per :meth:`submit` call (ms), counted from submit.
        item_shape: optional expected ``(H, W, 3)`` of every image; checked at submit.
        observer: metrics hooks.
        max_background_images: background-priority images waiting at most (default
            ``max_batch_size``); more -> :class:`QueueFullError` for the background caller.
        max_background_per_batch: background images per model call at most (default
            ``max_batch_size``); bounds how long one batch of job work can delay ``/predict``.
        max_background_per_batch_busy: background images per model call at most while
            interactive traffic is active (default None = ``max_background_per_batch``; >= 1).
        busy_window_ms: interactive traffic counts as active for this long (ms) after the last
            interactive submit or :meth:`note_interactive` call (default 1000).
        inline_when_idle: run a lone one-image batch that arrives when the batcher is idle on the
            event loop itself instead of the worker thread (saves a thread round trip; blocks the
            loop for one model call). Default False.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 32,
        max_batch_delay_ms: float = 2.0,
        max_queue_images: int = 256,
        max_queue_bytes: int | None = None,
        request_timeout_ms: float = 10_000.0,
        item_shape: tuple[int, ...] | None = None,
        observer: BatcherObserver | None = None,
        max_background_images: int | None = None,
        max_background_per_batch: int | None = None,
        max_background_per_batch_busy: int | None = None,
        busy_window_ms: float = 1000.0,
        inline_when_idle: bool = False,
    ) -> None:
        if max_batch_size < 1 or max_queue_images < 1:
            raise ValueError("max_batch_size and max_queue_images must be >= 1")
        if max_batch_delay_ms < 0 or request_timeout_ms <= 0:
            raise ValueError("max_batch_delay_ms must be >= 0 and request_timeout_ms > 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_ms / 1000.0
        self.max_queue_images = max_queue_images
        self.max_queue_bytes = max_queue_bytes
        self.request_timeout_s = request_timeout_ms / 1000.0
        self.item_shape = tuple(item_shape) if item_shape is not None else None
        self.observer = observer or BatcherObserver()
        self.stats = BatcherStats()

        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_bytes = 0
        # background priority (asynchronous jobs): its own bounded queue, never counted above
        self.max_background_images = max_background_images or max_batch_size
        self.max_background_per_batch = max(1, min(max_background_per_batch or max_batch_size, max_batch_size))
        self.max_background_per_batch_busy = max(1, min(max_background_per_batch_busy or self.max_background_per_batch,
                                                         self.max_background_per_batch))
        self.busy_window_s = max(0.0, busy_window_ms) / 1000.0
        self.inline_when_idle = inline_when_idle
        self._last_interactive = -math.inf  # time.monotonic() of the latest interactive activity
        self._bg_queue: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None  # set when nothing is queued or running
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False
        self._running_batch = False
        self._ewma_batch_s = 0.05  # seconds per batch, for Retry-After estimates

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the batching task and the worker thread (call from inside the running loop)."""
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dermserve-infer")
        self._accepting = True
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="dermserve-batcher")

    @property
    def running(self) -> bool:
        """True while the batching task is alive and accepting work."""
        return self._accepting and self._task is not None and not self._task.done()

    @property
    def idle(self) -> bool:
        """True when nothing is queued (interactive or background) and no batch is running."""
        return not self._queue and not self._bg_queue and not self._running_batch

    @property
    def queue_depth(self) -> int:
        """Interactive images waiting to be started (int)."""
        return len(self._queue)

    @property
    def background_depth(self) -> int:
        """Background-priority images waiting to be started (int)."""
        return len(self._bg_queue)

    def note_interactive(self) -> None:
        """Mark interactive traffic as active now (call when an interactive request starts, before
        its images are decoded), so background work shrinks to its busy share at once."""
        self._last_interactive = time.monotonic()

    @property
    def interactive_active(self) -> bool:
        """True while interactive images wait or one arrived within ``busy_window_ms``."""
        return bool(self._queue) or time.monotonic() - self._last_interactive < self.busy_window_s

    def _background_share(self) -> int:
        """Background images the next batch may take (busy share while interactive is active)."""
        return self.max_background_per_batch_busy if self.interactive_active else self.max_background_per_batch

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Stop accepting new work and wait until all accepted images have been answered.

        Waiting images are batched at once (no batch delay) while draining.

        Args:
            timeout_s: give up waiting after this many seconds (None = wait for ever).

        Returns:
            True if everything accepted was finished, False on timeout.
        """
        self._accepting = False
        if self._wakeup is None or self._idle is None:
            return True
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def close(self, timeout_s: float | None = None) -> None:
        """Drain (up to ``timeout_s`` seconds), then stop: left-over callers get :class:`BatcherClosed`."""
        drained = await self.drain(timeout_s)
        if not drained:
            log.warning("batcher closed with %d images still queued", len(self._queue))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in list(self._queue) + list(self._bg_queue):
            self._fail(item.req, BatcherClosed("the service is shutting down"))
        self._queue.clear()
        self._bg_queue.clear()
        self._queued_bytes = 0
        if self._executor is not None:
            # a batch still inside onnxruntime cannot be interrupted; don't block the loop on it
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- submit
    async def submit(self, images: np.ndarray | Sequence[np.ndarray], timeout_ms: float | None = None,
                     priority: str = INTERACTIVE) -> np.ndarray:
        """Queue images and wait for their model outputs.

        Args:
            images: uint8 ``(N, H, W, 3)`` array, or a sequence of N uint8 ``(H, W, 3)`` arrays;
                ``N >= 1``.
            timeout_ms: deadline for this call (ms from now); default ``request_timeout_ms``.
            priority: ``"interactive"`` (default) or ``"background"`` (lower priority: only fills
                slots interactive images leave free; bounded by ``max_background_images``).

        Returns:
            float32 ``(N, K)``: row ``i`` is the output for ``images[i]``.

        Raises:
            QueueFullError: the N images do not fit in the queue now (nothing was enqueued).
            BatcherClosed: draining or closed.
            DeadlineExceeded: some images were not started before the deadline.
            InferenceError: the model call of a batch holding some of these images failed.
            ValueError: empty input or an image of the wrong shape/dtype.
        """
        arrays = list(images) if not isinstance(images, np.ndarray) else [images[i] for i in range(images.shape[0])]
        n = len(arrays)
        if n == 0:
            raise ValueError("submit() needs at least one image")
        for a in arrays:
            if a.dtype != np.uint8 or a.ndim != 3 or (self.item_shape is not None and a.shape != self.item_shape):
                raise ValueError(
                    f"image of shape {a.shape} dtype {a.dtype}; expected uint8 {self.item_shape or '(H, W, 3)'}"
                )
        if priority not in (INTERACTIVE, BACKGROUND):
            raise ValueError(f"priority must be {INTERACTIVE!r} or {BACKGROUND!r}, got {priority!r}")
        if not self.running:
            self.stats.refused_images += n
            self.observer.refused(n, "closed")
            raise BatcherClosed("the service is not accepting work (starting or shutting down)")
        nbytes = sum(a.nbytes for a in arrays)
        if priority == BACKGROUND:
            if len(self._bg_queue) + n > self.max_background_images:
                raise QueueFullError(f"the background queue is full ({len(self._bg_queue)} of "
                                     f"{self.max_background_images} images waiting, this call has {n})")
            return await self._enqueue_and_wait(arrays, 0, timeout_ms, self._bg_queue)
        if len(self._queue) + n > self.max_queue_images or (
            self.max_queue_bytes is not None and self._queued_bytes + nbytes > self.max_queue_bytes
        ):
            self.stats.refused_images += n
            self.observer.refused(n, "queue_full")
            raise QueueFullError(
                f"the inference queue is full ({len(self._queue)} of {self.max_queue_images} images waiting, "
                f"this request has {n}); retry later",
                retry_after_s=self._retry_after_estimate(n),
            )

        self._last_interactive = time.monotonic()
        return await self._enqueue_and_wait(arrays, nbytes, timeout_ms, self._queue)

    async def _enqueue_and_wait(self, arrays: list[np.ndarray], nbytes: int, timeout_ms: float | None,
                                queue: collections.deque[_Item]) -> np.ndarray:
        """Append ``arrays`` to ``queue`` (interactive or background) and await the results."""
        n = len(arrays)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        timeout_s = self.request_timeout_s if timeout_ms is None else timeout_ms / 1000.0
        req = _Request(loop.create_future(), n, now + timeout_s)
        for i, a in enumerate(arrays):
            queue.append(_Item(req, i, a, now))
        self._queued_bytes += nbytes
        self._idle.clear()  # type: ignore[union-attr]
        self.observer.queue_depth(len(self._queue))
        self._wakeup.set()  # type: ignore[union-attr]

        try:
            done, _ = await asyncio.wait({req.future}, timeout=max(0.0, req.deadline - time.monotonic()))
            if not done:
                if req.unstarted > 0:
                    self._expire(req)
                # else: every image is inside a running batch; its answer is moments away
            return await req.future
        except asyncio.CancelledError:
            removed = self._remove_unstarted(req)
            self.stats.cancelled_images += removed
            if not req.future.done():
                req.future.cancel()
            raise

    # ---------------------------------------------------------------- internals
    def _retry_after_estimate(self, n: int) -> int:
        batches_ahead = math.ceil((len(self._queue) + n) / self.max_batch_size)
        return max(1, min(60, math.ceil(batches_ahead * self._ewma_batch_s)))

    def _remove_unstarted(self, req: _Request) -> int:
        """Remove ``req``'s waiting images from the queue; returns how many were removed."""
        if req.unstarted == 0:
            return 0
        kept: collections.deque[_Item] = collections.deque()
        removed = 0
        for item in self._queue:
            if item.req is req:
                removed += 1
                self._queued_bytes -= item.array.nbytes
            else:
                kept.append(item)
        self._queue = kept
        if any(item.req is req for item in self._bg_queue):
            before = len(self._bg_queue)
            self._bg_queue = collections.deque(item for item in self._bg_queue if item.req is not req)
            removed += before - len(self._bg_queue)
        req.unstarted = 0
        self.observer.queue_depth(len(self._queue))
        self._check_idle()
        return removed

    def _fail(self, req: _Request, exc: BaseException) -> None:
        self._remove_unstarted(req)
        if not req.future.done():
            req.future.set_exception(exc)

    def _expire(self, req: _Request) -> None:
        removed = self._remove_unstarted(req)
        self.stats.expired_images += removed
        self.observer.expired(removed)
        if not req.future.done():
            req.future.set_exception(
                DeadlineExceeded(
                    f"{removed} of {req.n} images were not started within the request deadline "
                    f"({self.request_timeout_s * 1000:.0f} ms default)"
                )
            )

    def _check_idle(self) -> None:
        if not self._queue and not self._bg_queue and not self._running_batch and self._idle is not None:
            self._idle.set()

    async def _wait_for_fill(self) -> None:
        """Busy path: wait until a full batch is queued or the oldest image is max_batch_delay old."""
        while (self._queue or self._bg_queue) and self._fillable() < self.max_batch_size and self._accepting:
            head = self._queue[0] if self._queue else self._bg_queue[0]
            remaining = head.enqueued_at + self.max_batch_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()  # type: ignore[union-attr]
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)  # type: ignore[union-attr]
            except TimeoutError:
                return

    def _fillable(self) -> int:
        """Images the next batch could hold now: interactive ones plus the background share."""
        return len(self._queue) + min(len(self._bg_queue), self._background_share())

    def _take_batch(self) -> list[_Item]:
        """Pop up to max_batch_size items, interactive first, dropping requests whose deadline has passed."""
        now = time.monotonic()
        batch: list[_Item] = []
        # one slot stays free for background work while some waits, so jobs never starve
        inter_limit = self.max_batch_size - (1 if self._bg_queue and self.max_batch_size > 1 else 0)
        while self._queue and len(batch) < inter_limit:
            item = self._queue[0]
            if item.req.future.done():  # failed/cancelled request whose items linger
                self._queue.popleft()
                self._queued_bytes -= item.array.nbytes
                continue
            if item.req.deadline <= now:
                self._expire(item.req)  # removes all its unstarted items, including this one
                continue
            self._queue.popleft()
            self._queued_bytes -= item.array.nbytes
            item.req.unstarted -= 1
            batch.append(item)
        bg_limit = min(self.max_batch_size, len(batch) + self._background_share())
        while self._bg_queue and len(batch) < bg_limit:
            item = self._bg_queue[0]
            if item.req.future.done():
                self._bg_queue.popleft()
                continue
            if item.req.deadline <= now:
                self._expire(item.req)
                continue
            self._bg_queue.popleft()
            item.req.unstarted -= 1
            batch.append(item)
        self.observer.queue_depth(len(self._queue))
        return batch

    def _run_in_worker(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        batch = np.stack(arrays)
        out = np.asarray(self._run_batch(batch))
        if out.ndim != 2 or out.shape[0] != len(arrays):
            raise InferenceError(f"run_batch returned shape {out.shape} for a batch of {len(arrays)}")
        return out, time.perf_counter() - t0

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        idle = True
        while True:
            if not self._queue and not self._bg_queue:
                self._check_idle()
                self._wakeup.clear()  # type: ignore[union-attr]
                await self._wakeup.wait()  # type: ignore[union-attr]
                idle = True
                continue
            was_idle = idle
            if not idle:
                await self._wait_for_fill()
            idle = False
            self._running_batch = True  # before popping, so drain() never sees "idle" mid-hand-off
            items = self._take_batch()
            if not items:
                self._running_batch = False
                self._check_idle()
                continue
            t0 = time.perf_counter()
            try:
                if self.inline_when_idle and was_idle and len(items) == 1 and not self._queue:
                    out, seconds = self._run_in_worker([items[0].array])
                else:
                    out, seconds = await loop.run_in_executor(self._executor, self._run_in_worker,
                                                              [i.array for i in items])
            except asyncio.CancelledError:
                self._running_batch = False
                for item in items:
                    self._fail(item.req, BatcherClosed("the service is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - isolate the failure to this batch
                seconds = time.perf_counter() - t0
                log.error("inference failed for a batch of %d images: %r", len(items), exc, exc_info=exc)
                self.stats.failed_batches += 1
                self.observer.batch_done(len(items), seconds, ok=False)
                err = InferenceError("inference failed for a batch holding this request's images")
                for item in items:
                    self._fail(item.req, err)
            else:
                self.stats.batches += 1
                self.stats.images += len(items)
                self.stats.batch_sizes.append(len(items))
                self._ewma_batch_s = 0.8 * self._ewma_batch_s + 0.2 * seconds
                self.observer.batch_done(len(items), seconds, ok=True)
                for row, item in zip(out, items):
                    req = item.req
                    if req.future.done():
                        continue  # caller gone (cancelled/expired): drop its rows
                    if req.results is None:
                        req.results = np.empty((req.n, out.shape[1]), dtype=out.dtype)
                    req.results[item.index] = row
                    req.remaining -= 1
                    if req.remaining == 0:
                        req.future.set_result(req.results)
            finally:
                self._running_batch = False
            self._check_idle()
