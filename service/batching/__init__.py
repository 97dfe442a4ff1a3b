"""Dynamic batching of single images into model calls (asyncio; no HTTP, no onnxruntime).

- :mod:`.batcher` -- :class:`DynamicBatcher`: futures, deadlines, the batching loop, the worker thread;
- :mod:`.policy` -- :class:`BatchPolicy`: when the next batch closes and what goes into it
  (interactive first; the background share);
- :mod:`.admission` -- :class:`QueueLimits` and the admission control: the bounded queue,
  reservations before decoding, the Retry-After estimate;
- :mod:`.queue` -- the waiting images and the callers' requests;
- :mod:`.worker` -- the model's one worker thread;
- :mod:`.observer`, :mod:`.errors` -- metrics hooks and counters; the exceptions.
"""

from service.batching.admission import QueueLimits, Reservation
from service.batching.batcher import BACKGROUND, INTERACTIVE, DynamicBatcher
from service.batching.errors import BatcherClosed, BatcherError, DeadlineExceeded, InferenceError, QueueFullError
from service.batching.observer import BatcherObserver, BatcherStats
from service.batching.policy import BatchPolicy
from service.batching.worker import ModelWorker, RunBatch

__all__ = [
    "BACKGROUND", "INTERACTIVE", "BatchPolicy", "BatcherClosed", "BatcherError", "BatcherObserver", "BatcherStats",
    "DeadlineExceeded", "DynamicBatcher", "InferenceError", "ModelWorker", "QueueFullError", "QueueLimits",
    "Reservation", "RunBatch",
]
