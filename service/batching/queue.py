"""The batcher's waiting images: one queue per priority, and the callers' requests they belong to.

The unit is the *image*: a request of N images puts N items in a queue; they may be spread over
several model calls, and the request collects its rows (:meth:`Request.add_rows`) until all N came.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence

import numpy as np

from service.batching.policy import BatchPolicy
from service.outputs import BatchOut, concat, take


def image_list(images: np.ndarray | Sequence[np.ndarray], item_shape: tuple[int, ...] | None) -> list[np.ndarray]:
    """A submission's images as a list of uint8 ``(H, W, 3)`` arrays.

    Raises:
        ValueError: no image, or one of another dtype or shape (``item_shape`` when given).
    """
    arrays = list(images) if not isinstance(images, np.ndarray) else [images[i] for i in range(images.shape[0])]
    if not arrays:
        raise ValueError("submit() needs at least one image")
    for a in arrays:
        if a.dtype != np.uint8 or a.ndim != 3 or (item_shape is not None and a.shape != item_shape):
            raise ValueError(f"image of shape {a.shape} dtype {a.dtype}; expected uint8 {item_shape or '(H, W, 3)'}")
    return arrays


class Request:
    """One caller's submission: N images, a future for its N rows of output, a deadline."""

    __slots__ = ("deadline", "future", "n", "pieces", "remaining", "unstarted")

    def __init__(self, future: asyncio.Future, n: int, deadline: float) -> None:
        self.future = future
        self.n = n
        self.deadline = deadline  # time.monotonic() seconds
        self.unstarted = n  # images still waiting in a queue
        self.remaining = n  # rows not yet computed
        self.pieces: list[tuple[int, BatchOut, int]] = []  # (index in request, batch output, row in batch)

    def add_row(self, index: int, out: BatchOut, row: int) -> None:
        """Row ``row`` of a batch's output is this request's image ``index``; completes the future
        with all N rows, in request order, once the last one came."""
        self.pieces.append((index, out, row))
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self._gather())

    def _gather(self) -> BatchOut:
        pieces = sorted(self.pieces, key=lambda p: p[0])
        first = pieces[0][1]
        if all(p[1] is first for p in pieces):  # the usual case: one batch computed the whole request
            return take(first, [p[2] for p in pieces])
        return concat([take(out, [row]) for _, out, row in pieces])


class Item:
    """One waiting image."""

    __slots__ = ("array", "enqueued_at", "index", "req")

    def __init__(self, req: Request, index: int, array: np.ndarray, enqueued_at: float) -> None:
        self.req = req
        self.index = index
        self.array = array
        self.enqueued_at = enqueued_at


class WaitingImages:
    """The interactive and the background queue (FIFO each), and the interactive images' bytes."""

    def __init__(self) -> None:
        self.interactive: collections.deque[Item] = collections.deque()
        self.background: collections.deque[Item] = collections.deque()
        self.interactive_bytes = 0

    @property
    def empty(self) -> bool:
        return not self.interactive and not self.background

    def push(self, req: Request, arrays: list[np.ndarray], now: float, background: bool) -> None:
        """Append the request's images to its priority's queue."""
        queue = self.background if background else self.interactive
        for i, a in enumerate(arrays):
            queue.append(Item(req, i, a, now))
        if not background:
            self.interactive_bytes += sum(a.nbytes for a in arrays)

    def oldest(self) -> Item:
        """The image the batch delay is measured from: the interactive head, else the background head."""
        return self.interactive[0] if self.interactive else self.background[0]

    def remove(self, req: Request) -> int:
        """Remove ``req``'s waiting images from both queues; returns how many were removed."""
        if req.unstarted == 0:
            return 0
        kept: collections.deque[Item] = collections.deque()
        removed = 0
        for item in self.interactive:
            if item.req is req:
                removed += 1
                self.interactive_bytes -= item.array.nbytes
            else:
                kept.append(item)
        self.interactive = kept
        if any(item.req is req for item in self.background):
            before = len(self.background)
            self.background = collections.deque(item for item in self.background if item.req is not req)
            removed += before - len(self.background)
        req.unstarted = 0
        return removed

    def pop_into(self, batch: list[Item], background: bool, limit: int, now: float,
                 expire: Callable[[Request], None]) -> None:
        """Move images from the head of one queue into ``batch`` until it holds ``limit``.

        Images of finished requests (failed or cancelled) are dropped; a request whose deadline has
        passed is handed to ``expire`` (which removes all its waiting images).
        """
        queue = self.background if background else self.interactive
        while queue and len(batch) < limit:
            item = queue[0]
            if item.req.future.done():  # failed/cancelled request whose items linger
                queue.popleft()
                self._popped(item, background)
                continue
            if item.req.deadline <= now:
                expire(item.req)
                queue = self.background if background else self.interactive  # expire() rebuilt the deques
                continue
            queue.popleft()
            self._popped(item, background)
            item.req.unstarted -= 1
            batch.append(item)

    def next_batch(self, policy: BatchPolicy, interactive_active: Callable[[], bool],
                   expire: Callable[[Request], None]) -> list[Item]:
        """Pop the next batch as ``policy`` says (interactive first, then the background share),
        handing requests past their deadline to ``expire``."""
        now, batch = time.monotonic(), []
        self.pop_into(batch, False, policy.interactive_slots(bool(self.background)), now, expire)
        self.pop_into(batch, True, policy.background_slots(len(batch), interactive_active()), now, expire)
        return batch

    def _popped(self, item: Item, background: bool) -> None:
        if not background:
            self.interactive_bytes -= item.array.nbytes

    def clear(self) -> list[Item]:
        """Empty both queues; returns what was in them."""
        items = list(self.interactive) + list(self.background)
        self.interactive.clear()
        self.background.clear()
        self.interactive_bytes = 0
        return items
