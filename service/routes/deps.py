"""Shared route dependencies as typed aliases: app state, readiness gate, API key, disconnect handling.

Routes declare what they need by type (``dp: ReadyDataPlane``, ``owner: CallerKeyHash``); the
aliases carry the ``Depends(...)``.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.dataplane import DataPlane
from service.errors import AuthenticationError, NotReadyError
from service.jobs.service import JobsService, key_hash
from service.state import AppState

T = TypeVar("T")

_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token (when `api_keys` is set)")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (when `api_keys` is set)")


async def get_state(request: Request) -> AppState:
    """The :class:`AppState` of the app serving ``request``.

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
    hop (and a GIL hand-over under load) per request for one attribute lookup.
    """
    return request.app.state.dermserve


State = Annotated[AppState, Depends(get_state)]


async def ready_dataplane(state: State) -> AsyncIterator[DataPlane]:
    """The dataplane, or :class:`NotReadyError` (-> 503) before warm-up / during shutdown.

    This is the readiness gate that defines an *accepted* request: one that passed it is counted
    in ``state.inflight`` until its answer has been sent (a yield dependency ends after the
    response), so a graceful shutdown can wait for exactly those (see ``service.__main__``).
    """
    dataplane = state.dataplane
    if not state.is_ready or dataplane is None:
        raise NotReadyError(state.not_ready_reason())
    state.inflight += 1
    try:
        yield dataplane
    finally:
        state.inflight -= 1


async def started_jobs(state: State) -> JobsService:
    """The jobs service, or :class:`NotReadyError` (-> 503) before start-up completed."""
    if state.jobs is None:
        raise NotReadyError(state.not_ready_reason())
    return state.jobs


Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
ApiKeyHeader = Annotated[str | None, Depends(_api_key_header)]


def presented_key(state: AppState, bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> bytes | None:
    """The configured API key the caller presented, or None when authentication is off.

    Keys come from the ``api_keys`` setting and may be sent as ``Authorization: Bearer <key>`` or
    ``X-API-Key: <key>``. Every presented value is compared with every key with
    :func:`hmac.compare_digest` (constant time per comparison, no early exit).

    Raises:
        AuthenticationError: keys are configured and none was presented (-> 401 with
            ``WWW-Authenticate: Bearer``).
    """
    keys = state.settings.access.api_keys
    if not keys:
        return None
    presented = [c.encode() for c in (bearer.credentials if bearer else None, api_key) if c]
    match: bytes | None = None
    for cand in presented:
        for key in keys:
            secret = key.get_secret_value().encode()
            if hmac.compare_digest(cand, secret):
                match = secret
    if match is None:
        raise AuthenticationError(
            "missing or invalid API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    return match


async def require_api_key(state: State, bearer: Bearer, api_key: ApiKeyHeader) -> None:
    """Router dependency: accept the request when no keys are configured or a configured key is presented."""
    presented_key(state, bearer, api_key)


async def caller_key_hash(state: State, bearer: Bearer, api_key: ApiKeyHeader) -> str | None:
    """sha256 hex of the caller's API key (None when authentication is off): ties asynchronous jobs to
    their owner; the job store keeps this hash, never the key."""
    key = presented_key(state, bearer, api_key)
    return None if key is None else key_hash(key)


ReadyDataPlane = Annotated[DataPlane, Depends(ready_dataplane)]
Jobs = Annotated[JobsService, Depends(started_jobs)]
CallerKeyHash = Annotated[str | None, Depends(caller_key_hash)]


class ClientDisconnected(Exception):
    """The client went away before the answer was ready (answered with 499, which nobody reads)."""


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` but cancel it if the client disconnects meanwhile.

    uvicorn does not cancel a handler when its client disconnects; this watches the ASGI
    ``receive`` channel (the body has already been read) for ``http.disconnect`` so that the
    batcher can drop the request's not-yet-started images.

    Raises:
        ClientDisconnected: the client disconnected first.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise ClientDisconnected()
