"""``GET /model``: what is being served."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from schemas.api import ModelInfo
from service.dataplane import DataPlane
from service.errors import error_responses
from service.routes.deps import get_dataplane, require_api_key

router = APIRouter(tags=["model"], dependencies=[Depends(require_api_key)])


@router.get("/model", operation_id="get_model", response_model=ModelInfo, responses=error_responses(401, 503),
            summary="The served model: classes, input size, calibration, referral thresholds, metrics")
async def get_model(dp: DataPlane = Depends(get_dataplane)) -> ModelInfo:
    """Manifest summary: name, version, classes with display names (output order), input size
    (pixels), calibration temperature, referral thresholds in force, test-split metrics, and the
    active onnxruntime execution provider."""
    return dp.model_info()
