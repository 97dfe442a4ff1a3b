"""The ASGI application: ``create_app(settings, build) -> FastAPI``.

Lifespan: ``build`` (default :func:`service.components.build_components`) loads the model directory
(:class:`~service.runtime.ModelRuntime` verifies the sha256 of ``model.onnx`` against
``manifest.json``; on failure the reason is logged and startup fails, so uvicorn exits non-zero and a
wrong model is never served), warms it up and starts every part; then the service reports ready.
On shutdown readiness turns 503 at once, accepted work is drained within what is left of the
``shutdown_grace_s`` budget (it starts at SIGTERM, see :mod:`service.__main__`), and the parts stop.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from schemas.api import DISCLAIMER, InferenceRequest, JobCreateRequest, PredictRequest
from service.components import ComponentsBuilder, build_components
from service.errors import install_error_handlers, rule_for
from service.metrics import Metrics
from service.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from service.reports import FHIR_JSON, example_bundle
from service.routes import health, jobs, metrics, model, predict, ui, v2
from service.routes.ui import STATIC_DIR
from service.settings import Settings, get_settings
from service.state import AppState

log = logging.getLogger("dermserve")

_DESCRIPTION = f"""
Batched inference for dermoscopic skin-lesion images: 7 HAM10000 classes (akiec, bcc, bkl, df,
mel, nv, vasc), temperature-calibrated probabilities and a referral recommendation.

**{DISCLAIMER}**

* `POST /predict` -- multipart (`images` file parts) or JSON (base64); JPEG, PNG, ... or DICOM in; JSON or,
  with `Accept: application/fhir+json`, an HL7 FHIR R4 Bundle out;
* `POST /jobs`, `GET /jobs/{id}`, `DELETE /jobs/{id}` -- asynchronous jobs for whole studies (durable,
  lower batching priority than `/predict`);
* `GET /model` -- what is served; `GET /health/live`, `GET /health/ready`; `GET /metrics`;
* `/v2/...` -- Open Inference Protocol V2 (KServe / Triton compatible).
"""


_TAGS = [
    {"name": "predict", "description": "classify images"},
    {"name": "jobs", "description": "asynchronous jobs: submit a study, collect the results later"},
    {"name": "model", "description": "the served model"},
    {"name": "health", "description": "liveness and readiness (no authentication)"},
    {"name": "open inference protocol", "description": "KServe / Triton V2 REST protocol"},
    {"name": "metrics", "description": "Prometheus"},
]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_about_settings(settings: Settings) -> None:
    """Log the configurations that work but are probably not meant."""
    if not is_loopback(settings.server.host) and not settings.access.api_keys:
        log.warning("binding to non-loopback host %s without api_keys: anyone who can reach this port "
                    "can use the service; set DERMSERVE_API_KEYS", settings.server.host)
    limit, queue = settings.limits.max_images_per_request, settings.batching.max_queue_images
    if limit > queue:
        log.warning("max_images_per_request (%d) > max_queue_images (%d): larger requests can never be "
                    "queued and will always get 503", limit, queue)


def create_app(settings: Settings | None = None, build: ComponentsBuilder = build_components) -> FastAPI:
    """Build the FastAPI app.

    Args:
        settings: configuration; default :func:`service.settings.get_settings` (``DERMSERVE_*``).
        build: builds, starts and stops the service's parts (see :mod:`service.components`).

    Returns:
        The app. ``app.state.dermserve`` is its :class:`~service.state.AppState`. The parts are built
        when the lifespan starts (uvicorn startup), not here.
    """
    settings = settings or get_settings()
    state = AppState(settings=settings, metrics=Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warn_about_settings(settings)
        async with build(settings, state.metrics, state.shutdown_remaining_s) as components:
            state.components = components
            state.ready = True
            log.info("ready", extra={"event": "ready"})
            try:
                yield
            finally:
                state.begin_shutdown()  # no-op after SIGTERM (service.__main__ already drained the requests)
                log.info("shutting down: draining accepted work (up to %.1f s)", state.shutdown_remaining_s(),
                         extra={"event": "draining"})
        log.info("stopped", extra={"event": "stopped"})

    app = FastAPI(title="dermserve", version="0.1.0", description=_DESCRIPTION, lifespan=lifespan,
                  openapi_tags=_TAGS)
    app.state.dermserve = state
    install_error_handlers(app)
    for r in (health.router, predict.router, jobs.router, model.router, v2.open_router, v2.router, metrics.router,
              ui.router):
        app.include_router(r)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_middleware(app, settings, state.metrics)
    _install_openapi(app)
    return app


def _install_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """CORS (only when origins are configured), the body-size limit, the request context (outermost)."""
    # the last added is the outermost
    if settings.access.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.access.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.limits.max_upload_bytes,
                       path_limits={"/jobs": settings.jobs.max_upload_bytes})
    app.add_middleware(RequestContextMiddleware, metrics=metrics)


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
                    if resp.get("description") == "Validation Error":  # FastAPI's own, for path/query parameters
                        resp["description"] = rule_for(RequestValidationError).meaning
        comps.pop("HTTPValidationError", None)
        comps.pop("ValidationError", None)
        _add_fhir_examples(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_fhir_examples(schema: dict) -> None:
    """Give every documented FHIR answer (``application/fhir+json``) a real Bundle as its example."""
    example = None
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            content = op.get("responses", {}).get("200", {}).get("content", {})
            if FHIR_JSON in content:
                example = example or example_bundle()
                content[FHIR_JSON]["example"] = example
