"""The jobs service: what the ``/jobs`` routes call -- validate and persist a submission, read and
cancel jobs (no HTTP)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from schemas.api import DISCLAIMER, JobAccepted, JobStatus, ModelRef, Prediction
from service.decoder import ImageDecoder
from service.inputs import EncodedImage, NoImagesError, TooManyImagesError
from service.jobs import JobNotSucceededError
from service.jobs.runner import JobRunner
from service.jobs.store import JobStore, JobView
from service.reports import FhirReports, stored_refs
from service.settings import JobSettings


def key_hash(api_key: bytes) -> str:
    """sha256 hex of an API key: what the store keeps to tie a job to its owner (never the key)."""
    return hashlib.sha256(api_key).hexdigest()


def iso_utc(t: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC with milliseconds (``...Z``)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobsService:
    """Submission, status and cancellation of asynchronous jobs.

    Args:
        store: the job store.
        decoder: the job decoder (its own pool, yield mode) for the up-front decode check (same
            per-image 422 errors as ``/predict``).
        runner: woken when a job is stored.
        settings: the ``jobs`` settings group (``max_images``, ``max_concurrent_uploads``).
        max_check_wait_s: total seconds one submission's decode check may wait for gaps between
            ``/predict`` requests; then it decodes without waiting (so a big study under heavy
            ``/predict`` load is still answered).
        reports: builds a succeeded job's FHIR report (``GET /jobs/{id}`` with
            ``Accept: application/fhir+json``).
    """

    def __init__(self, store: JobStore, decoder: ImageDecoder, runner: JobRunner, settings: JobSettings,
                 max_check_wait_s: float = 2.0, *, reports: FhirReports | None = None) -> None:
        self.store = store
        self.reports = reports or FhirReports()
        self.decoder = decoder
        self.runner = runner
        self.max_images_per_job = settings.max_images
        #: held by the route while it reads a body: bounds memory, as each study is held whole
        self.upload_slots = asyncio.Semaphore(settings.max_concurrent_uploads)
        self.max_check_wait_s = max_check_wait_s

    def check_count(self, n: int) -> None:
        """Raise :class:`NoImagesError` for 0 and :class:`TooManyImagesError` above ``max_images_per_job``."""
        if n == 0:
            raise NoImagesError("the job holds no image: send file parts named 'images' or JSON {'images': [...]}")
        if n > self.max_images_per_job:
            raise TooManyImagesError(f"the job holds {n} images; at most {self.max_images_per_job} are accepted "
                                     "per job")

    async def submit(self, images: Sequence[EncodedImage], reference: str | None, owner: str | None) -> JobAccepted:
        """Check every image decodes, persist the job (committed before returning), wake the runner.

        Args:
            images: the images in input order (raw bytes or base64).
            reference: the client's reference, echoed back.
            owner: sha256 of the caller's API key (None when authentication is off).

        Returns:
            The receipt (status ``queued``).

        Raises:
            NoImagesError, TooManyImagesError: image count out of range.
            InvalidInputError: some image does not decode (``detail`` names each by index and id).
        """
        self.check_count(len(images))
        # decode once to check (arrays dropped), in the gaps between interactive requests
        await self.decoder.decode(images, max_total_wait_s=self.max_check_wait_s)
        # base64 of a whole study is tens of MB: decode it off the event loop
        raw = await asyncio.to_thread(lambda: [(img.id, img.raw()) for img in images])
        job_id = uuid.uuid4().hex
        await asyncio.to_thread(self.store.create, job_id, owner, reference, raw)
        self.runner.wake()
        return JobAccepted(id=job_id, status="queued", total=len(raw), reference=reference)

    async def get_json(self, job_id: str, owner: str | None) -> bytes:
        """The job's status (results once it has succeeded) as JSON bytes (unset fields left out),
        read and serialised in a worker thread: a 1000-image result list costs tens of ms of CPU
        that must not block the event loop.

        Raises:
            JobNotFoundError: unknown, expired, or another key's job.
        """
        def work() -> bytes:
            return self._status(self.store.get(job_id, owner)).model_dump_json(exclude_unset=True).encode()

        return await asyncio.to_thread(work)

    async def get_fhir(self, job_id: str, owner: str | None) -> bytes:
        """A succeeded job's results as a FHIR R4 Bundle (JSON bytes; built in a worker thread).

        The subject is the PatientID its DICOM images named (stored beside the results for this
        report, deleted with the job); the UIDs come from the stored predictions.

        Raises:
            JobNotFoundError: unknown, expired, or another key's job.
            JobNotSucceededError: queued, running, failed or cancelled (no results to report).
            ReportError: the images name different patients.
        """
        def work() -> bytes:
            v = self.store.get(job_id, owner, patients=True)
            if v.results is None:
                raise JobNotSucceededError(f"job {job_id!r} is {v.status}: its FHIR report exists once it has "
                                           "succeeded (poll with Accept: application/json)")
            predictions = [Prediction.model_validate_json(r) for r in v.results]
            patients = v.patients or {}
            refs = [stored_refs(p, patients.get(p.index)) for p in predictions]
            return self.reports.bundle(predictions, refs, ModelRef(name=v.model_name or "",
                                                                   version=v.model_version or ""))

        return await asyncio.to_thread(work)

    async def cancel(self, job_id: str, owner: str | None) -> JobStatus:
        """Cancel an unfinished job (its stored images are deleted).

        Raises:
            JobNotFoundError: unknown, expired, or another key's job.
            JobFinishedError: already succeeded, failed or cancelled.
        """
        return self._status(await asyncio.to_thread(self.store.cancel, job_id, owner))

    @staticmethod
    def _status(v: JobView) -> JobStatus:
        out = JobStatus(id=v.id, status=v.status, done=v.done, total=v.total,  # type: ignore[arg-type]
                        reference=v.reference, created_at=iso_utc(v.created_at) or "",
                        finished_at=iso_utc(v.finished_at), error=v.error)
        if v.results is not None:
            out.results = [Prediction.model_validate_json(r) for r in v.results]
            out.model = ModelRef(name=v.model_name or "", version=v.model_version or "")
            out.disclaimer = DISCLAIMER
        return out
