"""``python -m service`` / ``dermserve``: run the service with uvicorn (one process).

Reads :class:`~service.settings.Settings` from ``DERMSERVE_*``; binds ``host:port`` (default
http://127.0.0.1:8000, docs at ``/docs``).

Graceful shutdown on SIGTERM/SIGINT, bounded by one budget ``G = shutdown_grace_s``:

1. at once (in the signal handler): readiness (``/health/ready``, ``/v2/health/ready``) answers
   503 and so does every request that has not yet passed the readiness gate -- including new
   connections, because the listening socket stays open while draining (a load balancer still
   sending traffic gets a fast 503 with ``Retry-After`` instead of a connection error);
2. every request *accepted* before the signal (it passed the gate: it is decoding, queued or
   inferring) is answered normally; the batcher keeps accepting their images. This phase ends
   when no accepted request is left, or at ``signal time + G``; in the latter case the batcher is
   closed and what is left of it is answered 503 (a batch already inside onnxruntime cannot be
   interrupted; its callers get 503 too);
3. the listening socket closes (from now on new connections are refused), idle connections are
   closed, uvicorn waits at most ~1 s for answers still being written, and the lifespan stops
   the batcher and the decode pool.

So the process is gone within about ``G`` + 1 s of the signal, and ``G`` only when some accepted
request really needs it. Exit status: 0 after a graceful stop (uvicorn would re-raise the caught
signal and end "killed by SIGTERM", status 143 / -15; we do not, so orchestrators and supervisors
see a clean exit); a second SIGINT skips the wait; 3 (uvicorn's startup failure) when the model
cannot be served (e.g. sha256 mismatch); 2 when the ``DERMSERVE_*`` settings are invalid (a message
on stderr naming the setting, never its value).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from types import FrameType

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from service.app import create_app
from service.logs import configure_logging
from service.settings import get_settings
from service.state import AppState

log = logging.getLogger("dermserve")


class _Server(uvicorn.Server):
    """uvicorn server with the bounded graceful shutdown described in the module docstring."""

    #: seconds uvicorn may still wait for connections after the drain (answers being written)
    FLUSH_S = 1.0

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:  # noqa: D102
        self._state.begin_shutdown()  # readiness 503 now, and the shutdown budget starts now
        super().handle_exit(sig, frame)
        # uvicorn (0.29+) re-raises the caught signals after serve() so that the process dies of them;
        # a graceful stop is a success here: exit 0. ``_captured_signals`` is uvicorn-internal (no public
        # switch exists); uvicorn is pinned and tests/test_shutdown.py asserts exit status 0, so an upgrade
        # that renames it fails there instead of silently exiting 143.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:  # noqa: D102
        state = self._state
        state.begin_shutdown()  # no-op after a signal; sets the deadline on other exits
        t0 = time.monotonic()
        log.info("shutdown: answering %d accepted requests (budget %.1f s); new requests get 503",
                 state.inflight, state.shutdown_remaining_s(), extra={"event": "shutdown_begin"})
        drained = await self._wait_accepted()
        if not drained and state.batcher is not None:
            left = state.inflight
            await state.batcher.close(timeout_s=0)  # leftovers (queued or running) -> BatcherClosed -> 503
            log.warning("shutdown budget used up: %d accepted requests were not answered in time and get 503",
                        left, extra={"event": "shutdown_budget_exceeded"})
            await asyncio.sleep(0.05)  # let their handlers write the 503
        log.info("shutdown: accepted requests answered in %.2f s; closing the listener", time.monotonic() - t0,
                 extra={"event": "shutdown_drained" if drained else "shutdown_cut"})
        self.config.timeout_graceful_shutdown = max(0.1, min(self.FLUSH_S, state.shutdown_remaining_s() + 0.5))
        await super().shutdown(sockets)

    async def _wait_accepted(self) -> bool:
        """Wait for the accepted requests (stops early on a second SIGINT); True when all answered."""
        waiter = asyncio.ensure_future(self._state.wait_accepted_answered())
        while not waiter.done():
            if self.force_exit:
                waiter.cancel()
                return False
            await asyncio.wait({waiter}, timeout=0.1)
        return waiter.result()


def main() -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit status (2: invalid settings)."""
    try:
        settings = get_settings()
    except (ValidationError, SettingsError) as exc:
        print(f"dermserve: invalid DERMSERVE_* configuration: {exc}", file=sys.stderr)
        return 2
    server_settings = settings.server
    configure_logging(server_settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=server_settings.host,
        port=server_settings.port,
        log_config=None,  # keep our JSON logging
        log_level=server_settings.log_level.lower(),
        access_log=False,  # RequestContextMiddleware logs one line per request, with its id
        timeout_graceful_shutdown=_Server.FLUSH_S,  # set again from the remaining budget at shutdown
        lifespan="on",
        server_header=False,
    )
    server = _Server(config, app.state.dermserve)
    server.run()  # sys.exit(3) from inside uvicorn when the lifespan startup fails
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
