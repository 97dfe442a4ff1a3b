"""``GET /model``: what is being served."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from schemas.api import ModelInfo
from service.errors import AuthenticationError, NotReadyError, error_responses
from service.routes.deps import ReadyDataPlane, require_api_key

router = APIRouter(tags=["model"], dependencies=[Depends(require_api_key)])


@router.get("/model", operation_id="get_model", response_model=ModelInfo,
            responses=error_responses(AuthenticationError, NotReadyError),
            summary="The served model: classes, input size, calibration, referral thresholds, metrics")
async def get_model(dp: ReadyDataPlane) -> ModelInfo:
    """Manifest summary: name, version, classes with display names (output order), input size
    (pixels), calibration temperature, referral thresholds in force, test-split metrics, and the
    active onnxruntime execution provider."""
    return dp.model_info()
