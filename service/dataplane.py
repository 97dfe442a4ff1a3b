"""Request handling without HTTP: decode images, call the batcher, shape the answers.

Routes hand this layer already-parsed inputs (bytes or base64 strings, OIP tensors) and turn its
results and exceptions into HTTP answers via :mod:`service.errors`. Nothing here knows about
status codes, headers or FastAPI.

Decoding and resizing (Pillow) run in a thread pool of ``decode_threads`` workers, off the event
loop and outside the batcher: the model worker thread only ever sees ready ``uint8`` arrays.

Referral rule (documented in :class:`schemas.api.Prediction` as well)::

    malignant_probability = sum of calibrated P(c) for c in manifest referral.malignant_classes
                            (= P(mel) + P(bcc) + P(akiec) for HAM10000)
    referral_recommended  = malignant_probability >= malignant_threshold
                            OR top-1 probability  <  min_top_probability

Both thresholds come from ``manifest.json`` (``referral.malignant_probability_threshold``,
``referral.min_top_probability``), overridable by the settings ``referral_malignant_threshold``
and ``referral_min_top_probability``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import contextlib
import math
import struct
import time
from collections.abc import Awaitable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.api import (
    ClassOut,
    ImageError,
    InferenceRequest,
    InferenceResponse,
    InputOut,
    MetadataTensor,
    ModelInfo,
    ModelMetadataResponse,
    ModelRef,
    Prediction,
    PredictResponse,
    ReferralOut,
    ResponseOutput,
)
from schemas.manifest import Manifest
from service.batching import DeadlineExceeded, DynamicBatcher, QueueFullError
from service.preprocessing import ImageDecodeError, PreprocessSpec, preprocess_bytes

log = logging.getLogger(__name__)

#: Name of the BYTES input (encoded images) and of the output in the Open Inference Protocol.
OIP_BYTES_INPUT = "images"
OIP_OUTPUT = "probabilities"

REASON_MALIGNANT = "malignant_probability_at_or_above_threshold"
REASON_UNCERTAIN = "top_probability_below_minimum"


# ------------------------------------------------------------------------------------ errors
class DataPlaneError(Exception):
    """Base class of request-handling errors (mapped to HTTP answers in :mod:`service.errors`)."""

    def __init__(self, message: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidInputError(DataPlaneError):
    """The request's content is unusable: an undecodable image, bad base64, malformed tensor.

    ``detail`` lists per-image problems as :class:`schemas.api.ImageError` dicts
    (``index``, ``id``, ``reason``, ``message``). The request is rejected as a whole.
    """


class NoImagesError(DataPlaneError):
    """The request holds no image."""


class TooManyImagesError(DataPlaneError):
    """The request holds more than ``max_images_per_request`` images."""


class ModelNotFoundError(DataPlaneError):
    """An Open Inference Protocol call named a model (or version) this server does not serve."""


# ------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class EncodedImage:
    """One image as received: raw file bytes (multipart) or a base64 string (JSON).

    Exactly one of ``data`` / ``b64`` is set; ``error`` pre-records a problem found by the
    route while parsing (e.g. a multipart field that is not a file).
    """

    data: bytes | None = None
    b64: str | None = None
    id: str | None = None
    error: tuple[str, str] | None = None  # (reason, message)


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


def referral_decision(
    probabilities: dict[str, float], malignant_classes: Sequence[str], malignant_threshold: float,
    min_top_probability: float,
) -> tuple[float, bool, list[str]]:
    """Apply the referral rule to one image's calibrated probabilities.

    Args:
        probabilities: calibrated probability per class code (sums to 1).
        malignant_classes: codes counted as malignant (manifest ``referral.malignant_classes``).
        malignant_threshold: refer when the malignant probability is >= this (0..1).
        min_top_probability: refer when the top-1 probability is < this (0..1).

    Returns:
        ``(malignant_probability, referral_recommended, reasons)`` where ``reasons`` holds
        ``"malignant_probability_at_or_above_threshold"`` and/or ``"top_probability_below_minimum"``.
    """
    malignant = float(sum(probabilities.get(c, 0.0) for c in malignant_classes))
    malignant = min(1.0, max(0.0, malignant))
    top = max(probabilities.values())
    reasons: list[str] = []
    if malignant >= malignant_threshold:
        reasons.append(REASON_MALIGNANT)
    if top < min_top_probability:
        reasons.append(REASON_UNCERTAIN)
    return malignant, bool(reasons), reasons


# ------------------------------------------------------------------------------------ dataplane
class DataPlane:
    """Everything ``/predict``, ``/model`` and ``/v2/*`` do, minus HTTP.

    Args:
        manifest: the served model's manifest (class order, thresholds, version).
        spec: preprocessing spec (input size in pixels, resize method, pixel limits).
        provider: the active onnxruntime execution provider (for :meth:`model_info`).
        batcher: started :class:`~service.batching.DynamicBatcher` whose ``run_batch`` returns
            calibrated probabilities float32 ``(B, K)`` in manifest class order.
        decode_executor: thread pool for decoding/resizing (``decode_threads`` workers).
        max_images_per_request: more images -> :class:`TooManyImagesError`.
        referral_malignant_threshold: overrides the manifest's threshold when not None.
        referral_min_top_probability: overrides the manifest's minimum when not None.
        inline_decode_max_bytes: idle fast path: a request with one encoded image of at most this
            many bytes, arriving when nothing else is in flight, is decoded on the event loop
            instead of in the pool (0 = never).
    """

    def __init__(
        self,
        manifest: Manifest,
        spec: PreprocessSpec,
        provider: str,
        batcher: DynamicBatcher,
        decode_executor: Executor,
        max_images_per_request: int = 64,
        referral_malignant_threshold: float | None = None,
        referral_min_top_probability: float | None = None,
        inline_decode_max_bytes: int = 0,
    ) -> None:
        self.manifest = manifest
        self.spec = spec
        self.provider = provider
        self.batcher = batcher
        self.decode_executor = decode_executor
        self.max_images_per_request = max_images_per_request
        self.codes = manifest.class_codes
        self.names = {c.code: c.name for c in manifest.classes}
        self.malignant_classes = list(manifest.referral.malignant_classes)
        overridden = referral_malignant_threshold is not None or referral_min_top_probability is not None
        self.malignant_threshold = (
            referral_malignant_threshold if referral_malignant_threshold is not None
            else manifest.referral.malignant_probability_threshold
        )
        self.min_top_probability = (
            referral_min_top_probability if referral_min_top_probability is not None
            else manifest.referral.min_top_probability
        )
        self.referral_source = "settings" if overridden else "manifest"
        self.model_ref = ModelRef(name=manifest.name, version=manifest.version)
        self._reserved = 0  # images admitted (see admit) and still being decoded, not yet in the queue
        self.inline_decode_max_bytes = inline_decode_max_bytes
        self._interactive = 0  # interactive requests (/predict, V2 infer) between decode start and answer
        self._interactive_idle = asyncio.Event()
        self._interactive_idle.set()

    # ------------------------------------------------------------------ admission and deadline
    @contextlib.contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """Reserve room for ``n`` images in the batcher's bounded queue *before* decoding them.

        Decoding costs far more than inference for this model, so checking the queue only at
        ``submit`` (after decoding) lets an overload pile up unbounded decode work and refuses
        excess late. Here the images being decoded count against ``max_queue_images`` (and
        ``max_queue_bytes``, at their decoded size) together with the queued ones, so excess is
        refused at once, before any decoding. The reservation ends when the block exits; callers
        hand the arrays to ``submit`` right after, without an ``await`` in between.

        Raises:
            QueueFullError: no room now (-> 503 with Retry-After), nothing reserved.
        """
        self.refuse_if_full(n)
        self._reserved += n
        try:
            yield
        finally:
            self._reserved -= n

    def refuse_if_full(self, n: int = 1) -> None:
        """Raise :class:`QueueFullError` (counted as refused) unless ``n`` more images fit now.

        Routes call it with ``n=1`` before reading a request body: when the queue is already full,
        the refusal then costs no body parsing at all. The count is checked again by :meth:`admit`.
        """
        b = self.batcher
        b.note_interactive()  # an interactive request is starting: shrink job batches now
        waiting = b.queue_depth + self._reserved + n
        item_bytes = self.spec.height * self.spec.width * 3
        if waiting > b.max_queue_images or (b.max_queue_bytes is not None and waiting * item_bytes > b.max_queue_bytes):
            b.stats.refused_images += n
            b.observer.refused(n, "queue_full")
            raise QueueFullError(
                f"the inference queue is full ({b.queue_depth} images waiting and {self._reserved} being decoded, "
                f"at most {b.max_queue_images}; this request has {n if n > 1 else 'at least 1'}); retry later",
                retry_after_s=b._retry_after_estimate(n),  # noqa: SLF001 - same estimate as the batcher's refusals
            )

    @contextlib.contextmanager
    def interactive(self) -> Iterator[None]:
        """Count an interactive request (decode, queue, inference) while the block runs; background
        work waits for the count to reach 0 (see :meth:`wait_interactive_idle`)."""
        self._interactive += 1
        self._interactive_idle.clear()
        try:
            yield
        finally:
            self._interactive -= 1
            if self._interactive == 0:
                self._interactive_idle.set()

    async def wait_interactive_idle(self, max_wait_s: float) -> bool:
        """Wait until no interactive request is being decoded or inferred, for ``max_wait_s`` seconds
        at most (a bound, so background work still progresses under sustained load).

        Returns:
            True if idle, False if the wait timed out.
        """
        if self._interactive == 0:
            return True
        try:
            await asyncio.wait_for(self._interactive_idle.wait(), max_wait_s)
            return True
        except TimeoutError:
            return False

    async def within(self, deadline: float, work: Awaitable[Any]) -> Any:
        """Await ``work`` until ``deadline`` (``time.monotonic()``), else :class:`DeadlineExceeded`."""
        try:
            return await asyncio.wait_for(work, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request was not decoded within its deadline ({self.batcher.request_timeout_s * 1000:.0f} ms)"
            ) from None

    async def _infer(self, arrays: list[np.ndarray], deadline: float) -> np.ndarray:
        """Submit decoded arrays with what is left of the request deadline."""
        remaining_ms = (deadline - time.monotonic()) * 1000.0
        if remaining_ms <= 0:
            raise DeadlineExceeded(
                f"the request deadline ({self.batcher.request_timeout_s * 1000:.0f} ms) passed while decoding"
            )
        return await self.batcher.submit(arrays, timeout_ms=remaining_ms)

    # ------------------------------------------------------------------ /predict
    def check_count(self, n: int) -> None:
        """Raise :class:`NoImagesError` for 0 and :class:`TooManyImagesError` above the limit."""
        if n == 0:
            raise NoImagesError("the request holds no image: send file parts named 'images' or JSON {'images': [...]}")
        if n > self.max_images_per_request:
            raise TooManyImagesError(
                f"the request holds {n} images; at most {self.max_images_per_request} are accepted per request"
            )

    async def predict(self, images: Sequence[EncodedImage]) -> PredictResponse:
        """Classify encoded images.

        Args:
            images: the request's images in order.

        Returns:
            A :class:`PredictResponse` with one prediction per image, in input order.

        Raises:
            NoImagesError, TooManyImagesError: image count out of range.
            InvalidInputError: any image undecodable (``detail`` lists each: index, id, reason).
            QueueFullError: no room in the queue, checked before decoding (see :meth:`admit`).
            DeadlineExceeded: ``request_timeout_ms`` (counted from here, decoding included) passed
                before every image was started.
            InferenceError, BatcherClosed: from the batcher.
        """
        self.check_count(len(images))
        deadline = time.monotonic() + self.batcher.request_timeout_s
        with self.interactive():
            with self.admit(len(images)):
                arrays = await self.within(deadline, self.decode_all(images))
            probs = await self._infer(arrays, deadline)
        return PredictResponse(
            model=self.model_ref,
            predictions=[self.shape_prediction(i, img.id, probs[i]) for i, img in enumerate(images)],
        )

    async def decode_all(self, images: Sequence[EncodedImage], executor: Executor | None = None, *,
                         yield_to_interactive_s: float | None = None,
                         max_total_wait_s: float | None = None) -> list[np.ndarray]:
        """Decode + resize every image in the thread pool (all of them, to report every error).

        ``executor`` overrides the decode pool (asynchronous jobs use their own, so that a big job
        never queues ahead of interactive requests in the shared pool).

        ``yield_to_interactive_s`` (background work): decode one image at a time, each only once no
        interactive request is in flight (waiting at most that many seconds per image), so a job's
        decoding runs in the gaps between ``/predict`` requests instead of competing for the cores.
        ``max_total_wait_s`` caps the waiting of the whole call (seconds; then it stops waiting).

        Idle fast path: one image of at most ``inline_decode_max_bytes`` bytes, with no other
        interactive request in flight and the batcher idle, is decoded on the event loop itself.

        Returns:
            N uint8 arrays of shape ``(spec.height, spec.width, 3)``.

        Raises:
            InvalidInputError: at least one image failed; ``detail`` has one entry per failure.
        """
        loop = asyncio.get_running_loop()
        pool = executor or self.decode_executor
        if (executor is None and len(images) == 1 and self._interactive <= 1 and self.batcher.idle
                and len(images[0].data or images[0].b64 or "") <= self.inline_decode_max_bytes):
            # idle fast path: a lone small image is decoded right here (~1 ms for 200x150): a
            # thread round trip costs about as much on a VM, and nothing else is waiting
            results = [self._decode_one(images[0])]
        elif yield_to_interactive_s is None:
            results = await asyncio.gather(*(loop.run_in_executor(pool, self._decode_one, img) for img in images))
        else:
            results = []
            budget_end = None if max_total_wait_s is None else time.monotonic() + max_total_wait_s
            for img in images:
                if budget_end is None or time.monotonic() < budget_end:
                    await self.wait_interactive_idle(yield_to_interactive_s)
                results.append(await loop.run_in_executor(pool, self._decode_one, img))
        errors = [
            ImageError(index=i, id=img.id, reason=r[0], message=r[1]).model_dump()
            for i, (img, r) in enumerate(zip(images, results))
            if isinstance(r, tuple)
        ]
        if errors:
            raise InvalidInputError(
                f"{len(errors)} of {len(images)} images could not be used; the request was rejected as a whole",
                detail=errors,
            )
        return list(results)  # type: ignore[arg-type]

    def _decode_one(self, img: EncodedImage) -> np.ndarray | tuple[str, str]:
        """Worker-thread body: bytes/base64 -> uint8 (H, W, 3), or ``(reason, message)``."""
        if img.error is not None:
            return img.error
        data = img.data
        if data is None:
            try:
                data = decode_base64(img.b64 or "")
            except ValueError as exc:
                return ("invalid_base64", str(exc))
        try:
            return preprocess_bytes(data, self.spec)
        except ImageDecodeError as exc:
            return (exc.reason, exc.detail)

    def shape_prediction(self, index: int, image_id: str | None, probs: np.ndarray) -> Prediction:
        """Turn one row of calibrated probabilities float32 ``(K,)`` into a :class:`Prediction`."""
        p = {code: float(v) for code, v in zip(self.codes, probs)}
        top = int(np.argmax(probs))
        malignant, refer, reasons = referral_decision(
            p, self.malignant_classes, self.malignant_threshold, self.min_top_probability
        )
        return Prediction(
            id=image_id, index=index, label=self.codes[top], label_name=self.names[self.codes[top]],
            probability=float(probs[top]), probabilities=p, malignant_probability=malignant,
            referral_recommended=refer, referral_reasons=reasons,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------ /model
    def model_info(self) -> ModelInfo:
        """Summary of the manifest plus the active execution provider."""
        m = self.manifest
        metrics = m.metrics.get("test", m.metrics) if isinstance(m.metrics, dict) else {}
        return ModelInfo(
            name=m.name, version=m.version, created_at=m.created_at.isoformat(), sha256=m.sha256,
            classes=[ClassOut(code=c.code, name=c.name, malignant=c.code in self.malignant_classes) for c in m.classes],
            input=InputOut(height=m.input.height, width=m.input.width, channels=m.input.channels,
                           dtype=m.input.dtype, color_order=m.input.color_order, resize_method=m.input.resize_method),
            calibration_temperature=m.calibration.temperature,
            referral=ReferralOut(malignant_classes=self.malignant_classes,
                                 malignant_probability_threshold=self.malignant_threshold,
                                 min_top_probability=self.min_top_probability,
                                 source=self.referral_source),  # type: ignore[arg-type]
            metrics=metrics,
            execution_provider=self.provider,
        )

    # ------------------------------------------------------------------ Open Inference Protocol V2
    def check_model(self, name: str, version: str | None = None) -> None:
        """Raise :class:`ModelNotFoundError` unless ``name`` (and ``version``) is the served model."""
        if name != self.manifest.name or (version is not None and version != self.manifest.version):
            served = f"{self.manifest.name} (version {self.manifest.version})"
            raise ModelNotFoundError(f"unknown model {name!r}{'' if version is None else f' version {version!r}'}; "
                                     f"this server serves {served}")

    def v2_metadata(self) -> ModelMetadataResponse:
        """OIP model metadata: inputs ``images`` BYTES ``[-1]`` and ``<input name>`` UINT8 ``[-1, H, W, 3]``."""
        m = self.manifest
        h, w = self.spec.height, self.spec.width
        return ModelMetadataResponse(
            name=m.name, versions=[m.version], platform="onnxruntime_onnx",
            inputs=[
                MetadataTensor(name=OIP_BYTES_INPUT, datatype="BYTES", shape=[-1],
                               parameters={"content": "encoded image files (JPEG, PNG, ...); base64 strings in JSON"}),
                MetadataTensor(name=m.input.name, datatype="UINT8", shape=[-1, h, w, 3],
                               parameters={"content": "RGB pixels 0..255 at the model input size; FP32 also accepted"}),
            ],
            outputs=[MetadataTensor(name=OIP_OUTPUT, datatype="FP32", shape=[-1, len(self.codes)],
                                    parameters={"classes": ",".join(self.codes), "calibrated": True})],
        )

    async def v2_infer(self, request: InferenceRequest, binary: bytes = b"") -> tuple[InferenceResponse, bytes | None]:
        """Run an OIP inference request.

        Every input contributes images in order: a ``BYTES`` input of shape ``[N]`` (or ``[N, 1]``)
        holds N encoded image files (base64 strings in JSON, raw bytes with the binary tensor data
        extension); a ``UINT8`` or ``FP32`` input of shape ``[N, H, W, 3]`` (H, W = the model input
        size) holds RGB pixels 0..255 (FP32 values are rounded to the nearest integer). The single
        output ``probabilities`` is FP32 ``[N_total, K]``, calibrated, in manifest class order.

        Args:
            request: the parsed JSON part of the request.
            binary: the bytes after the JSON header (binary tensor data extension), else ``b""``.

        Returns:
            ``(response, binary_output)``: ``binary_output`` is the little-endian FP32 data when
            the client asked for binary output (``binary_data`` / ``binary_data_output``); then
            the response's output carries ``parameters.binary_data_size`` and no ``data``.

        Raises:
            InvalidInputError: malformed tensors, unknown datatype, undecodable images.
            NoImagesError, TooManyImagesError, and the batcher's errors.
        """
        want_binary = bool((request.parameters or {}).get("binary_data_output", False))
        if request.outputs:
            for o in request.outputs:
                if o.name != OIP_OUTPUT:
                    raise InvalidInputError(f"unknown output {o.name!r}; this model has one output {OIP_OUTPUT!r}")
                if (o.parameters or {}).get("binary_data") is not None:
                    want_binary = bool(o.parameters["binary_data"])  # type: ignore[index]

        loop = asyncio.get_running_loop()
        # converting a large JSON tensor costs real CPU time: keep it off the event loop
        encoded, pixel_rows = await loop.run_in_executor(self.decode_executor, self._collect_inputs, request, binary)
        n_total = len(encoded) + len(pixel_rows)
        self.check_count(n_total)
        deadline = time.monotonic() + self.batcher.request_timeout_s
        with self.interactive():
            with self.admit(n_total):
                decoded = await self.within(deadline, self.decode_all(encoded)) if encoded else []
            arrays: list[np.ndarray] = [None] * n_total  # type: ignore[list-item]
            pixel_positions = {pos for pos, _ in pixel_rows}
            for pos, row in pixel_rows:
                arrays[pos] = row
            it = iter(decoded)
            for pos in range(n_total):
                if pos not in pixel_positions:
                    arrays[pos] = next(it)
            probs = await self._infer(arrays, deadline)
        probs = np.ascontiguousarray(probs, dtype="<f4")
        out = ResponseOutput(name=OIP_OUTPUT, shape=list(probs.shape), datatype="FP32",
                             parameters={"classes": ",".join(self.codes)})
        binary_out = None
        if want_binary:
            binary_out = probs.tobytes()
            out.parameters["binary_data_size"] = len(binary_out)  # type: ignore[index]
        else:
            out.data = [float(v) for v in probs.ravel()]
        resp = InferenceResponse(model_name=self.manifest.name, model_version=self.manifest.version,
                                 id=request.id, outputs=[out])
        return resp, binary_out

    def _collect_inputs(self, request: InferenceRequest,
                        binary: bytes) -> tuple[list[EncodedImage], list[tuple[int, np.ndarray]]]:
        """Split OIP inputs into encoded images and pixel rows (with their output positions)."""
        encoded: list[EncodedImage] = []
        pixel_rows: list[tuple[int, np.ndarray]] = []  # (position, (H, W, 3) uint8)
        offset = 0
        for inp in request.inputs:
            size = (inp.parameters or {}).get("binary_data_size")
            raw: bytes | None = None
            if size is not None:
                if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                    raise InvalidInputError(f"input {inp.name!r}: binary_data_size {size} exceeds the binary data sent")
                raw = binary[offset: offset + size]
                offset += size
            elif inp.data is None:
                raise InvalidInputError(f"input {inp.name!r} has neither 'data' nor parameters.binary_data_size")
            if inp.datatype == "BYTES":
                elements = self._bytes_elements(inp.name, inp.shape, inp.data, raw)
                encoded.extend(elements)
            elif inp.datatype in ("UINT8", "FP32"):
                arr = self._pixel_tensor(inp.name, inp.shape, inp.datatype, inp.data, raw)
                for row in arr:
                    pixel_rows.append((len(encoded) + len(pixel_rows), row))
            else:
                raise InvalidInputError(
                    f"input {inp.name!r} has datatype {inp.datatype}; use BYTES (encoded images) or UINT8/FP32 "
                    f"[N, {self.spec.height}, {self.spec.width}, 3]"
                )
        if offset != len(binary):
            raise InvalidInputError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")

        return encoded, pixel_rows

    def _bytes_elements(self, name: str, shape: list[int], data: list[Any] | None,
                        raw: bytes | None) -> list[EncodedImage]:
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or any(d < 0 for d in shape):
            raise InvalidInputError(f"input {name!r}: BYTES shape must be [N] or [N, 1], got {shape}")
        n = shape[0]
        elements: list[EncodedImage] = []
        if raw is not None:
            pos = 0
            while pos < len(raw):
                if pos + 4 > len(raw):
                    raise InvalidInputError(f"input {name!r}: truncated BYTES length prefix")
                (length,) = struct.unpack_from("<I", raw, pos)
                pos += 4
                if pos + length > len(raw):
                    raise InvalidInputError(f"input {name!r}: BYTES element longer than the binary data")
                elements.append(EncodedImage(data=raw[pos: pos + length]))
                pos += length
        else:
            for el in _flatten(data):
                if not isinstance(el, str):
                    raise InvalidInputError(f"input {name!r}: BYTES elements must be base64 strings in JSON")
                elements.append(EncodedImage(b64=el))
        if len(elements) != n:
            raise InvalidInputError(f"input {name!r}: shape says {n} elements but {len(elements)} were sent")
        return elements

    def _pixel_tensor(self, name: str, shape: list[int], datatype: str, data: list[Any] | None,
                      raw: bytes | None) -> np.ndarray:
        h, w = self.spec.height, self.spec.width
        if len(shape) != 4 or shape[1:] != [h, w, 3] or shape[0] < 0:
            raise InvalidInputError(f"input {name!r}: tensor shape must be [N, {h}, {w}, 3] (the model input size), "
                                    f"got {shape}")
        count = math.prod(shape)
        dtype = np.dtype("<u1") if datatype == "UINT8" else np.dtype("<f4")
        try:
            if raw is not None:
                if len(raw) != count * dtype.itemsize:
                    raise ValueError(f"{len(raw)} bytes for {count} {datatype} elements")
                arr = np.frombuffer(raw, dtype=dtype)
            else:
                flat = list(_flatten(data))
                if len(flat) != count:
                    raise ValueError(f"{len(flat)} values for shape {shape}")
                arr = np.asarray(flat, dtype=np.float64)
                if datatype == "UINT8" and (not np.all(arr == np.round(arr))):
                    raise ValueError("UINT8 values must be integers")
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"input {name!r}: {exc}") from exc
        if not np.all(np.isfinite(arr)) or arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise InvalidInputError(f"input {name!r}: pixel values must be within 0..255")
        if arr.dtype != np.uint8:
            arr = np.rint(arr).astype(np.uint8)
        return arr.reshape(shape)


def _flatten(data: Any):
    """Yield the leaves of a nested list (OIP allows row-major flat or nested ``data``)."""
    if isinstance(data, list):
        for el in data:
            yield from _flatten(el)
    else:
        yield data
