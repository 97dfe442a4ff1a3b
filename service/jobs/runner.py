"""The job runner: claims stored images, feeds them to the dynamic batcher at background priority,
stores the results; sweeps expired jobs and refreshes the job metrics (asyncio; no HTTP).

One runner per service process (a *worker*, id ``host:pid:random``). It keeps at most
``max_inflight_chunks`` chunks of ``chunk_images`` images in the batcher, so job work never holds
more than ``chunk_images * max_inflight_chunks`` images of the batcher's background queue, and
interactive ``/predict`` images are always batched first (see :mod:`service.batching`).

Failure handling per chunk:

- the batcher is closed / full / past the deadline -> the claims are released, retried later;
- an image that no longer decodes -> its job is marked ``failed`` (no endless retry of poison input);
- a failing model call -> the chunk is put back and retried, up to ``max_attempts`` claims per image;
  then its job(s) are marked ``failed``;
- an image claimed ``max_attempts`` times without a result (e.g. the process died on it each time)
  -> its job is marked ``failed`` instead of being claimed again;
- the process dies -> the claims expire after ``lease_s`` seconds (or at once on the next start of
  a SQLite-backed service, see :meth:`JobStore.requeue_at_startup`) and the chunk is computed again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from service.answers import AnswerShaper
from service.batching import BACKGROUND, BatcherClosed, DeadlineExceeded, DynamicBatcher, InferenceError, QueueFullError
from service.decoder import ImageDecoder
from service.inputs import EncodedImage, InvalidInputError
from service.jobs.store import ClaimedItem, JobStore, StoreStats
from service.outputs import as_model_output
from service.settings import JobSettings

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """``host:pid:random`` -- unique per process start, recorded on every claim and stored result."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    """Feeds stored job images through the batcher.

    Args:
        store: the job store.
        decoder: the job decoder (its own thread pool, so job decoding never queues ahead of
            ``/predict`` images; yield mode, so it runs in the gaps between them).
        batcher: the shared dynamic batcher (job images go in at background priority); its
            ``traffic`` tells when ``/predict`` requests are in flight.
        answers: shapes each image's prediction, as for ``/predict``.
        settings: the ``jobs`` settings group: ``chunk_images`` claimed and submitted at a time,
            ``max_inflight_chunks`` in the batcher at once, ``lease_s`` per claim (also the batcher
            deadline of a chunk), ``poll_interval_s`` between queue looks when idle (:meth:`wake`
            short-cuts it), ``sweep_interval_s`` / ``retention_s`` for deleting finished jobs,
            ``max_attempts`` claims per image before its job is marked failed, and
            ``yield_max_wait_s``, the bounded wait for a gap before store work.
        on_stats: called with :class:`StoreStats` after each refresh (metrics), on the event loop.
        worker_id: this worker's id (default :func:`new_worker_id`).
    """

    def __init__(self, store: JobStore, decoder: ImageDecoder, batcher: DynamicBatcher, answers: AnswerShaper,
                 settings: JobSettings, *, on_stats: Callable[[StoreStats], None] | None = None,
                 worker_id: str | None = None) -> None:
        self.store = store
        self.decoder = decoder
        self.batcher = batcher
        self.answers = answers
        self.settings = settings
        self.on_stats = on_stats
        self.worker_id = worker_id or new_worker_id()
        self._wakeup = asyncio.Event()
        self._inflight: dict[asyncio.Task, list[ClaimedItem]] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Requeue work left by a previous run, then start the claim and maintenance loops."""
        requeued = await asyncio.to_thread(self.store.requeue_at_startup)
        if requeued:
            log.info("requeued %d unfinished jobs", requeued, extra={"event": "jobs_requeued"})
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._claim_loop(), name="dermserve-jobs-claim"),
                       loop.create_task(self._maintenance_loop(), name="dermserve-jobs-maintenance")]

    def wake(self) -> None:
        """Look at the queue now (a job was just stored, or a chunk finished)."""
        self._wakeup.set()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop claiming; give in-flight chunks up to ``timeout_s`` seconds, then cancel them and
        release their claims so another replica (or the next start) takes them at once."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=timeout_s)
        left = [item for t, items in list(self._inflight.items()) if not t.done() for item in items]
        for t in list(self._inflight):
            t.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        if left:
            try:
                await asyncio.to_thread(self.store.release, self.worker_id,
                                        [(i.job_id, i.idx, i.attempts) for i in left])
            except Exception:  # noqa: BLE001 - the lease expires anyway
                log.exception("could not release %d claimed images at shutdown", len(left))

    # ---------------------------------------------------------------- loops
    async def _claim_loop(self) -> None:
        while not self._stopping:
            claimed: list[ClaimedItem] = []
            if len(self._inflight) < self.settings.max_inflight_chunks and self.batcher.running:
                await self._gap()  # store work holds the GIL: do it between /predict requests
                try:
                    claimed = await asyncio.to_thread(self.store.claim, self.worker_id,
                                                      self.settings.chunk_images, self.settings.lease_s)
                    claimed = await self._drop_exhausted(claimed)
                except Exception:  # noqa: BLE001 - database hiccup: log, back off, retry (claims expire)
                    log.exception("claiming job images failed")
                    claimed = []
            if claimed:
                task = asyncio.get_running_loop().create_task(self._run_chunk(claimed))
                self._inflight[task] = claimed
                task.add_done_callback(self._chunk_done)
                continue
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.settings.poll_interval_s)
            except TimeoutError:
                pass

    async def _gap(self) -> None:
        """Wait (at most ``yield_max_wait_s``) until no ``/predict`` request is in flight."""
        await self.batcher.traffic.wait_idle(self.settings.yield_max_wait_s)

    async def _drop_exhausted(self, claimed: list[ClaimedItem]) -> list[ClaimedItem]:
        """Fail the jobs of images claimed more than ``max_attempts`` times; return the rest."""
        max_attempts = self.settings.max_attempts
        over = {i.job_id for i in claimed if i.attempts > max_attempts}
        if not over:
            return claimed
        log.error("%d jobs failed: an image was claimed more than %d times without a result", len(over),
                  max_attempts, extra={"event": "job_attempts_exhausted"})
        await asyncio.to_thread(self.store.fail, over, f"an image was claimed more than {max_attempts} times "
                                "without a result")
        keep = [i for i in claimed if i.job_id not in over]
        return keep

    def _chunk_done(self, task: asyncio.Task) -> None:
        claimed = self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            # e.g. the store failed while saving results: log it; the claims are released when
            # their lease expires (another attempt then recomputes the chunk).
            log.error("job chunk of %d images failed unexpectedly: %r", len(claimed or []), task.exception(),
                      exc_info=task.exception(), extra={"event": "job_chunk_failed"})
        self._wakeup.set()

    async def _maintenance_loop(self) -> None:
        last_sweep = 0.0
        refresh_s = min(self.settings.sweep_interval_s, 5.0)
        while not self._stopping:
            try:
                if time.monotonic() - last_sweep >= self.settings.sweep_interval_s:
                    last_sweep = time.monotonic()
                    deleted = await asyncio.to_thread(self.store.sweep, self.settings.retention_s)
                    if deleted:
                        log.info("deleted %d expired jobs", deleted, extra={"event": "jobs_expired"})
                await self.refresh_stats()
            except Exception:  # noqa: BLE001
                log.exception("job maintenance failed")
            await asyncio.sleep(refresh_s)

    async def refresh_stats(self) -> StoreStats:
        """Read the job counts and pass them to ``on_stats`` (metrics)."""
        stats = await asyncio.to_thread(self.store.stats)
        if self.on_stats is not None:
            self.on_stats(stats)
        return stats

    # ---------------------------------------------------------------- one chunk
    async def _run_chunk(self, items: list[ClaimedItem]) -> None:
        lease_end = time.monotonic() + self.settings.lease_s  # claimed just before this task started
        try:
            decoded = await self.decoder.decode([EncodedImage(data=i.data, id=i.image_id) for i in items])
            # only what is left of the lease: never compute a chunk whose claim may have passed on
            left_s = lease_end - time.monotonic() - min(1.0, self.settings.lease_s * 0.1)
            if left_s <= 0:
                raise DeadlineExceeded("the claim's lease ran out while decoding")
            output = as_model_output(await self.batcher.submit([d.pixels for d in decoded], timeout_s=left_s,
                                                               priority=BACKGROUND))
        except InvalidInputError as exc:
            await self._undecodable(items, exc)
            return
        except InferenceError:
            await self._retry_or_fail(items)
            return
        except (BatcherClosed, QueueFullError, DeadlineExceeded) as exc:
            log.info("job chunk of %d images put back: %s", len(items), exc)
            await asyncio.to_thread(self.store.release, self.worker_id, [(i.job_id, i.idx, i.attempts) for i in items])
            await asyncio.sleep(self.settings.poll_interval_s)
            return
        await self._gap()  # shaping + storing cost GIL time too
        results = [(i.job_id, i.idx, self.answers.prediction(i.idx, d, output.image(k)).model_dump_json())
                   for k, (i, d) in enumerate(zip(items, decoded))]
        # the patient a DICOM image names, kept beside its result for the job's FHIR subject only
        patients = {(i.job_id, i.idx): (d.dicom.patient_id, d.dicom.patient_id_issuer)
                    for i, d in zip(items, decoded) if d.dicom is not None and d.dicom.patient_id}
        ref = self.answers.model_ref
        stored = await asyncio.to_thread(self.store.complete, self.worker_id, results, ref.name, ref.version,
                                         patients)
        if stored < len(results):
            log.info("%d of %d job results discarded (job cancelled or claim lost)", len(results) - stored,
                     len(results))

    async def _undecodable(self, items: list[ClaimedItem], exc: InvalidInputError) -> None:
        """Stored images no longer decode: fail their jobs (no endless retry), put the rest back."""
        bad = {items[d["index"]].job_id for d in exc.detail or []}
        log.error("stored images of %d jobs no longer decode; failing them", len(bad))
        await asyncio.to_thread(self.store.fail, bad, "a stored image could not be decoded")
        await asyncio.to_thread(self.store.release, self.worker_id,
                                [(i.job_id, i.idx, i.attempts) for i in items if i.job_id not in bad])

    async def _retry_or_fail(self, items: list[ClaimedItem]) -> None:
        """The model call failed: put the chunk back for another attempt; fail jobs out of attempts."""
        max_attempts = self.settings.max_attempts
        retry = [i for i in items if i.attempts < max_attempts]
        give_up = {i.job_id for i in items if i.attempts >= max_attempts}
        log.warning("inference failed for a job chunk of %d images; %d put back for another attempt",
                    len(items), len(retry), extra={"event": "job_chunk_inference_failed"})
        if give_up:
            await asyncio.to_thread(self.store.fail, give_up,
                                    f"inference failed {max_attempts} times for an image of this job")
        await asyncio.to_thread(lambda: self.store.release(
            self.worker_id, [(i.job_id, i.idx, i.attempts) for i in retry if i.job_id not in give_up],
            count_attempt=True))
        await asyncio.sleep(self.settings.poll_interval_s)
