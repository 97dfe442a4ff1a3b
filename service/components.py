"""Every part of the service, built in one place from the settings and wired together.

:func:`build_components` is what the app's lifespan enters: it loads the model (sha256 verified) and
warms it up, opens the job store, then starts the decode pools, the batcher and the job runner,
each registered for shutdown as it starts (so a failure part-way through stops what already runs,
and a normal exit stops them in reverse order). A test may hand ``create_app`` another builder.

Wiring (one object of each, shared)::

    InteractiveTraffic ──┬─> DynamicBatcher(runtime.predict, BatchPolicy, QueueLimits)
                         ├─> ImageDecoder (interactive pool, idle fast path) ──> DataPlane
                         └─> ImageDecoder (job pool, yield mode) ──> JobRunner, JobsService
    AnswerShaper (manifest + referral rule) ──> DataPlane, JobRunner
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from service.answers import AnswerShaper, ReferralRule
from service.batching import BatchPolicy, DynamicBatcher, QueueLimits
from service.dataplane import DataPlane
from service.decoder import ImageDecoder, load_formats
from service.jobs.runner import JobRunner
from service.jobs.service import JobsService
from service.jobs.store import JobStore, sqlite_url
from service.metrics import Metrics
from service.reports import FhirReports
from service.runtime import ModelLoadError, ModelRuntime
from service.settings import Settings
from service.traffic import InteractiveTraffic

log = logging.getLogger("dermserve")


@dataclass(frozen=True)
class Components:
    """The running parts the routes and the shutdown use."""

    runtime: ModelRuntime
    batcher: DynamicBatcher
    dataplane: DataPlane
    jobs: JobsService


#: ``builder(settings, metrics, shutdown_remaining_s)``: an async context manager yielding started
#: :class:`Components` and stopping them on exit (``shutdown_remaining_s()`` = seconds left to do so).
ComponentsBuilder = Callable[[Settings, Metrics, Callable[[], float]], AbstractAsyncContextManager[Components]]


async def load_model(settings: Settings) -> ModelRuntime:
    """Load and verify the model directory and warm it up (batch sizes 1 and ``max_batch_size``).

    Raises:
        ModelLoadError: the directory cannot be served (logged as ``model_load_failed``), or a site
            out-of-distribution threshold was measured on another model version
            (``DERMSERVE_OOD_THRESHOLD_MODEL_VERSION`` is not the manifest's ``version``; logged as
            ``ood_threshold_version_mismatch``).
        Exception: the warm-up inference failed (logged as ``warmup_failed``).
    """
    r = settings.runtime
    try:
        runtime = await asyncio.to_thread(
            ModelRuntime, r.model_dir, r.providers, r.intra_op_threads, r.inter_op_threads,
            settings.decode.max_image_pixels, allow_spinning=r.ort_allow_spinning,
            force_spinning_stop=r.ort_force_spinning_stop, cpu_mem_arena=r.ort_cpu_mem_arena)
    except ModelLoadError as exc:
        log.critical("refusing to start: the model directory %s cannot be served: %s", r.model_dir, exc,
                     extra={"event": "model_load_failed"})
        raise
    m = runtime.manifest
    log.info("model %s %s loaded (sha256 verified), input %dx%d, execution provider %s",
             m.name, m.version, m.input.height, m.input.width, runtime.provider,
             extra={"event": "model_loaded", "provider": runtime.provider})
    pinned = settings.referral.ood_threshold_model_version
    if pinned is not None and pinned != m.version:
        log.critical("refusing to start: DERMSERVE_OOD_THRESHOLD was measured on model version %r but %s %s is "
                     "served; measure the site threshold again on this version's ood_score and set "
                     "DERMSERVE_OOD_THRESHOLD_MODEL_VERSION to it", pinned, m.name, m.version,
                     extra={"event": "ood_threshold_version_mismatch"})
        raise ModelLoadError(f"ood_threshold was measured on model version {pinned!r}, not on the served "
                             f"{m.name} {m.version}")
    try:
        await asyncio.to_thread(runtime.warm_up, tuple(sorted({1, settings.batching.max_batch_size})))
    except Exception as exc:
        log.critical("refusing to start: warm-up inference failed: %r", exc, extra={"event": "warmup_failed"})
        raise
    return runtime


async def open_job_store(settings: Settings) -> JobStore:
    """The job store: ``jobs_database_url``, else SQLite in ``jobs_dir`` (failure logged as ``job_store_failed``)."""
    try:
        return await asyncio.to_thread(JobStore, settings.jobs.database_url or sqlite_url(settings.jobs.dir))
    except Exception as exc:
        log.critical("refusing to start: the job store cannot be opened: %r", exc, extra={"event": "job_store_failed"})
        raise


def make_batcher(settings: Settings, runtime: ModelRuntime, metrics: Metrics,
                 traffic: InteractiveTraffic) -> DynamicBatcher:
    """The batcher for ``runtime`` (not started): batching settings, plus the job share of each batch."""
    b, j = settings.batching, settings.jobs
    policy = BatchPolicy(b.max_batch_size, b.max_delay_s, background_per_batch=j.chunk_images,
                         background_per_batch_busy=j.images_per_batch_when_busy)
    limits = QueueLimits(b.max_queue_images, b.max_queue_bytes,
                         max_background_images=j.chunk_images * j.max_inflight_chunks)
    return DynamicBatcher(runtime.predict, policy, limits, request_timeout_s=b.request_timeout_s,
                          item_shape=(runtime.spec.height, runtime.spec.width, 3), observer=metrics, traffic=traffic,
                          inline_when_idle=b.inline_when_idle)


def _pool(stack: AsyncExitStack, threads: int, name: str) -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
    stack.callback(pool.shutdown, wait=False, cancel_futures=True)
    return pool


@asynccontextmanager
async def build_components(settings: Settings, metrics: Metrics,
                           shutdown_remaining_s: Callable[[], float]) -> AsyncIterator[Components]:
    """Build, start and (on exit) stop every part; see the module docstring.

    Raises:
        ModelLoadError, or the warm-up's or the job store's error: start-up failed; whatever had
            started is stopped again.
    """
    runtime = await load_model(settings)
    store = await open_job_store(settings)
    reports = FhirReports(settings.fhir)
    # the DICOM (pydicom) and FHIR (fhir.resources) codecs load now, not on some request's time
    await asyncio.to_thread(lambda: (load_formats(), reports.load()))
    async with AsyncExitStack() as stack:
        stack.push_async_callback(asyncio.to_thread, store.close)
        traffic = InteractiveTraffic(settings.batching.busy_window_s)
        batcher = make_batcher(settings, runtime, metrics, traffic)
        batcher.start()
        stack.push_async_callback(lambda: batcher.close(timeout_s=shutdown_remaining_s()))
        m, spec = runtime.manifest, runtime.spec
        answers = AnswerShaper(m, ReferralRule.resolve(m, settings.referral.malignant_threshold,
                                                       settings.referral.min_top_probability,
                                                       settings.referral.target_sensitivity), runtime.provider,
                               settings.referral.ood_policy, settings.referral.ood_threshold)
        if settings.referral.ood_threshold is not None and m.ood is not None:
            log.warning("out-of-distribution threshold %.4g from DERMSERVE_OOD_THRESHOLD replaces model %s %s's "
                        "%.4g (measured on this version, says DERMSERVE_OOD_THRESHOLD_MODEL_VERSION)",
                        settings.referral.ood_threshold, m.name, m.version, m.ood.threshold,
                        extra={"event": "ood_threshold_override"})
        elif settings.referral.ood_threshold is not None:
            log.warning("DERMSERVE_OOD_THRESHOLD is set but model %s %s has no out-of-distribution guard: ignored",
                        m.name, m.version, extra={"event": "ood_threshold_ignored"})
        decoder = ImageDecoder(spec, _pool(stack, settings.decode.threads, "dermserve-decode"), traffic,
                               inline_max_bytes=settings.decode.inline_max_bytes, model_idle=lambda: batcher.idle)
        # job images decode in their own single thread, one at a time in the gaps: never ahead of /predict
        job_decoder = ImageDecoder(spec, _pool(stack, 1, "dermserve-job-decode"), traffic,
                                   yield_wait_s=settings.jobs.yield_max_wait_s)
        runner = JobRunner(store, job_decoder, batcher, answers, settings.jobs,
                           on_stats=lambda s: metrics.job_stats(s.by_status, s.oldest_queued_age_s))
        await runner.start()
        # unfinished chunks get their claims released; one shutdown budget for all phases
        stack.push_async_callback(lambda: runner.stop(timeout_s=min(2.0, shutdown_remaining_s())))
        log.info("job store %s open, worker %s", store.engine.url.render_as_string(hide_password=True),
                 runner.worker_id, extra={"event": "jobs_ready"})
        metrics.model_info.labels(name=m.name, version=m.version, provider=runtime.provider).set(1)
        yield Components(runtime, batcher,
                         DataPlane(answers, decoder, batcher, traffic, settings.limits.max_images_per_request,
                                   reports=reports),
                         JobsService(store, job_decoder, runner, settings.jobs, reports=reports))
