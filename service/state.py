"""The per-app lifecycle state shared by the lifespan, the routes and ``__main__``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.metrics import Metrics
from service.settings import Settings

if TYPE_CHECKING:
    from service.batching import DynamicBatcher
    from service.components import Components
    from service.dataplane import DataPlane
    from service.jobs.service import JobsService


@dataclass
class AppState:
    """What one app instance holds; stored as ``app.state.dermserve``.

    ``ready`` turns True only after every component is started (model loaded with its sha256
    verified, warmed up, batcher and job runner running); :meth:`begin_shutdown` turns it False at
    once (SIGTERM or lifespan exit).
    """

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    #: the running parts (see :mod:`service.components`); set by the lifespan once all have started
    components: Components | None = None
    ready: bool = False
    shutting_down: bool = False
    #: requests that passed the readiness gate (``routes.deps.ready_dataplane``) and are not answered yet
    inflight: int = 0
    #: ``time.monotonic()`` by which shutdown must be over; set by the first :meth:`begin_shutdown`
    shutdown_deadline: float | None = None

    def begin_shutdown(self) -> None:
        """Mark the service as shutting down: readiness and every gated route answer 503 from now on.

        The first call also fixes :attr:`shutdown_deadline` = now + ``shutdown_grace_s``: the one
        budget that the whole shutdown (answering accepted requests, draining the batcher, closing
        connections) shares. Safe to call from a signal handler (it only sets attributes).
        """
        if self.shutdown_deadline is None:
            self.shutdown_deadline = time.monotonic() + self.settings.server.shutdown_grace_s
        self.shutting_down = True
        self.ready = False

    def shutdown_remaining_s(self) -> float:
        """Seconds left of the shutdown budget (>= 0); the full ``shutdown_grace_s`` before shutdown."""
        if self.shutdown_deadline is None:
            return self.settings.server.shutdown_grace_s
        return max(0.0, self.shutdown_deadline - time.monotonic())

    async def wait_accepted_answered(self, poll_s: float = 0.02) -> bool:
        """Wait until no accepted request is in flight (their images in the batcher included).

        Background work in the batcher (jobs) is not waited for here: the lifespan stops it.
        Gives up at :attr:`shutdown_deadline`. Returns True when everything accepted was answered.
        """
        while self.inflight > 0:
            if self.shutdown_remaining_s() <= 0:
                return False
            await asyncio.sleep(poll_s)
        return True

    @property
    def batcher(self) -> DynamicBatcher | None:
        return self.components.batcher if self.components else None

    @property
    def dataplane(self) -> DataPlane | None:
        return self.components.dataplane if self.components else None

    @property
    def jobs(self) -> JobsService | None:
        """The jobs service (``/jobs``)."""
        return self.components.jobs if self.components else None

    @property
    def is_ready(self) -> bool:
        """True when requests can be served: loaded, warmed up, batcher running, not stopping."""
        return self.ready and not self.shutting_down and self.batcher is not None and self.batcher.running

    def not_ready_reason(self) -> str:
        """A sentence for 503 answers."""
        if self.shutting_down:
            return "the service is shutting down"
        if not self.ready:
            return "the model is not loaded and warmed up yet"
        return "the inference worker is not running"
