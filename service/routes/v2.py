"""Open Inference Protocol V2 routes (KServe ``specification/protocol/inference_rest.md``).

Health (no authentication): ``GET /v2/health/live``, ``GET /v2/health/ready``.
Server/model (API key when configured): ``GET /v2``, ``GET /v2/models/{name}[/versions/{v}]``,
``GET .../ready``, ``POST .../infer``. The tensor codec is :mod:`service.codecs.v2`.

Deviations and choices: "not ready" answers are 503 (the spec asks for a 4xx; clients such as
``tritonclient`` only test for 200); errors are ``{"error": "..."}`` plus ``request_id``; invalid
inputs are 422 like the rest of the API. The binary tensor data extension (header
``Inference-Header-Content-Length``) is supported for inputs and outputs.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

import service
from schemas.api import (
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadataResponse,
    ReadyResponse,
    ServerMetadataResponse,
)
from service.codecs import v2
from service.errors import INFERENCE_ERRORS, AuthenticationError, NotReadyError, error_responses
from service.inputs import ModelNotFoundError
from service.routes import bodies
from service.routes.deps import ClientDisconnected, ReadyDataPlane, State, cancel_on_disconnect, require_api_key

open_router = APIRouter(prefix="/v2", tags=["open inference protocol"])
router = APIRouter(prefix="/v2", tags=["open inference protocol"], dependencies=[Depends(require_api_key)])

_MODEL_ERRORS = error_responses(AuthenticationError, ModelNotFoundError, NotReadyError)
_INFER_ERRORS = error_responses(*INFERENCE_ERRORS, ModelNotFoundError)
_INFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/InferenceRequest"}}}}}
_MEDIA_HINT = "use application/json (or application/octet-stream with Inference-Header-Content-Length)"


@open_router.get("/health/live", operation_id="v2_health_live", response_model=LiveResponse)
async def v2_live() -> LiveResponse:
    """Server liveness (always 200 while the process serves HTTP)."""
    return LiveResponse(live=True)


@open_router.get("/health/ready", operation_id="v2_health_ready", response_model=ReadyResponse,
                 responses=error_responses(NotReadyError))
async def v2_ready(state: State) -> ReadyResponse:
    """Server readiness: 200 after model load and warm-up, else 503."""
    if not state.is_ready:
        raise NotReadyError(state.not_ready_reason())
    return ReadyResponse(ready=True)


@router.get("", operation_id="v2_server_metadata", response_model=ServerMetadataResponse)
async def v2_server_metadata() -> ServerMetadataResponse:
    """Server metadata: name, version, supported extensions."""
    return ServerMetadataResponse(name="dermserve", version=_version(), extensions=["binary_tensor_data"])


@router.get("/models/{name}", operation_id="v2_model_metadata", response_model=ModelMetadataResponse,
            responses=_MODEL_ERRORS)
@router.get("/models/{name}/versions/{version}", operation_id="v2_model_version_metadata",
            response_model=ModelMetadataResponse, responses=_MODEL_ERRORS)
async def v2_model_metadata(name: str, dp: ReadyDataPlane, version: str | None = None) -> ModelMetadataResponse:
    """Model metadata: the BYTES input `images`, the UINT8 pixel input, the FP32 output `probabilities`."""
    dp.check_model(name, version)
    return dp.v2_metadata()


@router.get("/models/{name}/ready", operation_id="v2_model_ready", response_model=ReadyResponse,
            responses=_MODEL_ERRORS)
@router.get("/models/{name}/versions/{version}/ready", operation_id="v2_model_version_ready",
            response_model=ReadyResponse, responses=_MODEL_ERRORS)
async def v2_model_ready(name: str, dp: ReadyDataPlane, version: str | None = None) -> ReadyResponse:
    """Model readiness: 200 when the named model is loaded and warmed up."""
    dp.check_model(name, version)
    return ReadyResponse(ready=True)


_INFER_DESCRIPTION = """
Inputs (any number, concatenated in order): a `BYTES` tensor of shape `[N]` holding encoded image
files (JPEG, PNG, ... or DICOM Part 10, found by `DICM` at byte 128; base64 strings in JSON, raw bytes
with the binary tensor data extension), and/or a `UINT8` or `FP32` tensor of shape `[N, H, W, 3]`
(RGB 0..255 at the model input size, see `GET /v2/models/{name}`). Output: `probabilities`, FP32
`[N, 7]`, temperature-calibrated, class order in `parameters.classes`. When any image was DICOM, the
output's `parameters` also hold `study_instance_uid`, `series_instance_uid` and `sop_instance_uid`:
comma-separated, one entry per row (empty for rows that were not DICOM). Decision support, not a
diagnosis.
"""


@router.post("/models/{name}/infer", operation_id="v2_model_infer", response_model=InferenceResponse,
             description=_INFER_DESCRIPTION, responses=_INFER_ERRORS, openapi_extra=_INFER_BODY)
@router.post("/models/{name}/versions/{version}/infer", operation_id="v2_model_version_infer",
             response_model=InferenceResponse, description=_INFER_DESCRIPTION, responses=_INFER_ERRORS,
             openapi_extra=_INFER_BODY)
async def v2_infer(name: str, request: Request, dp: ReadyDataPlane, version: str | None = None) -> Response:
    """Run inference (JSON, or JSON header + binary tensor data)."""
    dp.check_model(name, version)
    bodies.media_type(request, ("", bodies.JSON, "application/octet-stream"), _MEDIA_HINT)
    dp.refuse_if_full()  # overload: 503 before reading and parsing the body, as /predict does
    head, binary = v2.split_body(await request.body(), request.headers.get(v2.HEADER_LENGTH))
    infer_request = await bodies.validate_json(InferenceRequest, head)
    try:
        response, binary_out = await cancel_on_disconnect(request, dp.v2_infer(infer_request, binary))
    except ClientDisconnected:
        return Response(status_code=499)
    content, media, headers = v2.http_body(response, binary_out)
    return Response(content, media_type=media, headers=headers)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dermserve")
    except Exception:  # noqa: BLE001 - not installed as a distribution (running from the repo)
        return getattr(service, "__version__", "0.1.0")
