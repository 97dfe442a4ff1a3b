"""``POST /jobs``, ``GET /jobs/{job_id}``, ``DELETE /jobs/{job_id}``: asynchronous jobs (thin; see
:mod:`service.jobs`)."""

from __future__ import annotations


from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response

from schemas.api import JobAccepted, JobCreateRequest, JobStatus
from service.dataplane import DataPlane, EncodedImage, InvalidInputError
from service.errors import NotReadyError, UnsupportedMediaTypeError, error_responses
from service.jobs.plane import JobPlane
from service.routes.deps import caller_key_hash, get_dataplane, get_state, require_api_key
from service.routes.predict import _images_from_multipart, _parse_json
from service.state import AppState

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])

_JOB_ID = Path(description="the job id from the `POST /jobs` receipt", examples=["5f0c2b7e9d4a4f3c8e1b2a6d7c9e0f11"])

_NOT_FOUND = {404: {**error_responses(404)[404], "description": "no such job for this API key (unknown, expired, "
                                                                "or another key's job)"}}

_SUBMIT_DESCRIPTION = """
Submit a whole study for classification and collect the results later. **Decision support, not a
diagnosis.**

The body is the same as `POST /predict` (multipart file parts named `images`, or JSON
`{"images": [...]}`), plus an optional client `reference` (a form field, or a JSON field) that is
stored and echoed back. Up to `max_images_per_job` images (setting, default 1000).

Every image is decode-checked first: a job with any unusable image is refused whole with the same
per-image 422 answer as `/predict`. Once the answer is `202 Accepted`, the job and its images are
persisted (they survive a crash or restart of the service). Poll `Location: /jobs/{id}`.

Jobs run through the same dynamic batcher as `/predict`, at a lower priority. Each image is deleted
once its result is stored; finished jobs are deleted `job_retention_s` seconds after finishing.
When API keys are enabled, only the key that submitted a job can read or cancel it.
"""

_JOB_EXAMPLE = JobCreateRequest.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]

_OPENAPI_EXTRA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                                   "description": "one file part per image; the filename is echoed back as `id`"},
                        "reference": {"type": "string", "maxLength": 256,
                                      "description": "optional client reference, stored and echoed back"},
                    },
                },
                "encoding": {"images": {"contentType": "image/*"}},
            },
            "application/json": {
                "schema": {"$ref": "#/components/schemas/JobCreateRequest"},
                "examples": {
                    "study": {
                        "summary": "one base64 image and a reference",
                        "value": _JOB_EXAMPLE,
                    }
                },
            },
        },
    }
}


async def get_jobs(state: AppState = Depends(get_state)) -> JobPlane:
    """The job plane, or :class:`NotReadyError` (-> 503) before start-up completed."""
    if state.jobs is None:
        raise NotReadyError(state.not_ready_reason())
    return state.jobs


async def _json_body(request: Request, max_bytes: int) -> tuple[list[EncodedImage], str | None]:
    # base64 in JSON is parsed whole in memory (~3x the body): JSON jobs keep the /predict byte limit
    parsed = await _parse_json(request, JobCreateRequest, max_bytes,
                               "JSON jobs (send larger studies as multipart/form-data)")
    return [EncodedImage(b64=img.data, id=img.id) for img in parsed.images], parsed.reference


async def _multipart_body(request: Request, max_images: int, max_bytes: int) -> tuple[list[EncodedImage], str | None]:
    images, others = await _images_from_multipart(request, max_images, max_bytes, max_part_size=1024 * 1024)
    reference = None
    for part in others:
        if part.name == "reference":
            reference = part.data.decode("utf-8", errors="replace")
            if part.filename is not None or len(reference) > 256:
                raise InvalidInputError("'reference' must be a text field of at most 256 characters")
    return images, reference


@router.post(
    "/jobs",
    operation_id="create_job",
    summary="Submit a study as an asynchronous job (multipart or JSON)",
    description=_SUBMIT_DESCRIPTION,
    status_code=202,
    response_model=JobAccepted,
    responses={
        202: {"description": "accepted and persisted; poll the `Location` header",
              "headers": {"Location": {"description": "`/jobs/{id}`", "schema": {"type": "string"}}}},
        **error_responses(401, 413, 415, 422, 500, 503),
    },
    openapi_extra=_OPENAPI_EXTRA,
)
async def create_job(request: Request, dp: DataPlane = Depends(get_dataplane), jobs: JobPlane = Depends(get_jobs),
                     owner: str | None = Depends(caller_key_hash),
                     state: AppState = Depends(get_state)) -> JSONResponse:
    """Parse the body by Content-Type, hand the images to the job plane, answer 202 with the receipt."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in ("application/json", "multipart/form-data"):
        raise UnsupportedMediaTypeError(
            f"Content-Type {media or '(none)'!r} is not supported; use multipart/form-data (file parts named "
            "'images') or application/json"
        )
    async with jobs.upload_slots:  # bounded memory: a few studies are read and stored at a time
        if media == "application/json":
            images, reference = await _json_body(request, state.settings.max_upload_bytes)
        else:
            images, reference = await _multipart_body(request, jobs.max_images_per_job,
                                                        state.settings.max_job_upload_bytes)
        receipt = await jobs.submit(images, reference, owner)
    return JSONResponse(receipt.model_dump(), status_code=202, headers={"Location": f"/jobs/{receipt.id}"})


@router.get(
    "/jobs/{job_id}",
    operation_id="get_job",
    summary="Status of a job; its results once it has succeeded",
    response_model=JobStatus,
    response_model_exclude_unset=True,
    responses={**error_responses(401, 503), **_NOT_FOUND},
)
async def get_job(job_id: str = _JOB_ID, jobs: JobPlane = Depends(get_jobs),
                  owner: str | None = Depends(caller_key_hash)) -> Response:
    """``results`` (the `/predict` per-image shape, input order) appear when ``status`` is ``succeeded``."""
    # serialised off the event loop (JobPlane.get_json); the response_model above documents the shape
    return Response(await jobs.get_json(job_id, owner), media_type="application/json")


@router.delete(
    "/jobs/{job_id}",
    operation_id="cancel_job",
    summary="Cancel a job that has not finished",
    response_model=JobStatus,
    response_model_exclude_unset=True,
    responses={**error_responses(401, 503), **_NOT_FOUND,
               409: {**error_responses(409)[409], "description": "the job has already finished"}},
)
async def cancel_job(job_id: str = _JOB_ID, jobs: JobPlane = Depends(get_jobs),
                     owner: str | None = Depends(caller_key_hash)) -> JobStatus:
    """Cancel: its remaining images are deleted; images already in the batcher finish but are not stored."""
    return await jobs.cancel(job_id, owner)
