"""Pure-ASGI middleware: request context (id, access log, metrics) and the body-size limit."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLargeError, error_response
from service.logs import request_id_var
from service.metrics import Metrics

log = logging.getLogger("dermserve.access")

_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


_KNOWN_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _fallback_template(path: str) -> str:
    """Metric label for requests not routed through an APIRoute (bounded set of values)."""
    if path in _KNOWN_PATHS:
        return path
    if path.startswith("/static/"):
        return "/static"
    return "unmatched"


class RequestContextMiddleware:
    """Assigns a request id, echoes it, logs one access line, records HTTP metrics.

    The id is the client's ``X-Request-ID`` when it is 1-128 characters of ``[A-Za-z0-9._:-]``,
    else a new uuid4 hex. It is stored in ``scope["state"]["request_id"]`` (``request.state``),
    in :data:`service.logs.request_id_var` for log lines, and sent back as ``X-Request-ID``.
    The access line holds method, route template, status and duration (ms) -- never the body,
    the query string, client addresses or client-chosen image ids.
    Unhandled exceptions become a JSON 500 here so that even they carry the request id.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                incoming = v.decode("latin-1")
                break
        rid = incoming if incoming and _VALID_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # noqa: BLE001
            if started:
                raise
            await error_response(exc, rid)(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - t0
            route = scope.get("route")
            template = getattr(route, "path", None) or _fallback_template(scope.get("path", ""))
            method = scope.get("method", "")
            self.metrics.requests.labels(route=template, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=template, method=method).observe(seconds)
            log.info("%s %s %d %.1fms", method, template, status, seconds * 1000,
                     extra={"method": method, "route": template, "status": status,
                            "duration_ms": round(seconds * 1000, 2)})
            request_id_var.reset(token)


class BodySizeLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` (bytes) with 413, without reading them first.

    A declared ``Content-Length`` above the limit is answered at once; otherwise the bytes are
    counted as the app reads the stream and :class:`PayloadTooLargeError` is raised from
    ``receive`` the moment the count passes the limit (mapped to 413 by the error table), so a
    chunked upload can never be buffered beyond the limit.

    ``path_limits`` maps exact request paths to their own limit (e.g. ``{"/jobs": 512 MiB}``: a
    whole study is larger than one ``/predict`` call).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    @staticmethod
    def _error(limit: int, declared: int | None = None) -> PayloadTooLargeError:
        what = f"{declared} bytes" if declared is not None else "more bytes than allowed"
        return PayloadTooLargeError(f"the request body has {what}; the limit is {limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]  # behind a proxy prefix (uvicorn --root-path)
        limit = self.path_limits.get(path.rstrip("/") or "/", self.max_bytes)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = None
                if declared is not None and declared > limit:
                    rid = scope.get("state", {}).get("request_id")
                    await error_response(self._error(limit, declared), rid)(scope, receive, send)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._error(limit)
            return message

        await self.app(scope, limited_receive, send)
