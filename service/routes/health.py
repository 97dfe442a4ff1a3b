"""Liveness and readiness (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter

from schemas.api import HealthStatus
from service.errors import NotReadyError, error_responses
from service.routes.deps import State

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", operation_id="health_live", response_model=HealthStatus,
            summary="Liveness: the process and its event loop answer")
async def live() -> HealthStatus:
    """200 as long as the process serves HTTP (even while loading or shutting down)."""
    return HealthStatus(status="alive")


@router.get("/ready", operation_id="health_ready", response_model=HealthStatus,
            responses=error_responses(NotReadyError),
            summary="Readiness: 200 only after model load (sha256 verified) and warm-up")
async def ready(state: State) -> HealthStatus:
    """200 when requests can be served; 503 before warm-up, when the worker died, and from the
    first moment of shutdown (SIGTERM) on."""
    if not state.is_ready:
        raise NotReadyError(state.not_ready_reason())
    return HealthStatus(status="ready")
