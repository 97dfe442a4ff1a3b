"""Request bodies of the routes: the Content-Type check, capped reading, JSON validation off the event
loop, and image uploads (multipart file parts named ``images`` or JSON base64), written once for
``POST /predict``, ``POST /jobs`` and the V2 routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from service.inputs import EncodedImage, InvalidInputError, TooManyImagesError
from service.routes.multipart import MultipartError, Part, TooManyPartsError, read_parts

JSON = "application/json"
MULTIPART = "multipart/form-data"
#: A DICOM Part 10 file (multipart part Content-Type; the format sniff finds it without one as well).
DICOM = "application/dicom"
#: The encodings of an image upload (``POST /predict``, ``POST /jobs``).
IMAGE_MEDIA_TYPES = (MULTIPART, JSON)
_IMAGE_MEDIA_HINT = "use multipart/form-data (file parts named 'images') or application/json"

BodyT = TypeVar("BodyT", bound=BaseModel)


def media_type(request: Request, accepted: Sequence[str] = IMAGE_MEDIA_TYPES, hint: str = _IMAGE_MEDIA_HINT) -> str:
    """The request's media type (lower case, no parameters; ``""`` when absent).

    Raises:
        UnsupportedMediaTypeError: not one of ``accepted`` (-> 415).
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in accepted:
        raise UnsupportedMediaTypeError(f"Content-Type {media or '(none)'!r} is not supported; {hint}")
    return media


async def read_capped(request: Request, max_bytes: int, what: str) -> bytes:
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


async def validate_json(model: type[BodyT], body: bytes) -> BodyT:
    """Validate JSON bytes against ``model`` off the event loop (bodies can be tens of MB).

    Raises:
        RequestValidationError: not valid JSON of that shape (-> 422 via the error table).
    """
    try:
        return await asyncio.to_thread(model.model_validate_json, body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


async def parse_json(request: Request, model: type[BodyT], max_bytes: int | None = None,
                     what: str = "JSON bodies") -> BodyT:
    """The body validated against ``model``; ``max_bytes`` (optional) caps it below the route's
    general limit (-> :class:`PayloadTooLargeError`)."""
    body = await request.body() if max_bytes is None else await read_capped(request, max_bytes, what)
    return await validate_json(model, body)


@dataclass(frozen=True)
class ImageBody:
    """An image upload: the images in order and the other fields (multipart parts, or the JSON body's
    top-level string fields as text parts)."""

    images: list[EncodedImage]
    fields: list[Part]

    def text(self, name: str, max_chars: int) -> str | None:
        """The text field ``name`` (the last one if repeated), or None.

        Raises:
            InvalidInputError: it is a file part or longer than ``max_chars``.
        """
        value = None
        for part in self.fields:
            if part.name == name:
                value = part.data.decode("utf-8", errors="replace")
                if part.filename is not None or len(value) > max_chars:
                    raise InvalidInputError(f"{name!r} must be a text field of at most {max_chars} characters")
        return value


async def read_image_body(request: Request, media: str, json_model: type[BodyT], *, max_images: int, max_bytes: int,
                          json_max_bytes: int | None = None, json_what: str = "JSON bodies",
                          max_field_bytes: int | None = None) -> ImageBody:
    """Read an image upload by its media type (from :func:`media_type`).

    Args:
        json_model: the JSON body's model (has ``images``; other string fields become text fields).
        max_images: file parts allowed (multipart; -> :class:`TooManyImagesError`).
        max_bytes: the body limit (bounds multipart text fields unless ``max_field_bytes`` is given).
        json_max_bytes, json_what: optional tighter cap for JSON bodies, and how the 413 names them.
    """
    if media == JSON:
        parsed: Any = await parse_json(request, json_model, json_max_bytes, json_what)
        fields = [Part(k, None, v.encode()) for k, v in parsed.model_dump(exclude={"images"}).items()
                  if isinstance(v, str)]
        return ImageBody([EncodedImage(b64=img.data, id=img.id) for img in parsed.images], fields)
    return await _multipart_images(request, max_images, max_field_bytes or max_bytes)


async def _multipart_images(request: Request, max_images: int, max_field_bytes: int) -> ImageBody:
    """The file parts named ``images`` (a text field named so becomes a per-image ``not_a_file`` error),
    and every other part.

    Raises:
        TooManyImagesError: more than ``max_images`` file parts (-> 413).
        InvalidInputError: a malformed body (-> 422).
    """
    try:
        parts = await read_parts(request, max_files=max_images, max_fields=max_images + 32,
                                 max_field_bytes=max_field_bytes)
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
            images.append(EncodedImage(data=part.data, id=part.filename or None, media_type=part.content_type))
        else:
            images.append(EncodedImage(error=("not_a_file", ("the 'images' part is a text field, not a file part "
                                                             "(use a filename in Content-Disposition)"))))
    return ImageBody(images, others)


def image_upload_openapi(json_schema: str, examples: dict[str, dict[str, Any]],
                         text_fields: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``openapi_extra`` documenting an image upload body in both encodings.

    Args:
        json_schema: the component name of the JSON body's schema.
        examples: JSON body examples (name -> ``{"summary", "value"}``).
        text_fields: extra multipart text fields (name -> JSON schema).
    """
    images = {"type": "array", "items": {"type": "string", "format": "binary"},
              "description": "one file part per image (JPEG, PNG, ..., or DICOM Part 10: part Content-Type "
                             "`application/dicom`, or detected by `DICM` at byte 128); the filename is echoed "
                             "back as `id`"}
    multipart = {"type": "object", "required": ["images"], "properties": {"images": images, **(text_fields or {})}}
    return {"requestBody": {"required": True, "content": {
        MULTIPART: {"schema": multipart, "encoding": {"images": {"contentType": f"image/*, {DICOM}"}}},
        JSON: {"schema": {"$ref": f"#/components/schemas/{json_schema}"}, "examples": examples},
    }}}
