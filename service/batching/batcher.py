"""The dynamic batcher: futures, deadlines, the batching loop and the model's worker thread.

What goes into a batch is :class:`~service.batching.policy.BatchPolicy`'s decision; what may wait is
:class:`~service.batching.admission.Admission`'s. This class moves images between callers, the
queues and the model:

- **idle fast path** -- when no batch is running and the queue was empty, the first work to arrive
  runs at once (everything that arrived in the same event-loop tick is taken with it);
- **busy** -- while a batch runs, new images queue up; the next batch closes when the policy says
  it is full or its oldest image has waited ``max_delay_s``;
- **deadlines** -- images of a request not *started* within its deadline are dropped and the caller
  gets :class:`DeadlineExceeded`; images already inside a running batch finish;
- **cancellation** -- a cancelled caller's not-yet-started images leave the queue;
- **failure isolation** -- if ``run_batch`` raises, only the requests with images in that batch get
  :class:`InferenceError`; the batcher logs it and keeps serving.

The model runs in a single worker thread (one InferenceSession is never called concurrently), so
the event loop stays free for HTTP while a batch is computed (:mod:`service.batching.worker`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence

import numpy as np

from service.batching.admission import Admission, QueueLimits, Reservation
from service.batching.errors import BatcherClosed, DeadlineExceeded, InferenceError
from service.batching.observer import BatcherObserver, BatcherStats
from service.batching.policy import BatchPolicy
from service.batching.queue import Item, Request, WaitingImages, image_list
from service.batching.worker import ModelWorker, RunBatch
from service.outputs import BatchOut
from service.traffic import InteractiveTraffic

log = logging.getLogger(__name__)

#: Priorities accepted by :meth:`DynamicBatcher.submit`.
INTERACTIVE = "interactive"
BACKGROUND = "background"


class DynamicBatcher:
    """Groups images from concurrent callers into batches for one model.

    Args:
        run_batch: the model call; runs in the worker thread, never on the event loop.
        policy: what goes into the next batch (default :class:`BatchPolicy`).
        limits: how much may wait (default :class:`QueueLimits`).
        request_timeout_s: default deadline per :meth:`submit` call (seconds from submit).
        item_shape: optional expected ``(H, W, 3)`` of every image; checked at submit, and sizes
            reservations in bytes.
        observer: metrics hooks.
        traffic: interactive traffic (its activity shrinks the background share); default a new one.
        inline_when_idle: see :class:`~service.batching.worker.ModelWorker`.

    Attributes:
        admission: the admission control (:mod:`service.batching.admission`): ``reserve(n)`` before
            decoding, ``check(n)``; refusals raise :class:`QueueFullError` with a Retry-After estimate.
    """

    def __init__(self, run_batch: RunBatch, policy: BatchPolicy | None = None, limits: QueueLimits | None = None,
                 *, request_timeout_s: float = 10.0, item_shape: tuple[int, ...] | None = None,
                 observer: BatcherObserver | None = None, traffic: InteractiveTraffic | None = None,
                 inline_when_idle: bool = False) -> None:
        if request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be > 0")
        self.worker = ModelWorker(run_batch, inline_when_idle)
        self.policy = policy or BatchPolicy()
        self.request_timeout_s = request_timeout_s
        self.item_shape = tuple(item_shape) if item_shape is not None else None
        self.observer = observer or BatcherObserver()
        self.stats = BatcherStats()
        self.traffic = traffic or InteractiveTraffic()
        self.waiting = WaitingImages()
        item_bytes = math.prod(self.item_shape) if self.item_shape else 0
        self.admission = Admission(limits or QueueLimits(), self.policy.max_batch_size, item_bytes, self.waiting,
                                   self.stats, self.observer)
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None  # set when nothing is queued or running
        self._task: asyncio.Task | None = None
        self._accepting = False
        self._running_batch = False

    # ---------------------------------------------------------------- lifecycle and state
    def start(self) -> None:
        """Start the batching task and the worker thread (call from inside the running loop)."""
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.worker.start()
        self._accepting = True
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="dermserve-batcher")

    @property
    def running(self) -> bool:
        """True while the batching task is alive and accepting work."""
        return self._accepting and self._task is not None and not self._task.done()

    @property
    def idle(self) -> bool:
        """True when nothing is queued (interactive or background) and no batch is running."""
        return self.waiting.empty and not self._running_batch

    @property
    def queue_depth(self) -> int:
        """Interactive images waiting to be started."""
        return len(self.waiting.interactive)

    @property
    def background_depth(self) -> int:
        """Background-priority images waiting to be started."""
        return len(self.waiting.background)

    @property
    def interactive_active(self) -> bool:
        """True while interactive images wait or interactive traffic was seen within its busy window."""
        return bool(self.waiting.interactive) or self.traffic.recently_active

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Stop accepting new work and wait (up to ``timeout_s`` seconds; None = for ever) until all
        accepted images have been answered; waiting images are batched at once meanwhile.

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
        if not await self.drain(timeout_s):
            log.warning("batcher closed with %d images still queued", self.queue_depth)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self.waiting.clear():
            self._fail(item.req, BatcherClosed("the service is shutting down"))
        self.worker.shutdown()

    # ---------------------------------------------------------------- submit
    async def submit(self, images: np.ndarray | Sequence[np.ndarray], timeout_s: float | None = None,
                     priority: str = INTERACTIVE, reservation: Reservation | None = None) -> BatchOut:
        """Queue images and wait for their model outputs.

        Args:
            images: uint8 ``(N, H, W, 3)`` array, or a sequence of N uint8 ``(H, W, 3)`` arrays; N >= 1.
            timeout_s: deadline for this call (seconds from now); default ``request_timeout_s``.
            priority: ``"interactive"`` (default) or ``"background"`` (only fills slots interactive
                images leave free; bounded by ``max_background_images``).
            reservation: room reserved for these images with ``admission.reserve`` (interactive only):
                the images take its place without a second check.

        Returns:
            The N rows of ``run_batch``'s output for these images, in order (same kind as it returns).

        Raises:
            QueueFullError: the N images do not fit in the queue now (nothing was enqueued).
            BatcherClosed: draining or closed.
            DeadlineExceeded: some images were not started before the deadline.
            InferenceError: the model call of a batch holding some of these images failed.
            ValueError: empty input, an image of the wrong shape/dtype, an unknown priority.
        """
        if priority not in (INTERACTIVE, BACKGROUND):
            raise ValueError(f"priority must be {INTERACTIVE!r} or {BACKGROUND!r}, got {priority!r}")
        arrays = image_list(images, self.item_shape)
        n = len(arrays)
        if not self.running:
            self.stats.refused_images += n
            self.observer.refused(n, "closed")
            raise BatcherClosed("the service is not accepting work (starting or shutting down)")
        background = priority == BACKGROUND
        if background:
            self.admission.check_background(n)
        elif reservation is not None and reservation.active:
            reservation.release()  # its room becomes these queued images
        else:
            self.admission.check(n, sum(a.nbytes for a in arrays))
        if not background:
            self.traffic.note()
        return await self._enqueue_and_wait(arrays, timeout_s, background)

    async def _enqueue_and_wait(self, arrays: list[np.ndarray], timeout_s: float | None, background: bool) -> BatchOut:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        req = Request(loop.create_future(), len(arrays), now + (self.request_timeout_s if timeout_s is None
                                                                 else timeout_s))
        self.waiting.push(req, arrays, now, background)
        self._idle.clear()  # type: ignore[union-attr]
        self.observer.queue_depth(self.queue_depth)
        self._wakeup.set()  # type: ignore[union-attr]
        try:
            done, _ = await asyncio.wait({req.future}, timeout=max(0.0, req.deadline - time.monotonic()))
            if not done and req.unstarted > 0:
                self._expire(req)
            # else: every image is inside a running batch; its answer is moments away
            return await req.future
        except asyncio.CancelledError:
            self.stats.cancelled_images += self._remove_unstarted(req)
            if not req.future.done():
                req.future.cancel()
            raise

    # ---------------------------------------------------------------- requests leaving early
    def _remove_unstarted(self, req: Request) -> int:
        removed = self.waiting.remove(req)
        self.observer.queue_depth(self.queue_depth)
        self._check_idle()
        return removed

    def _fail(self, req: Request, exc: BaseException) -> None:
        self._remove_unstarted(req)
        if not req.future.done():
            req.future.set_exception(exc)

    def _expire(self, req: Request) -> None:
        removed = self._remove_unstarted(req)
        self.stats.expired_images += removed
        self.observer.expired(removed)
        if not req.future.done():
            req.future.set_exception(DeadlineExceeded(
                f"{removed} of {req.n} images were not started within the request deadline "
                f"({self.request_timeout_s * 1000:.0f} ms default)"))

    def _check_idle(self) -> None:
        if self.idle and self._idle is not None:
            self._idle.set()

    # ---------------------------------------------------------------- the loop
    async def _wait_for_fill(self) -> None:
        """Busy path: wait until the policy calls the batch full or the oldest image is max_delay_s old."""
        w, policy = self.waiting, self.policy
        while (not w.empty and self._accepting
               and not policy.is_full(len(w.interactive), len(w.background), self.interactive_active)):
            remaining = w.oldest().enqueued_at + policy.max_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()  # type: ignore[union-attr]
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)  # type: ignore[union-attr]
            except TimeoutError:
                return

    async def _loop(self) -> None:
        idle = True
        while True:
            if self.waiting.empty:
                self._check_idle()
                self._wakeup.clear()  # type: ignore[union-attr]
                await self._wakeup.wait()  # type: ignore[union-attr]
                idle = True
                continue
            was_idle, idle = idle, False
            if not was_idle:
                await self._wait_for_fill()
            self._running_batch = True  # before popping, so drain() never sees "idle" mid-hand-off
            items = self.waiting.next_batch(self.policy, lambda: self.interactive_active, self._expire)
            self.observer.queue_depth(self.queue_depth)
            try:
                if items:
                    await self._run(items, inline=was_idle and len(items) == 1 and not self.waiting.interactive)
            finally:
                self._running_batch = False
                self._check_idle()

    async def _run(self, items: list[Item], inline: bool) -> None:
        """One model call for ``items``; their rows (or the failure) go back to their requests."""
        t0 = time.perf_counter()
        try:
            out, seconds = await self.worker.run([i.array for i in items], inline)
        except asyncio.CancelledError:
            for item in items:
                self._fail(item.req, BatcherClosed("the service is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the failure to this batch
            log.error("inference failed for a batch of %d images: %r", len(items), exc, exc_info=exc)
            self.stats.failed_batches += 1
            self.observer.batch_done(len(items), time.perf_counter() - t0, ok=False)
            err = InferenceError("inference failed for a batch holding this request's images")
            for item in items:
                self._fail(item.req, err)
            return
        self.stats.batch_ok(len(items))
        self.admission.batch_took(seconds)
        self.observer.batch_done(len(items), seconds, ok=True)
        for row, item in enumerate(items):
            item.req.add_row(item.index, out, row)
