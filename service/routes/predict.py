"""``POST /predict``: multipart form-data (file parts named ``images``) or JSON, same path."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from schemas.api import PredictRequest, PredictResponse
from service.errors import INFERENCE_ERRORS, error_responses
from service.routes import bodies
from service.routes.deps import ClientDisconnected, ReadyDataPlane, State, cancel_on_disconnect, require_api_key

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

_DESCRIPTION = """
Classify one or more dermoscopic images into the 7 HAM10000 classes. **Decision support, not a
diagnosis.**

Two request encodings on the same path, chosen by `Content-Type`:

* `multipart/form-data` -- one file part per image, all named `images`
  (`curl -F images=@a.jpg -F images=@b.jpg http://127.0.0.1:8000/predict`);
* `application/json` -- `{"images": [{"id": "optional", "data": "<base64>"}]}`.

Predictions come back in input order. `probabilities` are temperature-calibrated and keyed by class
code. **Referral rule:** `referral_recommended` is true when `malignant_probability`
(= P(mel) + P(bcc) + P(akiec)) is at or above the malignant threshold, or when the top-1
probability is below the minimum top-1 probability; thresholds come from the model manifest
(see `GET /model`) unless overridden by settings. `referral_reasons` names the conditions that fired.

A request with any unusable image is rejected whole (422) and `detail` lists every failed image by
`index` (and `id`) with a `reason`.
"""

_EXAMPLES = {"two_images": {
    "summary": "two base64 images, the first with an id",
    "value": PredictRequest.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
}}


@router.post(
    "/predict",
    operation_id="predict",
    summary="Classify skin-lesion images (multipart or JSON)",
    description=_DESCRIPTION,
    response_model=PredictResponse,
    responses=error_responses(*INFERENCE_ERRORS),
    openapi_extra=bodies.image_upload_openapi("PredictRequest", _EXAMPLES),
)
async def predict(request: Request, dp: ReadyDataPlane, state: State) -> Response:
    """Dispatch on Content-Type, hand the images to the dataplane, return its answer."""
    media = bodies.media_type(request)
    dp.refuse_if_full()  # overload: when the queue is already full, 503 before spending CPU on the body
    body = await bodies.read_image_body(request, media, PredictRequest, max_images=dp.max_images_per_request,
                                        max_bytes=state.settings.limits.max_upload_bytes)
    try:
        result = await cancel_on_disconnect(request, dp.predict(body.images))
    except ClientDisconnected:
        return Response(status_code=499)
    # serialised once by pydantic's Rust core; returning the model would make FastAPI validate it
    # again, convert it to a dict and json.dumps that (response_model above still documents the shape)
    return Response(result.model_dump_json(), media_type="application/json")
