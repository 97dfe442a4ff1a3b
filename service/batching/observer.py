"""What the batcher reports: metrics hooks (:class:`BatcherObserver`) and counters (:class:`BatcherStats`)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


class BatcherObserver:
    """Hooks for metrics; every method is a no-op here. Called on the event loop thread.

    Subclass and override what you need (see :mod:`service.metrics`).
    """

    def queue_depth(self, images: int) -> None:
        """The number of interactive images waiting (not yet started) changed to ``images``."""

    def batch_done(self, size: int, seconds: float, ok: bool) -> None:
        """A batch of ``size`` images took ``seconds`` (wall time of ``run_batch``, incl. stacking)."""

    def refused(self, images: int, reason: str) -> None:
        """``images`` images were refused (``reason``: ``queue_full`` or ``closed``)."""

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

    def batch_ok(self, size: int) -> None:
        """Count a successful batch of ``size`` images."""
        self.batches += 1
        self.images += size
        self.batch_sizes.append(size)
