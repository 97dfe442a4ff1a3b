"""``GET /metrics``: Prometheus text exposition (see :mod:`service.metrics` for the names)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.errors import AuthenticationError, error_responses
from service.routes.deps import State, require_api_key

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)])


@router.get("/metrics", operation_id="metrics", response_class=Response,
            responses=error_responses(AuthenticationError), summary="Prometheus metrics")
async def metrics(state: State) -> Response:
    """Request counts/latency by route, queue depth, batch sizes, inference time, refused images."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
