"""``POST /jobs``, ``GET /jobs/{job_id}``, ``DELETE /jobs/{job_id}``: asynchronous jobs (thin; see
:mod:`service.jobs`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response

from schemas.api import JobAccepted, JobCreateRequest, JobStatus
from service.errors import UPLOAD_ERRORS, AuthenticationError, NotAcceptableError, NotReadyError, error_responses
from service.jobs import JobFinishedError, JobNotFoundError, JobNotSucceededError
from service.reports import FHIR_CONTENT_TYPE, FHIR_JSON, ReportError
from service.routes import bodies, negotiation
from service.routes.deps import CallerKeyHash, Jobs, ReadyDataPlane, State, require_api_key

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])

_JOB_ID = Path(description="the job id from the `POST /jobs` receipt", examples=["5f0c2b7e9d4a4f3c8e1b2a6d7c9e0f11"])

_SUBMIT_DESCRIPTION = """
Submit a whole study for classification and collect the results later. **Decision support, not a
diagnosis.**

The body is the same as `POST /predict` (multipart file parts named `images`, or JSON
`{"images": [...]}`), plus an optional client `reference` (a form field, or a JSON field) that is
stored and echoed back. Up to `max_images_per_job` images (setting, default 1000).

Images are JPEG, PNG, ... or DICOM Part 10 objects, exactly as for `POST /predict` (predictions made
from DICOM echo the three instance UIDs). Every image is decode-checked first: a job with any unusable
image is refused whole with the same per-image 422 answer as `/predict`. Once the answer is
`202 Accepted`, the job and its images are persisted (they survive a crash or restart of the
service). Poll `Location: /jobs/{id}`.

Jobs run through the same dynamic batcher as `/predict`, at a lower priority. Each image is deleted
once its result is stored; finished jobs are deleted `job_retention_s` seconds after finishing.
When API keys are enabled, only the key that submitted a job can read or cancel it.
"""

_EXAMPLES = {"study": {
    "summary": "one base64 image and a reference",
    "value": JobCreateRequest.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
}}
_REFERENCE = {"reference": {"type": "string", "maxLength": 256,
                            "description": "optional client reference, stored and echoed back"}}
_READ_ERRORS = (AuthenticationError, NotReadyError, JobNotFoundError)


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
        **error_responses(*UPLOAD_ERRORS, Exception),
    },
    openapi_extra=bodies.image_upload_openapi("JobCreateRequest", _EXAMPLES, _REFERENCE),
)
async def create_job(request: Request, _accepted: ReadyDataPlane, jobs: Jobs, owner: CallerKeyHash,
                     state: State) -> JSONResponse:
    """Parse the body by Content-Type, hand the images to the jobs service, answer 202 with the receipt.

    (``_accepted``: the readiness gate, which also counts the request as accepted for shutdown.)"""
    media = bodies.media_type(request)
    async with jobs.upload_slots:  # bounded memory: a few studies are read and stored at a time
        # base64 in JSON is parsed whole in memory (~3x the body): JSON jobs keep the /predict byte limit
        body = await bodies.read_image_body(
            request, media, JobCreateRequest, max_images=jobs.max_images_per_job,
            max_bytes=state.settings.jobs.max_upload_bytes, max_field_bytes=1024 * 1024,
            json_max_bytes=state.settings.limits.max_upload_bytes,
            json_what="JSON jobs (send larger studies as multipart/form-data)")
        receipt = await jobs.submit(body.images, body.text("reference", max_chars=256), owner)
    return JSONResponse(receipt.model_dump(), status_code=202, headers={"Location": f"/jobs/{receipt.id}"})


_GET_DESCRIPTION = """
The job's status; `results` (the `/predict` per-image shape, input order) appear when `status` is
`succeeded`.

With **`Accept: application/fhir+json`** a succeeded job answers with its results as an HL7 FHIR R4
`Bundle` (as `POST /predict` does); a job that has not succeeded answers 409 (poll with JSON). The
report's subject is the PatientID the job's DICOM images named: for this, a job keeps each DICOM image's
PatientID (and IssuerOfPatientID) beside its result in the job store until the job is deleted
(`job_retention_s` after it finished; at once when it fails or is cancelled). It is never part of the
JSON answer, the logs or the metrics.
"""


@router.get(
    "/jobs/{job_id}",
    operation_id="get_job",
    summary="Status of a job; its results once it has succeeded (JSON, or FHIR by Accept)",
    description=_GET_DESCRIPTION,
    response_model=JobStatus,
    response_model_exclude_unset=True,
    responses={**error_responses(*_READ_ERRORS, NotAcceptableError, JobNotSucceededError, ReportError),
               **negotiation.report_responses("the job's status, with `results` once it has succeeded")},
)
async def get_job(request: Request, jobs: Jobs, owner: CallerKeyHash, job_id: str = _JOB_ID) -> Response:
    """The status as JSON, or a succeeded job's FHIR report (by ``Accept``)."""
    if negotiation.negotiate(request) == FHIR_JSON:
        return Response(await jobs.get_fhir(job_id, owner), media_type=FHIR_CONTENT_TYPE, headers=negotiation.VARY)
    # serialised off the event loop (JobsService.get_json); the response_model above documents the shape
    return Response(await jobs.get_json(job_id, owner), media_type="application/json", headers=negotiation.VARY)


@router.delete(
    "/jobs/{job_id}",
    operation_id="cancel_job",
    summary="Cancel a job that has not finished",
    response_model=JobStatus,
    response_model_exclude_unset=True,
    responses=error_responses(*_READ_ERRORS, JobFinishedError),
)
async def cancel_job(jobs: Jobs, owner: CallerKeyHash, job_id: str = _JOB_ID) -> JobStatus:
    """Cancel: its remaining images are deleted; images already in the batcher finish but are not stored."""
    return await jobs.cancel(job_id, owner)
