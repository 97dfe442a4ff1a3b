"""The ASGI application: ``create_app(settings) -> FastAPI``.

Lifespan: load the model directory (:class:`~service.runtime.ModelRuntime` verifies the sha256 of
``model.onnx`` against ``manifest.json``; on :class:`~service.runtime.ModelLoadError` the reason is
logged and startup fails, so uvicorn exits non-zero and a wrong model is never served), warm up,
start the decode pool and the dynamic batcher, then report ready. On shutdown readiness turns 503
at once, accepted work is drained within what is left of the ``shutdown_grace_s`` budget
(it starts at SIGTERM, see :mod:`service.__main__`), and the workers stop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from schemas.api import DISCLAIMER, InferenceRequest, JobCreateRequest, PredictRequest
from service.batching import DynamicBatcher
from service.dataplane import DataPlane
from service.errors import install_error_handlers
from service.jobs.plane import JobPlane
from service.jobs.runner import JobRunner
from service.jobs.store import JobStore, sqlite_url
from service.metrics import Metrics
from service.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from service.routes import health, jobs, metrics, model, predict, ui, v2
from service.routes.ui import STATIC_DIR
from service.settings import Settings, get_settings
from service.state import AppState

log = logging.getLogger("dermserve")

_DESCRIPTION = f"""
Batched inference for dermoscopic skin-lesion images: 7 HAM10000 classes (akiec, bcc, bkl, df,
mel, nv, vasc), temperature-calibrated probabilities and a referral recommendation.

**{DISCLAIMER}**

* `POST /predict` -- multipart (`images` file parts) or JSON (base64);
* `POST /jobs`, `GET /jobs/{id}`, `DELETE /jobs/{id}` -- asynchronous jobs for whole studies (durable,
  lower batching priority than `/predict`);
* `GET /model` -- what is served; `GET /health/live`, `GET /health/ready`; `GET /metrics`;
* `/v2/...` -- Open Inference Protocol V2 (KServe / Triton compatible).
"""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warmup_sizes(max_batch_size: int) -> tuple[int, ...]:
    return tuple(sorted({1, max_batch_size}))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI app.

    Args:
        settings: configuration; default :func:`service.settings.get_settings` (``DERMSERVE_*``).

    Returns:
        The app. ``app.state.dermserve`` is its :class:`~service.state.AppState`. The model is
        loaded when the lifespan starts (uvicorn startup), not here.
    """
    settings = settings or get_settings()
    state = AppState(settings=settings, metrics=Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from service.runtime import ModelLoadError, ModelRuntime  # onnxruntime only when serving

        if not is_loopback(settings.host) and not settings.api_keys:
            log.warning("binding to non-loopback host %s without api_keys: anyone who can reach this port "
                        "can use the service; set DERMSERVE_API_KEYS", settings.host)
        if settings.max_images_per_request > settings.max_queue_images:
            log.warning("max_images_per_request (%d) > max_queue_images (%d): larger requests can never be "
                        "queued and will always get 503", settings.max_images_per_request, settings.max_queue_images)
        try:
            runtime = await asyncio.to_thread(
                ModelRuntime, settings.model_dir, settings.providers, settings.intra_op_threads,
                settings.inter_op_threads, settings.max_image_pixels, allow_spinning=settings.ort_allow_spinning,
                force_spinning_stop=settings.ort_force_spinning_stop,
            )
        except ModelLoadError as exc:
            log.critical("refusing to start: the model directory %s cannot be served: %s", settings.model_dir, exc,
                         extra={"event": "model_load_failed"})
            raise
        m = runtime.manifest
        log.info("model %s %s loaded (sha256 verified), input %dx%d, execution provider %s",
                 m.name, m.version, m.input.height, m.input.width, runtime.provider,
                 extra={"event": "model_loaded", "provider": runtime.provider})
        try:
            await asyncio.to_thread(runtime.warm_up, _warmup_sizes(settings.max_batch_size))
        except Exception as exc:
            log.critical("refusing to start: warm-up inference failed: %r", exc, extra={"event": "warmup_failed"})
            raise
        # Everything started from here on is registered on the exit stack as it is created, so a failure
        # part-way through start-up (say, the job store cannot be opened) still stops the batcher thread and
        # the pools it already started; at shutdown the stack unwinds in reverse order of creation.
        async with AsyncExitStack() as stack:
            decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="dermserve-decode")
            stack.callback(decode_pool.shutdown, wait=False, cancel_futures=True)
            batcher = DynamicBatcher(
                runtime.predict_proba,
                max_batch_size=settings.max_batch_size,
                max_batch_delay_ms=settings.max_batch_delay_ms,
                max_queue_images=settings.max_queue_images,
                max_queue_bytes=settings.max_queue_bytes,
                max_background_images=settings.job_chunk_images * settings.job_max_inflight_chunks,
                max_background_per_batch=settings.job_chunk_images,
                max_background_per_batch_busy=settings.job_images_per_batch_when_busy,
                busy_window_ms=settings.interactive_busy_window_ms,
                inline_when_idle=settings.inline_infer_when_idle,
                request_timeout_ms=settings.request_timeout_ms,
                item_shape=(runtime.spec.height, runtime.spec.width, 3),
                observer=state.metrics,
            )
            batcher.start()
            stack.push_async_callback(lambda: batcher.close(timeout_s=state.shutdown_remaining_s()))
            state.runtime, state.batcher = runtime, batcher
            state.dataplane = DataPlane(
                m, runtime.spec, runtime.provider, batcher, decode_pool,
                max_images_per_request=settings.max_images_per_request,
                referral_malignant_threshold=settings.referral_malignant_threshold,
                referral_min_top_probability=settings.referral_min_top_probability,
                inline_decode_max_bytes=settings.inline_decode_max_bytes,
            )
            try:
                store = await asyncio.to_thread(
                    JobStore, settings.jobs_database_url or sqlite_url(settings.jobs_dir))
            except Exception as exc:
                log.critical("refusing to start: the job store cannot be opened: %r", exc,
                             extra={"event": "job_store_failed"})
                raise
            stack.push_async_callback(asyncio.to_thread, store.close)
            # job images decode in their own single thread: never queued ahead of /predict images
            job_decode_pool = ThreadPoolExecutor(1, thread_name_prefix="dermserve-job-decode")
            stack.callback(job_decode_pool.shutdown, wait=False, cancel_futures=True)
            runner = JobRunner(
                store, state.dataplane, batcher, chunk_images=settings.job_chunk_images,
                max_inflight=settings.job_max_inflight_chunks, lease_s=settings.job_lease_s,
                poll_interval_s=settings.job_poll_interval_s, sweep_interval_s=settings.job_sweep_interval_s,
                retention_s=settings.job_retention_s,
                on_stats=lambda s: state.metrics.job_stats(s.by_status, s.oldest_queued_age_s),
                decode_executor=job_decode_pool, yield_to_interactive_s=settings.job_yield_max_wait_ms / 1000.0,
                max_attempts=settings.job_max_attempts,
            )
            await runner.start()
            # unfinished chunks get their claims released; one shutdown budget for all phases
            stack.push_async_callback(lambda: runner.stop(timeout_s=min(2.0, state.shutdown_remaining_s())))
            state.jobs = JobPlane(store, state.dataplane, runner, settings.max_images_per_job, job_decode_pool,
                                  yield_to_interactive_s=settings.job_yield_max_wait_ms / 1000.0,
                                  max_concurrent_uploads=settings.max_concurrent_job_uploads)
            log.info("job store %s open, worker %s", store.engine.url.render_as_string(hide_password=True),
                     runner.worker_id, extra={"event": "jobs_ready"})
            state.metrics.model_info.labels(name=m.name, version=m.version, provider=runtime.provider).set(1)
            state.ready = True
            log.info("ready", extra={"event": "ready"})
            try:
                yield
            finally:
                state.begin_shutdown()  # no-op after SIGTERM (service.__main__ already drained the requests)
                log.info("shutting down: draining accepted work (up to %.1f s)", state.shutdown_remaining_s(),
                         extra={"event": "draining"})
        log.info("stopped", extra={"event": "stopped"})

    app = FastAPI(
        title="dermserve",
        version="0.1.0",
        description=_DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "predict", "description": "classify images"},
            {"name": "jobs", "description": "asynchronous jobs: submit a study, collect the results later"},
            {"name": "model", "description": "the served model"},
            {"name": "health", "description": "liveness and readiness (no authentication)"},
            {"name": "open inference protocol", "description": "KServe / Triton V2 REST protocol"},
            {"name": "metrics", "description": "Prometheus"},
        ],
    )
    app.state.dermserve = state
    install_error_handlers(app)

    for r in (health.router, predict.router, jobs.router, model.router, v2.open_router, v2.router, metrics.router,
              ui.router):
        app.include_router(r)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # middleware: the last added is the outermost
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes,
                       path_limits={"/jobs": settings.max_job_upload_bytes})
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)

    _install_openapi(app)
    return app


def _install_openapi(app: FastAPI) -> None:
    """Add the bodies documented via ``openapi_extra`` (PredictRequest, InferenceRequest) to components."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model_cls in (PredictRequest, InferenceRequest, JobCreateRequest):
            js = model_cls.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in js.pop("$defs", {}).items():
                comps.setdefault(name, sub)
            comps.setdefault(model_cls.__name__, js)
        # our 422 answers have the ErrorResponse shape, not FastAPI's default HTTPValidationError
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                resp = op.get("responses", {}).get("422")
                if resp:
                    resp["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
                    resp["description"] = "unusable input; `detail` names each failed image or field"
        comps.pop("HTTPValidationError", None)
        comps.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
