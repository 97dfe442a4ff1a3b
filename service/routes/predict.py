"""``POST /predict``: multipart form-data (file parts named ``images``) or JSON, same path."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from schemas.api import PredictRequest, PredictResponse
from service.errors import INFERENCE_ERRORS, NotAcceptableError, error_responses
from service.reports import FHIR_CONTENT_TYPE, FHIR_JSON, ReportError
from service.routes import bodies, negotiation
from service.routes.deps import ClientDisconnected, ReadyDataPlane, State, cancel_on_disconnect, require_api_key

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

_DESCRIPTION = """
Classify one or more dermoscopic images into the 7 HAM10000 classes. **Decision support, not a
diagnosis.**

Two request encodings on the same path, chosen by `Content-Type`:

* `multipart/form-data` -- one file part per image, all named `images`
  (`curl -F images=@a.jpg -F images=@b.jpg http://127.0.0.1:8000/predict`);
* `application/json` -- `{"images": [{"id": "optional", "data": "<base64>"}]}`.

Images are JPEG, PNG, ... or **DICOM** Part 10 objects (a multipart part of type `application/dicom`,
or any part or base64 image with `DICM` at byte 128): VL Photographic / Dermoscopic Photography /
Secondary Capture, single-frame colour (RGB, YBR_FULL, YBR_FULL_422; JPEG Baseline as written by
dcmtk's `img2dcm`, and the other common transfer syntaxes). A prediction made from DICOM echoes
`study_instance_uid`, `series_instance_uid` and `sop_instance_uid`; patient data is never echoed or
logged. Multi-frame objects, grey-scale, non-photographic (CT, MR, RT, SR, ...) objects and objects
without pixel data are refused (422, `dicom_*` reasons).

The answer is JSON by default; **`Accept: application/fhir+json`** returns an HL7 FHIR R4 `Bundle`
instead (one `DiagnosticReport` + one `Observation` per image + the model as a `Device`; the report's
subject is the DICOM PatientID when the images carry one). Images naming different patients cannot go
into one report (422 `fhir_conflicting_patients`); an `Accept` that allows neither JSON nor FHIR JSON
is answered with 406.

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
    responses={**error_responses(*INFERENCE_ERRORS, NotAcceptableError, ReportError),
               **negotiation.report_responses("predictions in input order")},
    openapi_extra=bodies.image_upload_openapi("PredictRequest", _EXAMPLES),
)
async def predict(request: Request, dp: ReadyDataPlane, state: State) -> Response:
    """Dispatch on Content-Type, hand the images to the dataplane, return its answer (JSON or FHIR by Accept)."""
    media = bodies.media_type(request)
    answer = negotiation.negotiate(request)  # 406 before the body is read
    dp.refuse_if_full()  # overload: when the queue is already full, 503 before spending CPU on the body
    body = await bodies.read_image_body(request, media, PredictRequest, max_images=dp.max_images_per_request,
                                        max_bytes=state.settings.limits.max_upload_bytes)
    work = dp.predict_fhir(body.images) if answer == FHIR_JSON else dp.predict(body.images)
    try:
        result = await cancel_on_disconnect(request, work)
    except ClientDisconnected:
        return Response(status_code=499)
    if isinstance(result, bytes):
        return Response(result, media_type=FHIR_CONTENT_TYPE, headers=negotiation.VARY)
    # serialised once by pydantic's Rust core; returning the model would make FastAPI validate it
    # again, convert it to a dict and json.dumps that (response_model above still documents the shape)
    return Response(result.model_dump_json(), media_type="application/json", headers=negotiation.VARY)
