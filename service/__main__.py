"""``python -m service`` / ``dermserve``: run the service with uvicorn (one process).

Reads :class:`~service.settings.Settings` from ``DERMSERVE_*``; binds ``host:port`` (default
http://127.0.0.1:8000, docs at ``/docs``). SIGTERM/SIGINT turn readiness 503 immediately, then
uvicorn stops accepting connections, waits up to ``shutdown_grace_s`` for open requests, and the
lifespan drains the batcher. After a clean stop uvicorn re-raises the signal it caught, so the
process ends "killed by SIGTERM" (status 143 / -15) as the default handler would; 3 (uvicorn's
startup failure) when the model cannot be served (e.g. sha256 mismatch).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from service.app import create_app
from service.logs import configure_logging
from service.settings import get_settings


class _Server(uvicorn.Server):
    """uvicorn server that flips readiness to 503 the moment a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:  # noqa: D102
        self._on_exit()
        super().handle_exit(sig, frame)


def main() -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit status."""
    settings = get_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our JSON logging
        log_level=settings.log_level.lower(),
        access_log=False,  # RequestContextMiddleware logs one line per request, with its id
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        lifespan="on",
        server_header=False,
    )
    server = _Server(config, on_exit=app.state.dermserve.begin_shutdown)
    server.run()  # sys.exit(3) from inside uvicorn when the lifespan startup fails
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
