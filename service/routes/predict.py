"""``POST /predict``: multipart form-data (file parts named ``images``) or JSON, same path."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from schemas.api import PredictRequest, PredictResponse
from service.dataplane import DataPlane, EncodedImage, InvalidInputError, TooManyImagesError
from service.errors import PayloadTooLargeError, UnsupportedMediaTypeError, error_responses
from service.routes.multipart import MultipartError, Part, TooManyPartsError, read_parts
from service.routes.deps import ClientDisconnected, cancel_on_disconnect, get_dataplane, get_state, require_api_key
from service.state import AppState

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "one file part per image (JPEG, PNG, ...); the filename is echoed back as `id`",
        }
    },
}

_DESCRIPTION = """
Classify one or more dermoscopic images into the 7 HAM10000 classes. **Decision support, not a
diagnosis.**

Two request encodings on the same path, chosen by `Content-Type`:

* `multipart/form-data` -- one file part per image, all named `images`
  (`curl -F images=@a.jpg -F images=@b.jpg http://127.0.0.1:8000/predict`);
* `application/json` -- `{"images": [{"id": "optional", "data": "<base64>"}]}`.

Predictions come back in input order. `probabilities` are temperature-calibrated and keyed by class
code. **Referral rule:** `referral_recommended` is true when `malignant_probability`
(= P(mel) + P(bcc) + P(akiec)) is at or above the malignant threshold, or when the top-1
probability is below the minimum top-1 probability; thresholds come from the model manifest
(see `GET /model`) unless overridden by settings. `referral_reasons` names the conditions that fired.

A request with any unusable image is rejected whole (422) and `detail` lists every failed image by
`index` (and `id`) with a `reason`.
"""

_OPENAPI_EXTRA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA, "encoding": {"images": {"contentType": "image/*"}}},
            "application/json": {
                "schema": {"$ref": "#/components/schemas/PredictRequest"},
                "examples": {
                    "two_images": {
                        "summary": "two base64 images, the first with an id",
                        "value": PredictRequest.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
                    }
                },
            },
        },
    }
}


BodyT = TypeVar("BodyT", bound=BaseModel)


async def _read_capped(request: Request, max_bytes: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it passes ``max_bytes`` (never buffered beyond)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"the body has {declared} bytes; {what} are limited to {max_bytes} bytes")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > max_bytes:
            raise PayloadTooLargeError(f"the body has more than {max_bytes} bytes; {what} are limited to {max_bytes} "
                                       "bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_json(request: Request, model: type[BodyT], max_bytes: int | None = None,
                      what: str = "JSON bodies") -> BodyT:
    """Validate a JSON body against ``model`` off the event loop (bodies can be tens of MB).

    ``max_bytes`` (optional) caps the body below the route's general limit (-> 413).

    Raises:
        RequestValidationError: the body is not valid JSON of that shape (-> 422 via the error table).
        PayloadTooLargeError: the body is over ``max_bytes``.
    """
    body = await request.body() if max_bytes is None else await _read_capped(request, max_bytes, what)
    try:
        return await asyncio.to_thread(model.model_validate_json, body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


async def _images_from_json(request: Request) -> list[EncodedImage]:
    parsed = await _parse_json(request, PredictRequest)
    return [EncodedImage(b64=img.data, id=img.id) for img in parsed.images]


async def _images_from_multipart(request: Request, max_images: int, max_bytes: int,
                                 max_part_size: int | None = None) -> tuple[list[EncodedImage], list[Part]]:
    """The file parts named ``images`` as :class:`EncodedImage` (in order), and every other part.

    ``max_part_size`` bounds text fields (default ``max_bytes``); file parts are bounded by the
    body limit. A text field named ``images`` becomes a per-image ``not_a_file`` error.

    Raises:
        TooManyImagesError: more than ``max_images`` file parts (-> 413).
        InvalidInputError: a malformed body (-> 422).
    """
    try:
        parts = await read_parts(request, max_files=max_images, max_fields=max_images + 32,
                                 max_field_bytes=max_part_size or max_bytes)
    except TooManyPartsError as exc:
        if exc.kind == "files":
            raise TooManyImagesError(f"the request holds more than {max_images} files; "
                                     f"at most {max_images} images are accepted per request") from None
        raise InvalidInputError(f"malformed multipart body: {exc}") from None
    except MultipartError as exc:
        raise InvalidInputError(f"malformed multipart body: {exc}") from None
    images: list[EncodedImage] = []
    others: list[Part] = []
    for part in parts:
        if part.name != "images":
            others.append(part)
        elif part.filename is not None:
            images.append(EncodedImage(data=part.data, id=part.filename or None))
        else:
            images.append(EncodedImage(error=("not_a_file", "the 'images' part is a text field, not a file part "
                                              "(use a filename in Content-Disposition)")))
    return images, others


@router.post(
    "/predict",
    operation_id="predict",
    summary="Classify skin-lesion images (multipart or JSON)",
    description=_DESCRIPTION,
    response_model=PredictResponse,
    responses=error_responses(401, 413, 415, 422, 500, 503, 504),
    openapi_extra=_OPENAPI_EXTRA,
)
async def predict(request: Request, dp: DataPlane = Depends(get_dataplane),
                  state: AppState = Depends(get_state)) -> PredictResponse | Response:
    """Dispatch on Content-Type, hand the images to the dataplane, return its answer."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in ("application/json", "multipart/form-data"):
        raise UnsupportedMediaTypeError(
            f"Content-Type {media or '(none)'!r} is not supported; use multipart/form-data (file parts named "
            "'images') or application/json"
        )
    dp.refuse_if_full()  # overload: when the queue is already full, 503 before spending CPU on the body
    if media == "application/json":
        images = await _images_from_json(request)
    else:
        images, _ = await _images_from_multipart(request, dp.max_images_per_request, state.settings.max_upload_bytes)
    try:
        result = await cancel_on_disconnect(request, dp.predict(images))
    except ClientDisconnected:
        return Response(status_code=499)
    # serialised once by pydantic's Rust core; returning the model would make FastAPI validate it
    # again, convert it to a dict and json.dumps that (response_model above still documents the shape)
    return Response(result.model_dump_json(), media_type="application/json")
