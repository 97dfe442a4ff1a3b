"""The model worker: one dedicated thread calling ``run_batch`` (one InferenceSession is never called
concurrently), so that the event loop stays free for HTTP while a batch is computed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.batching.errors import InferenceError
from service.outputs import BatchOut, as_checked

#: ``run_batch(batch)``: ``batch`` uint8 ``(B, H, W, 3)`` -> a :class:`~service.outputs.ModelOutput`
#: (or a plain ``ndarray``) with ``B`` rows.
RunBatch = Callable[[np.ndarray], BatchOut]


class ModelWorker:
    """Stacks a batch, calls ``run_batch`` in the worker thread (or inline), checks and times the result.

    Args:
        run_batch: the model call.
        inline_when_idle: allow :meth:`run` with ``inline=True`` to call the model on the event loop
            itself (saves a thread round trip for a lone image; blocks the loop for one model call).
    """

    def __init__(self, run_batch: RunBatch, inline_when_idle: bool = False) -> None:
        self.run_batch = run_batch
        self.inline_when_idle = inline_when_idle
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Create the worker thread's pool."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dermserve-infer")

    def shutdown(self) -> None:
        """Stop the worker thread; a batch still inside the model cannot be interrupted, so don't wait for it."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, arrays: list[np.ndarray], inline: bool = False) -> tuple[BatchOut, float]:
        """``(output with len(arrays) rows, seconds)``; inline only when allowed and asked for.

        Raises:
            InferenceError: the output does not have one row per image; or what ``run_batch`` raised.
        """
        if self.inline_when_idle and inline:
            return self._call(arrays)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, arrays)

    def _call(self, arrays: list[np.ndarray]) -> tuple[BatchOut, float]:
        t0 = time.perf_counter()
        try:
            out = as_checked(self.run_batch(np.stack(arrays)), len(arrays))
        except ValueError as exc:
            raise InferenceError(str(exc)) from exc
        return out, time.perf_counter() - t0
