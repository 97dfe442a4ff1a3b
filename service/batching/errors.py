"""The batcher's errors (mapped to HTTP answers in :mod:`service.errors`)."""

from __future__ import annotations


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
    """Some images of the request were not started within its deadline (``request_timeout_s``)."""


class InferenceError(BatcherError):
    """The model call for a batch holding images of this request failed (see the server log)."""


class BatcherClosed(BatcherError):
    """The batcher is draining or closed and accepts no new work."""
