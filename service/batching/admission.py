"""Admission control: the bounded interactive queue, reservations and the Retry-After estimate.

Decoding costs far more than inference for this model, so checking the queue only when decoded
images are submitted would let an overload pile up unbounded decode work and refuse excess late.
A request therefore *reserves* room for its images before decoding them (:meth:`Admission.reserve`):
reserved images count against ``max_images`` (and ``max_bytes``, at their decoded size) together
with the queued ones, and the reservation turns into queued images at submit. Excess is refused at
once, before any decoding, with :class:`QueueFullError` and a Retry-After estimate.

Background (job) images have their own bound (``max_background_images``) and never count against
the interactive one, so a big job cannot make ``/predict`` answer 503.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Self

from service.batching.errors import QueueFullError
from service.batching.observer import BatcherObserver, BatcherStats
from service.batching.queue import WaitingImages


@dataclass(frozen=True)
class QueueLimits:
    """How much may wait.

    Attributes:
        max_images: interactive images waiting or reserved at most (>= 1).
        max_bytes: optional cap on their decoded size in bytes.
        max_background_images: background images waiting at most (None = the batch size).
    """

    max_images: int = 256
    max_bytes: int | None = None
    max_background_images: int | None = None

    def __post_init__(self) -> None:
        if self.max_images < 1:
            raise ValueError("max_images must be >= 1")


class Reservation:
    """Room for ``n`` images held in the queue while they are decoded; ends at submit or on exit."""

    def __init__(self, admission: Admission, n: int, nbytes: int) -> None:
        self._admission = admission
        self.n = n
        self.nbytes = nbytes
        self.active = True

    def release(self) -> None:
        """Give the room back (idempotent)."""
        if self.active:
            self.active = False
            self._admission.reserved -= self.n
            self._admission.reserved_bytes -= self.nbytes

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """Decides whether images fit; one check for reservations and submits alike.

    Args:
        limits: the bounds.
        max_batch_size: images per model call (for the Retry-After estimate).
        item_bytes: decoded bytes of one image (``H * W * 3``), or 0 when unknown.
        waiting: the batcher's queues (their depth and bytes are counted).
        stats, observer: refusals are counted there.
    """

    def __init__(self, limits: QueueLimits, max_batch_size: int, item_bytes: int, waiting: WaitingImages,
                 stats: BatcherStats, observer: BatcherObserver) -> None:
        self.limits = limits
        self.max_background_images = limits.max_background_images or max_batch_size
        self.max_batch_size = max_batch_size
        self.item_bytes = item_bytes
        self.waiting = waiting
        self.stats = stats
        self.observer = observer
        self.reserved = 0  # images reserved and being decoded, not yet queued
        self.reserved_bytes = 0
        self.ewma_batch_s = 0.05  # recent seconds per batch, for Retry-After

    def check(self, n: int, nbytes: int | None = None, *, at_least: bool = False) -> None:
        """Raise :class:`QueueFullError` (counted as refused) unless ``n`` more interactive images
        (``nbytes`` decoded bytes; default ``n * item_bytes``) fit next to those queued and reserved.

        ``at_least``: the caller does not know its image count yet (a check before reading the
        body); the message says "at least n".
        """
        nbytes = n * self.item_bytes if nbytes is None else nbytes
        queued = len(self.waiting.interactive)
        images = queued + self.reserved + n
        total_bytes = self.waiting.interactive_bytes + self.reserved_bytes + nbytes
        max_bytes = self.limits.max_bytes
        if images <= self.limits.max_images and (max_bytes is None or total_bytes <= max_bytes):
            return
        self.stats.refused_images += n
        self.observer.refused(n, "queue_full")
        raise QueueFullError(
            f"the inference queue is full ({queued} images waiting and {self.reserved} being decoded, at most "
            f"{self.limits.max_images}; this request has {'at least ' if at_least else ''}{n}); retry later",
            retry_after_s=self.retry_after_s(n),
        )

    def reserve(self, n: int) -> Reservation:
        """Hold room for ``n`` images (use as a context manager; :meth:`DynamicBatcher.submit` takes it over).

        Raises:
            QueueFullError: no room now; nothing reserved.
        """
        self.check(n)
        self.reserved += n
        self.reserved_bytes += n * self.item_bytes
        return Reservation(self, n, n * self.item_bytes)

    def check_background(self, n: int) -> None:
        """Raise :class:`QueueFullError` unless ``n`` more background images fit in their own queue."""
        waiting = len(self.waiting.background)
        if waiting + n > self.max_background_images:
            raise QueueFullError(f"the background queue is full ({waiting} of {self.max_background_images} images "
                                 f"waiting, this call has {n})")

    def retry_after_s(self, n: int) -> int:
        """Whole seconds (1..60) until ``n`` more images would likely fit: the batches ahead times the
        recent seconds per batch."""
        batches_ahead = math.ceil((len(self.waiting.interactive) + n) / self.max_batch_size)
        return max(1, min(60, math.ceil(batches_ahead * self.ewma_batch_s)))

    def batch_took(self, seconds: float) -> None:
        """Record a finished batch's duration (exponentially weighted)."""
        self.ewma_batch_s = 0.8 * self.ewma_batch_s + 0.2 * seconds
