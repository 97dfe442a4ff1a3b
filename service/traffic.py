"""Interactive traffic: how many ``/predict`` / V2 requests are in flight, and how recently one came.

Background work (asynchronous jobs) runs in the gaps of interactive traffic; this one small object is
what every part asks:

- the batching policy gives job images a smaller share of each model call while traffic is *active*
  (a request in the interactive queue, or one seen within ``busy_window_s``);
- the job decoder and the job runner wait (bounded) until no interactive request is *in flight*
  (counted from the start of its decoding to its answer).

Lives on the event loop; not thread-safe (it does not need to be).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator


class InteractiveTraffic:
    """Counts interactive requests in flight and remembers the latest interactive activity.

    Args:
        busy_window_s: traffic counts as recently active for this many seconds after :meth:`note`.
    """

    def __init__(self, busy_window_s: float = 1.0) -> None:
        self.busy_window_s = max(0.0, busy_window_s)
        self.in_flight = 0
        self._last = -math.inf  # time.monotonic() of the latest note()
        self._idle = asyncio.Event()
        self._idle.set()

    def note(self) -> None:
        """An interactive request is starting or submitting now (before its images are decoded)."""
        self._last = time.monotonic()

    @property
    def recently_active(self) -> bool:
        """True within ``busy_window_s`` seconds of the latest :meth:`note`."""
        return time.monotonic() - self._last < self.busy_window_s

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Count one interactive request (decode, queue, inference) while the block runs."""
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self, max_wait_s: float) -> bool:
        """Wait until no interactive request is in flight, ``max_wait_s`` seconds at most (a bound, so
        background work still progresses under sustained load).

        Returns:
            True if idle, False if the wait timed out.
        """
        if self.in_flight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), max_wait_s)
            return True
        except TimeoutError:
            return False
