"""The one table mapping exceptions to HTTP answers, the handlers that apply it, and the OpenAPI
error responses derived from it.

Every non-2xx answer of the service (the dermserve API and the Open Inference Protocol routes
alike) has the body :class:`schemas.api.ErrorResponse`: ``{"error": str, "detail": [...]?,
"request_id": str}``. :data:`ERROR_TABLE` gives, per exception type, the status, what it means
(the text of the OpenAPI docs, via :func:`error_responses`) and extra headers; anything not in it
is a 500 that is logged with its traceback and leaks no details.

422 (not 400) is used for content that parsed as HTTP but cannot be used, consistently for the
dermserve API and the OIP routes, so clients can tell "fix your input" (4xx) apart by code alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.batching import BatcherClosed, DeadlineExceeded, InferenceError, QueueFullError
from service.inputs import InvalidInputError, ModelNotFoundError, NoImagesError, RequestError, TooManyImagesError
from service.jobs import JobFinishedError, JobNotFoundError, JobNotSucceededError
from service.preprocessing import ImageDecodeError
from service.reports import ReportError

log = logging.getLogger(__name__)


class PayloadTooLargeError(Exception):
    """The request body is larger than its limit (bytes): ``max_upload_bytes``, or
    ``max_job_upload_bytes`` for ``POST /jobs``."""


class UnsupportedMediaTypeError(Exception):
    """The request's Content-Type is not one this route accepts."""


class NotAcceptableError(Exception):
    """None of the media types in the request's ``Accept`` header is one this route answers with."""


class AuthenticationError(Exception):
    """Missing or wrong API key (``Authorization: Bearer <key>`` or ``X-API-Key``)."""


class NotReadyError(Exception):
    """The model is not loaded/warmed up yet, or the service is shutting down."""


@dataclass(frozen=True)
class ErrorRule:
    """How one exception type becomes an HTTP answer.

    Attributes:
        status: HTTP status code.
        meaning: what the answer means for the client (the OpenAPI response description).
        headers: optional function of the exception returning extra response headers.
        expose: False -> the body says ``fallback`` instead of the exception's message.
        fallback: the generic message used when ``expose`` is False.
    """

    status: int
    meaning: str = ""
    headers: Callable[[Any], dict[str, str]] | None = None
    expose: bool = True
    fallback: str = ""


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo 'input' (it may be megabytes of base64) or 'ctx' (may hold non-JSON objects).
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]


_RETRY_5 = {"Retry-After": "5"}

#: exception type -> rule. Looked up along the exception's MRO, so subclasses inherit rules.
ERROR_TABLE: dict[type[BaseException], ErrorRule] = {
    ImageDecodeError: ErrorRule(422, "an image cannot be decoded; `detail` names it (index, id, reason)"),
    InvalidInputError: ErrorRule(422, "unusable input: undecodable image, invalid base64 or malformed tensor; "
                                      "`detail` names each failed image (index, id, reason)"),
    RequestValidationError: ErrorRule(422, "the request (body, path or query) does not have the expected shape; "
                                           "`detail` lists loc / msg / type per problem"),
    NoImagesError: ErrorRule(422, "the request holds no image"),
    TooManyImagesError: ErrorRule(413, "too many images in the request"),
    PayloadTooLargeError: ErrorRule(413, "the body is larger than its limit"),
    UnsupportedMediaTypeError: ErrorRule(415, "unsupported Content-Type"),
    NotAcceptableError: ErrorRule(406, "none of the media types in `Accept` is offered "
                                       "(application/json or application/fhir+json)"),
    ReportError: ErrorRule(422, "the results cannot go into one FHIR report (the images name different "
                                "patients); `detail` gives the reason"),
    AuthenticationError: ErrorRule(401, "missing or wrong API key", headers=lambda e: {"WWW-Authenticate": "Bearer"}),
    ModelNotFoundError: ErrorRule(404, "unknown model name or version"),
    JobNotFoundError: ErrorRule(404, "no such job for this API key (unknown, expired, or another key's job)"),
    JobFinishedError: ErrorRule(409, "the job has already finished"),
    JobNotSucceededError: ErrorRule(409, "the job has not succeeded (yet): its FHIR report exists once it has"),
    QueueFullError: ErrorRule(503, "the queue is full; retry after `Retry-After` seconds (estimated)",
                              headers=lambda e: {"Retry-After": str(e.retry_after_s)}),
    BatcherClosed: ErrorRule(503, "shutting down", headers=lambda e: _RETRY_5),
    NotReadyError: ErrorRule(503, "not ready yet (model loading, warm-up) or shutting down",
                             headers=lambda e: _RETRY_5),
    DeadlineExceeded: ErrorRule(504, "the request deadline passed before inference started"),
    InferenceError: ErrorRule(500, "the model call failed (logged)"),
    RequestError: ErrorRule(422, "unusable request"),
    StarletteHTTPException: ErrorRule(0, headers=lambda e: dict(e.headers or {})),  # status from the exception
}

_INTERNAL = ErrorRule(500, "internal error (logged with the request id)", expose=False,
                      fallback="internal server error (see the server log for this request id)")

#: What a route reading an image upload can answer besides success (for :func:`error_responses`).
UPLOAD_ERRORS: tuple[type[BaseException], ...] = (
    AuthenticationError, TooManyImagesError, PayloadTooLargeError, UnsupportedMediaTypeError, InvalidInputError,
    NoImagesError, RequestValidationError, NotReadyError)
#: ... and one that classifies the upload at once.
INFERENCE_ERRORS = (*UPLOAD_ERRORS, QueueFullError, DeadlineExceeded, InferenceError)


def rule_for(exc: BaseException | type[BaseException]) -> ErrorRule:
    """The :data:`ERROR_TABLE` rule for an exception or exception type (nearest class in its MRO),
    else a generic 500."""
    exc_type = exc if isinstance(exc, type) else type(exc)
    for cls in exc_type.__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return _INTERNAL


def error_body(exc: BaseException, request_id: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` for an exception, per :data:`ERROR_TABLE`."""
    rule = rule_for(exc)
    status = rule.status
    detail: list[dict[str, Any]] | None = None
    if isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        message = str(exc.detail)
    elif isinstance(exc, RequestValidationError):
        message = "the request body does not have the expected shape"
        detail = _validation_detail(exc)
    elif isinstance(exc, RequestError):
        message = exc.message
        detail = exc.detail
    elif isinstance(exc, ImageDecodeError):
        message = exc.detail
        detail = [{"index": 0, "id": None, "reason": exc.reason, "message": exc.detail}]
    else:
        message = str(exc) if rule.expose else rule.fallback
    body: dict[str, Any] = {"error": message or type(exc).__name__}
    if detail is not None:
        body["detail"] = detail
    body["request_id"] = request_id
    headers = rule.headers(exc) if rule.headers else {}
    return status, body, headers


def error_response(exc: BaseException, request_id: str | None) -> JSONResponse:
    """A :class:`JSONResponse` with the :class:`schemas.api.ErrorResponse` body for ``exc``."""
    status, body, headers = error_body(exc, request_id)
    if status >= 500 and status != 503:
        log.error("request failed with %d: %s", status, body["error"], exc_info=exc if status == 500 else None)
    return JSONResponse(status_code=status, content=body, headers=headers)


async def _handler(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, getattr(request.state, "request_id", None))


def install_error_handlers(app: FastAPI) -> None:
    """Register :data:`ERROR_TABLE` (and a catch-all 500) as the app's exception handlers."""
    for exc_type in ERROR_TABLE:
        app.add_exception_handler(exc_type, _handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _handler)


def error_responses(*raised: type[BaseException]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can raise ``raised``: per status, the :class:`ErrorResponse`
    model and the :data:`ERROR_TABLE` meanings of those exceptions."""
    from schemas.api import ErrorResponse

    meanings: dict[int, list[str]] = {}
    for exc_type in raised:
        rule = rule_for(exc_type)
        meanings.setdefault(rule.status, [])
        if rule.meaning not in meanings[rule.status]:
            meanings[rule.status].append(rule.meaning)
    return {status: {"model": ErrorResponse, "description": "; ".join(texts)}
            for status, texts in sorted(meanings.items())}
