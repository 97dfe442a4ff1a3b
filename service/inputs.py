"""What a request hands the data plane, and what can be wrong with it (no HTTP, no model).

Routes and protocol codecs turn request bodies into :class:`EncodedImage` objects; the decoder turns
those into pixels. The exceptions here are mapped to HTTP answers by :mod:`service.errors`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any


class RequestError(Exception):
    """Base class of request-handling errors: ``message`` and optional per-image ``detail``."""

    def __init__(self, message: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidInputError(RequestError):
    """The request's content is unusable: an undecodable image, bad base64, malformed tensor.

    ``detail`` lists per-image problems as :class:`schemas.api.ImageError` dicts
    (``index``, ``id``, ``reason``, ``message``). The request is rejected as a whole.
    """


class NoImagesError(RequestError):
    """The request holds no image."""


class TooManyImagesError(RequestError):
    """The request holds more images than its limit."""


class ModelNotFoundError(RequestError):
    """An Open Inference Protocol call named a model (or version) this server does not serve."""


@dataclass(frozen=True)
class EncodedImage:
    """One image as received: raw file bytes (multipart, binary tensors) or a base64 string (JSON).

    Exactly one of ``data`` / ``b64`` is set; ``error`` pre-records a problem found while parsing
    the request (e.g. a multipart field that is not a file) as ``(reason, message)``;
    ``media_type`` is what the client declared (a multipart part's Content-Type, lower case, no
    parameters), if anything: ``application/dicom`` picks the DICOM decoder (see
    :func:`service.decoder.format_decoder`).
    """

    data: bytes | None = None
    b64: str | None = None
    id: str | None = None
    error: tuple[str, str] | None = None
    media_type: str | None = None

    @property
    def declared_media_type(self) -> str | None:
        """``media_type``, else the media type of a base64 ``data:<type>;base64,`` URL (lower case)."""
        if self.media_type is not None:
            return self.media_type
        if self.b64 is not None and self.b64.startswith("data:"):
            comma = self.b64.find(",", 0, 256)
            if comma > 0:
                return self.b64[5:comma].split(";", 1)[0].strip().lower() or None
        return None

    @property
    def size(self) -> int:
        """Bytes (or base64 characters) as received."""
        return len(self.data if self.data is not None else self.b64 or "")

    def raw(self) -> bytes:
        """The file bytes (base64 decoded when needed).

        Raises:
            ValueError: invalid base64.
        """
        return self.data if self.data is not None else decode_base64(self.b64 or "")


def decode_base64(s: str) -> bytes:
    """Strict standard base64 (RFC 4648 §4) decoding; a ``data:...;base64,`` prefix is dropped.

    Raises:
        ValueError: not valid base64.
    """
    if s.startswith("data:"):
        head, sep, rest = s.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ValueError("a data URL must look like data:image/jpeg;base64,<data>")
        s = rest
    s = "".join(s.split())  # tolerate line-wrapped base64 (MIME style)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64: {exc}") from exc
