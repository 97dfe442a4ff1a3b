"""The one table mapping exceptions to HTTP answers, and the handlers that apply it.

Every non-2xx answer of the service (the dermserve API and the Open Inference Protocol routes
alike) has the body :class:`schemas.api.ErrorResponse`: ``{"error": str, "detail": [...]?,
"request_id": str}``.

Status choices (see :data:`ERROR_TABLE`):

==============================================  ======  =============================================
exception                                       status  notes
==============================================  ======  =============================================
ImageDecodeError, InvalidInputError             422     undecodable image, bad base64, malformed
                                                        tensor, bad JSON shape; ``detail`` names each
                                                        failed image (index, id, reason, message)
RequestValidationError (FastAPI/pydantic)       422     ``detail``: loc / msg / type per problem
NoImagesError                                   422
TooManyImagesError                              413     more than ``max_images_per_request``
PayloadTooLargeError                            413     body over ``max_upload_bytes`` (``max_job_upload_bytes`` for ``POST /jobs``)
UnsupportedMediaTypeError                       415
AuthenticationError                             401     ``WWW-Authenticate: Bearer``
ModelNotFoundError                              404     OIP: unknown model name/version
JobNotFoundError                                404     unknown/expired job, or another API key's job
JobFinishedError                                409     DELETE /jobs/{id} of a finished job
QueueFullError                                  503     ``Retry-After`` (seconds, estimated)
BatcherClosed, NotReadyError                    503     ``Retry-After: 5``
DeadlineExceeded                                504     ``request_timeout_ms`` passed before start
InferenceError                                  500     the model call failed (logged)
starlette HTTPException                         as is   e.g. 404 unknown path, 405 method
anything else                                   500     logged with traceback; no details leak
==============================================  ======  =============================================

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
from service.dataplane import (
    DataPlaneError,
    InvalidInputError,
    ModelNotFoundError,
    NoImagesError,
    TooManyImagesError,
)
from service.jobs import JobFinishedError, JobNotFoundError
from service.preprocessing import ImageDecodeError

log = logging.getLogger(__name__)


class PayloadTooLargeError(Exception):
    """The request body is larger than its limit (bytes): ``max_upload_bytes``, or
    ``max_job_upload_bytes`` for ``POST /jobs``."""


class UnsupportedMediaTypeError(Exception):
    """The request's Content-Type is not one this route accepts."""


class AuthenticationError(Exception):
    """Missing or wrong API key (``Authorization: Bearer <key>`` or ``X-API-Key``)."""


class NotReadyError(Exception):
    """The model is not loaded/warmed up yet, or the service is shutting down."""


@dataclass(frozen=True)
class ErrorRule:
    """How one exception type becomes an HTTP answer.

    Attributes:
        status: HTTP status code.
        headers: optional function of the exception returning extra response headers.
        expose: False -> the body says ``fallback`` instead of the exception's message.
        fallback: the generic message used when ``expose`` is False.
    """

    status: int
    headers: Callable[[Any], dict[str, str]] | None = None
    expose: bool = True
    fallback: str = ""


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo 'input' (it may be megabytes of base64) or 'ctx' (may hold non-JSON objects).
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]


#: exception type -> rule. Looked up along the exception's MRO, so subclasses inherit rules.
ERROR_TABLE: dict[type[BaseException], ErrorRule] = {
    ImageDecodeError: ErrorRule(422),
    InvalidInputError: ErrorRule(422),
    RequestValidationError: ErrorRule(422),
    NoImagesError: ErrorRule(422),
    TooManyImagesError: ErrorRule(413),
    PayloadTooLargeError: ErrorRule(413),
    UnsupportedMediaTypeError: ErrorRule(415),
    AuthenticationError: ErrorRule(401, headers=lambda e: {"WWW-Authenticate": "Bearer"}),
    ModelNotFoundError: ErrorRule(404),
    JobNotFoundError: ErrorRule(404),
    JobFinishedError: ErrorRule(409),
    QueueFullError: ErrorRule(503, headers=lambda e: {"Retry-After": str(e.retry_after_s)}),
    BatcherClosed: ErrorRule(503, headers=lambda e: {"Retry-After": "5"}),
    NotReadyError: ErrorRule(503, headers=lambda e: {"Retry-After": "5"}),
    DeadlineExceeded: ErrorRule(504),
    InferenceError: ErrorRule(500),
    DataPlaneError: ErrorRule(422),
    StarletteHTTPException: ErrorRule(0, headers=lambda e: dict(e.headers or {})),  # status from the exception
}

_INTERNAL = ErrorRule(500, expose=False, fallback="internal server error (see the server log for this request id)")


def rule_for(exc: BaseException) -> ErrorRule:
    """The :data:`ERROR_TABLE` rule for ``exc`` (nearest class in its MRO), else a generic 500."""
    for cls in type(exc).__mro__:
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
    elif isinstance(exc, DataPlaneError):
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


#: OpenAPI ``responses`` entries for documenting error answers on routes.
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` mapping documenting the given statuses with the :class:`ErrorResponse` model."""
    from schemas.api import ErrorResponse

    text = {
        401: "missing or wrong API key", 404: "unknown model", 409: "conflict with the resource's state",
        413: "too many images or body too large",
        415: "unsupported Content-Type", 422: "undecodable image / invalid base64 / malformed body "
        "(detail names each failed image index)", 500: "inference failed",
        503: "not ready, shutting down, or queue full (see Retry-After)", 504: "deadline exceeded before inference",
    }
    return {s: {"model": ErrorResponse, "description": text.get(s, "error")} for s in statuses}
