"""Lean ``multipart/form-data`` reading for image uploads (python-multipart's streaming parser).

Starlette's ``request.form()`` wraps every file part in an ``UploadFile`` backed by a
``SpooledTemporaryFile`` and awaits each write and read; for the common single small image per
request that machinery costs about as much as the parsing itself (profiled: ~0.5 ms of event-loop
time per single-image ``/predict``). Here python-multipart's ``MultipartParser`` (the same parser
Starlette uses) feeds plain byte buffers: file parts become ``bytes``, text fields ``str``.
Limits match Starlette's semantics (``max_files``, ``max_fields``, ``max_field_bytes`` per text
field); the body size itself is bounded by :class:`service.middleware.BodySizeLimitMiddleware`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request


class MultipartError(ValueError):
    """The body is not usable multipart/form-data (message says why)."""


class TooManyPartsError(MultipartError):
    """More file parts (``kind="files"``) or text fields (``kind="fields"``) than allowed."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Part:
    """One part: ``filename`` is None for a text field (then ``data`` is its UTF-8 bytes);
    ``content_type`` is the part's own Content-Type (lower case, no parameters), if it sent one."""

    name: str
    filename: str | None
    data: bytes
    content_type: str | None = None


@dataclass
class _Current:
    disposition: bytes = b""
    content_type: bytes = b""
    header_name: bytes = b""
    header_value: bytes = b""
    name: str = ""
    filename: str | None = None
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class _Collector:
    """python-multipart callbacks that collect the parts, enforcing the count and field-size limits."""

    def __init__(self, max_files: int, max_fields: int, max_field_bytes: int) -> None:
        self.max_files, self.max_fields, self.max_field_bytes = max_files, max_fields, max_field_bytes
        self.parts: list[Part] = []
        self.cur = _Current()
        self.files = self.fields = 0

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self.cur = _Current()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.cur.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.cur.header_value += data[start:end]

    def on_header_end(self) -> None:
        cur = self.cur
        name = cur.header_name.lower()
        if name == b"content-disposition":
            cur.disposition = cur.header_value
        elif name == b"content-type":
            cur.content_type = cur.header_value
        cur.header_name, cur.header_value = b"", b""

    def on_headers_finished(self) -> None:
        cur = self.cur
        _, options = parse_options_header(cur.disposition)
        if b"name" not in options:
            raise MultipartError('a part has no Content-Disposition "name"')
        cur.name = _decode(options[b"name"])
        if b"filename" in options:
            cur.filename = _decode(options[b"filename"])
            self.files += 1
            if self.files > self.max_files:
                raise TooManyPartsError(f"too many files: at most {self.max_files}", "files")
        else:
            self.fields += 1
            if self.fields > self.max_fields:
                raise TooManyPartsError(f"too many fields: at most {self.max_fields}", "fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        cur = self.cur
        cur.size += end - start
        if cur.filename is None and cur.size > self.max_field_bytes:
            raise MultipartError(f"the text field {cur.name!r} is over {self.max_field_bytes} bytes")
        cur.chunks.append(data[start:end])

    def on_part_end(self) -> None:
        cur = self.cur
        media = _decode(cur.content_type).split(";", 1)[0].strip().lower() or None
        self.parts.append(Part(cur.name, cur.filename, b"".join(cur.chunks), media))


async def read_parts(request: Request, *, max_files: int, max_fields: int, max_field_bytes: int) -> list[Part]:
    """Parse the request's multipart body (streamed) into :class:`Part` objects, in body order.

    Args:
        request: a request whose Content-Type is ``multipart/form-data; boundary=...``.
        max_files: file parts (parts with a ``filename``) allowed; one more -> :class:`TooManyPartsError`.
        max_fields: text fields allowed; one more -> :class:`TooManyPartsError`.
        max_field_bytes: bytes per text field at most (file parts are bounded by the body limit).

    Raises:
        MultipartError: no boundary, a part without a ``name``, a text field over
            ``max_field_bytes``, or a malformed body.
        TooManyPartsError: over ``max_files`` / ``max_fields``.
    """
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("missing boundary in the multipart Content-Type")
    collector = _Collector(max_files, max_fields, max_field_bytes)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise MultipartError(f"invalid multipart data: {exc}") from None
    return collector.parts
