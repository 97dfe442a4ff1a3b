"""The image decoder: encoded images -> the one preprocessing function -> ``uint8`` arrays (no HTTP,
no batching). ``/predict``, ``POST /jobs``, the job runner and the V2 ``BYTES`` input all decode here.

One image: base64 (if it came as text) -> :func:`format_decoder` (the format sniff) -> that
format's decoder -> a :class:`DecodedImage` (pixels ``uint8 (H, W, 3)`` at the model input size, the
client's ``id`` and optional ``metadata``), or a per-image error ``(reason, message)``. A request's
images are decoded all of them (so that every failure is reported), then the request is refused
whole if any failed.

Formats: JPEG, PNG and the rest of what Pillow opens go through :func:`service.preprocessing.preprocess_bytes`
(the function the trainer and the exporter use too). :data:`FORMATS` is the one place another
format plugs in, tried before that default: DICOM Part 10 is registered there as
``ImageFormat("dicom", is_dicom, preprocess_dicom + its DicomRefs as metadata ``{"dicom": refs}``,
media_types=("application/dicom",))`` (:mod:`service.codecs.dicom`): an image goes to it when the
client declared ``application/dicom`` (multipart part Content-Type, ``data:`` URL) or when its bytes
hold ``DICM`` at byte 128. Its pixels end in the same resize function as every other image
(:func:`service.preprocessing.resize_to_array`; JPEG Baseline frames even in the same JPEG decode).
pydicom takes ~0.2 s to import: the codec is imported on first use, and :func:`load_formats` (called
at start-up) does that before the first request.

Where decoding runs (decoding costs more CPU than inference for this model):

- **pool** (default): a thread pool, off the event loop;
- **idle fast path** (``inline_max_bytes``): one small image, arriving when no other interactive
  request is in flight and the model is idle, is decoded on the event loop itself (~1 ms; a thread
  round trip costs about as much on a VM, and nothing else is waiting);
- **yield mode** (``yield_wait_s``, for background work): one image at a time, each once no
  interactive request is in flight (waiting at most ``yield_wait_s`` seconds per image), so job
  decoding runs in the gaps between ``/predict`` requests instead of competing for the cores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from schemas.api import ImageError
from service.inputs import EncodedImage, InvalidInputError
from service.preprocessing import ImageDecodeError, PreprocessSpec, preprocess_bytes
from service.traffic import InteractiveTraffic

#: A format decoder: encoded bytes + spec -> (pixels ``uint8 (H, W, 3)`` at the spec's size, metadata);
#: raises :class:`~service.preprocessing.ImageDecodeError` (its ``reason`` and ``detail`` reach the client).
FormatDecoder = Callable[[bytes, PreprocessSpec], tuple[np.ndarray, Mapping[str, Any]]]


@dataclass(frozen=True)
class DecodedImage:
    """One image ready for the model.

    Attributes:
        pixels: ``uint8 (H, W, 3)`` RGB at the model input size.
        id: the client's id for the image (multipart filename, JSON ``id``), if any.
        metadata: what the format carried for the answer (e.g. ``{"dicom": DicomRefs}``, whose UIDs
            an answer may echo); empty for JPEG/PNG and for raw pixel tensors.
    """

    pixels: np.ndarray
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dicom(self) -> Any | None:
        """The :class:`~service.codecs.dicom.DicomRefs` of an image decoded from DICOM, else None."""
        return self.metadata.get("dicom")

    def uids(self) -> dict[str, str | None]:
        """The DICOM UIDs an answer echoes (``study_instance_uid``, ``series_instance_uid``,
        ``sop_instance_uid``); empty for other images. Never the patient fields."""
        refs = self.dicom
        return refs.uids() if refs is not None else {}


@dataclass(frozen=True)
class ImageFormat:
    """A format besides the default: its name, how to recognise its bytes, how to decode them, and
    the declared media types that select it whatever the bytes look like."""

    name: str
    sniff: Callable[[bytes], bool]
    decode: FormatDecoder
    media_types: tuple[str, ...] = ()


def decode_raster(data: bytes, spec: PreprocessSpec) -> tuple[np.ndarray, Mapping[str, Any]]:
    """The default: JPEG, PNG, ... via the shared preprocessing function; no metadata."""
    return preprocess_bytes(data, spec), {}


def _dicom_codec() -> ModuleType:
    """:mod:`service.codecs.dicom`, imported on first use (pydicom; see :func:`load_formats`)."""
    from service.codecs import dicom

    return dicom


def sniff_dicom(data: bytes) -> bool:
    """DICOM Part 10 bytes (``DICM`` at byte 128): :func:`service.codecs.dicom.is_dicom`."""
    return _dicom_codec().is_dicom(data)


def decode_dicom(data: bytes, spec: PreprocessSpec) -> tuple[np.ndarray, Mapping[str, Any]]:
    """One DICOM object -> model-input pixels and ``{"dicom": DicomRefs}`` (UIDs to echo; the
    PatientID only for a FHIR subject). Refusals raise
    :class:`~service.codecs.dicom.DicomDecodeError` (an ``ImageDecodeError``: 422 per image)."""
    pixels, refs = _dicom_codec().preprocess_dicom(data, spec)
    return pixels, {"dicom": refs}


#: Formats tried in order before :func:`decode_raster` (see the module docstring).
FORMATS: list[ImageFormat] = [
    ImageFormat("dicom", sniff_dicom, decode_dicom, media_types=("application/dicom",)),
]


def load_formats() -> None:
    """Import the registered formats' codecs now (blocking, ~0.2 s for pydicom): called at start-up, so
    that no request pays for the import (and pydicom's logging is tamed before any request)."""
    _dicom_codec()


def format_decoder(data: bytes, media_type: str | None = None) -> FormatDecoder:
    """The decoder for ``data``: the first registered format that ``media_type`` (as declared by the
    client) names or whose sniff accepts the bytes, else the default."""
    for fmt in FORMATS:
        if (media_type is not None and media_type in fmt.media_types) or fmt.sniff(data):
            return fmt.decode
    return decode_raster


def decode_one(img: EncodedImage, spec: PreprocessSpec) -> DecodedImage | tuple[str, str]:
    """Decode one image (blocking; runs in a worker thread or inline): the image, or ``(reason, message)``."""
    if img.error is not None:
        return img.error
    try:
        data = img.raw()
    except ValueError as exc:
        return ("invalid_base64", str(exc))
    try:
        pixels, metadata = format_decoder(data, img.declared_media_type)(data, spec)
    except ImageDecodeError as exc:
        return (exc.reason, exc.detail)
    return DecodedImage(pixels, img.id, metadata)


def raise_if_failed(images: Sequence[EncodedImage], results: Sequence[DecodedImage | tuple[str, str]]) -> None:
    """Raise :class:`InvalidInputError` naming every failed image (index, id, reason, message)."""
    errors = [ImageError(index=i, id=img.id, reason=r[0], message=r[1]).model_dump()
              for i, (img, r) in enumerate(zip(images, results)) if isinstance(r, tuple)]
    if errors:
        raise InvalidInputError(
            f"{len(errors)} of {len(images)} images could not be used; the request was rejected as a whole",
            detail=errors,
        )


class ImageDecoder:
    """Decodes a request's images with one :class:`PreprocessSpec`, in a thread pool.

    Args:
        spec: model input size, resize method and safety limits.
        pool: thread pool for decoding (the service gives interactive and job decoding their own).
        traffic: interactive requests in flight (idle fast path, yield mode).
        inline_max_bytes: idle fast path threshold in bytes (0 = never decode on the event loop).
        model_idle: returns True when no model call is queued or running (idle fast path).
        yield_wait_s: yield mode (background work): seconds to wait for a gap per image; None = off.
    """

    def __init__(self, spec: PreprocessSpec, pool: Executor, traffic: InteractiveTraffic, *,
                 inline_max_bytes: int = 0, model_idle: Callable[[], bool] = lambda: True,
                 yield_wait_s: float | None = None) -> None:
        self.spec = spec
        self.pool = pool
        self.traffic = traffic
        self.inline_max_bytes = inline_max_bytes
        self.model_idle = model_idle
        self.yield_wait_s = yield_wait_s

    def _inline_ok(self, images: Sequence[EncodedImage]) -> bool:
        """Idle fast path: one small image, no other interactive request in flight, the model idle."""
        return (len(images) == 1 and images[0].size <= self.inline_max_bytes and self.traffic.in_flight <= 1
                and self.model_idle())

    async def decode(self, images: Sequence[EncodedImage], *,
                     max_total_wait_s: float | None = None) -> list[DecodedImage]:
        """Decode every image (pool, idle fast path or yield mode: see the module docstring).

        Args:
            images: the request's images, in order.
            max_total_wait_s: yield mode: caps the waiting for gaps of the whole call (seconds; then
                the rest decodes without waiting).

        Returns:
            One :class:`DecodedImage` per image, in order.

        Raises:
            InvalidInputError: at least one image failed; ``detail`` has one entry per failure.
        """
        loop = asyncio.get_running_loop()
        if self.yield_wait_s is None and self._inline_ok(images):
            results = [decode_one(images[0], self.spec)]
        elif self.yield_wait_s is None:
            results = await asyncio.gather(*(loop.run_in_executor(self.pool, decode_one, img, self.spec)
                                             for img in images))
        else:
            results = []
            budget_end = None if max_total_wait_s is None else time.monotonic() + max_total_wait_s
            for img in images:
                if budget_end is None or time.monotonic() < budget_end:
                    await self.traffic.wait_idle(self.yield_wait_s)
                results.append(await loop.run_in_executor(self.pool, decode_one, img, self.spec))
        raise_if_failed(images, results)
        return list(results)  # type: ignore[arg-type]
