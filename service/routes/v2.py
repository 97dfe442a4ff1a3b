"""Open Inference Protocol V2 (KServe ``specification/protocol/inference_rest.md``).

Health (no authentication): ``GET /v2/health/live``, ``GET /v2/health/ready``.
Server/model (API key when configured): ``GET /v2``, ``GET /v2/models/{name}[/versions/{v}]``,
``GET .../ready``, ``POST .../infer``.

Deviations and choices: "not ready" answers are 503 (the spec asks for a 4xx; clients such as
``tritonclient`` only test for 200); errors are ``{"error": "..."}`` plus ``request_id``; invalid
inputs are 422 like the rest of the API. The binary tensor data extension (header
``Inference-Header-Content-Length``) is supported for inputs and outputs.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

import service
from schemas.api import (
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadataResponse,
    ReadyResponse,
    ServerMetadataResponse,
)
from service.dataplane import DataPlane, InvalidInputError
from service.errors import NotReadyError, UnsupportedMediaTypeError, error_responses
from service.routes.deps import ClientDisconnected, cancel_on_disconnect, get_dataplane, get_state, require_api_key
from service.state import AppState

open_router = APIRouter(prefix="/v2", tags=["open inference protocol"])
router = APIRouter(prefix="/v2", tags=["open inference protocol"], dependencies=[Depends(require_api_key)])

HEADER_LENGTH = "Inference-Header-Content-Length"


@open_router.get("/health/live", operation_id="v2_health_live", response_model=LiveResponse)
async def v2_live() -> LiveResponse:
    """Server liveness (always 200 while the process serves HTTP)."""
    return LiveResponse(live=True)


@open_router.get("/health/ready", operation_id="v2_health_ready", response_model=ReadyResponse,
                 responses=error_responses(503))
async def v2_ready(state: AppState = Depends(get_state)) -> ReadyResponse:
    """Server readiness: 200 after model load and warm-up, else 503."""
    if not state.is_ready:
        raise NotReadyError(state.not_ready_reason())
    return ReadyResponse(ready=True)


@router.get("", operation_id="v2_server_metadata", response_model=ServerMetadataResponse)
async def v2_server_metadata() -> ServerMetadataResponse:
    """Server metadata: name, version, supported extensions."""
    return ServerMetadataResponse(name="dermserve", version=_version(), extensions=["binary_tensor_data"])


@router.get("/models/{name}", operation_id="v2_model_metadata", response_model=ModelMetadataResponse,
            responses=error_responses(401, 404, 503))
@router.get("/models/{name}/versions/{version}", operation_id="v2_model_version_metadata",
            response_model=ModelMetadataResponse, responses=error_responses(401, 404, 503))
async def v2_model_metadata(name: str, version: str | None = None,
                            dp: DataPlane = Depends(get_dataplane)) -> ModelMetadataResponse:
    """Model metadata: the BYTES input `images`, the UINT8 pixel input, the FP32 output `probabilities`."""
    dp.check_model(name, version)
    return dp.v2_metadata()


@router.get("/models/{name}/ready", operation_id="v2_model_ready", response_model=ReadyResponse,
            responses=error_responses(401, 404, 503))
@router.get("/models/{name}/versions/{version}/ready", operation_id="v2_model_version_ready",
            response_model=ReadyResponse, responses=error_responses(401, 404, 503))
async def v2_model_ready(name: str, version: str | None = None,
                         dp: DataPlane = Depends(get_dataplane)) -> ReadyResponse:
    """Model readiness: 200 when the named model is loaded and warmed up."""
    dp.check_model(name, version)
    return ReadyResponse(ready=True)


_INFER_DESCRIPTION = """
Inputs (any number, concatenated in order): a `BYTES` tensor of shape `[N]` holding encoded image
files (base64 strings in JSON, raw bytes with the binary tensor data extension), and/or a `UINT8`
or `FP32` tensor of shape `[N, H, W, 3]` (RGB 0..255 at the model input size, see
`GET /v2/models/{name}`). Output: `probabilities`, FP32 `[N, 7]`, temperature-calibrated, class
order in `parameters.classes`. Decision support, not a diagnosis.
"""


@router.post("/models/{name}/infer", operation_id="v2_model_infer", response_model=InferenceResponse,
             description=_INFER_DESCRIPTION, responses=error_responses(401, 404, 413, 415, 422, 500, 503, 504),
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/InferenceRequest"}}}}})
@router.post("/models/{name}/versions/{version}/infer", operation_id="v2_model_version_infer",
             response_model=InferenceResponse, description=_INFER_DESCRIPTION,
             responses=error_responses(401, 404, 413, 415, 422, 500, 503, 504),
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/InferenceRequest"}}}}})
async def v2_infer(name: str, request: Request, version: str | None = None,
                   dp: DataPlane = Depends(get_dataplane)) -> Response:
    """Run inference (JSON, or JSON header + binary tensor data)."""
    dp.check_model(name, version)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in ("", "application/json", "application/octet-stream"):
        raise UnsupportedMediaTypeError(f"Content-Type {media!r} is not supported; use application/json "
                                        "(or application/octet-stream with Inference-Header-Content-Length)")
    dp.refuse_if_full()  # overload: 503 before reading and parsing the body, as /predict does
    body = await request.body()
    header_len = request.headers.get(HEADER_LENGTH)
    binary = b""
    if header_len is not None:
        try:
            n = int(header_len)
            if not 0 <= n <= len(body):
                raise ValueError
        except ValueError:
            raise InvalidInputError(f"{HEADER_LENGTH} must be an integer between 0 and the body size") from None
        body, binary = body[:n], body[n:]
    try:
        infer_request = await asyncio.to_thread(InferenceRequest.model_validate_json, body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None
    try:
        response, binary_out = await cancel_on_disconnect(request, dp.v2_infer(infer_request, binary))
    except ClientDisconnected:
        return Response(status_code=499)
    payload = response.model_dump(exclude_none=True)
    if binary_out is None:
        return JSONResponse(payload)
    head = json.dumps(payload).encode()
    return Response(head + binary_out, media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(head))})


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dermserve")
    except Exception:  # noqa: BLE001 - not installed as a distribution (running from the repo)
        return getattr(service, "__version__", "0.1.0")
