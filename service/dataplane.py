"""Request handling without HTTP: what ``/predict``, ``/model`` and ``/v2/*`` do, as orchestration only.

One request: check the image count -> count it as interactive traffic -> reserve room in the
batcher's queue (refused at once when full) -> decode (:mod:`service.decoder`) within the request
deadline -> submit to the batcher -> shape the answers (:mod:`service.answers`, or the V2 codec
:mod:`service.codecs.v2`). Routes hand this layer parsed inputs and turn its results and exceptions
into HTTP answers (:mod:`service.errors`); nothing here knows about status codes or FastAPI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from schemas.api import (
    InferenceRequest,
    InferenceResponse,
    ModelInfo,
    ModelMetadataResponse,
    PredictResponse,
)
from service.answers import AnswerShaper
from service.batching import DeadlineExceeded, DynamicBatcher, Reservation
from service.codecs import v2
from service.decoder import DecodedImage, ImageDecoder
from service.inputs import EncodedImage, ModelNotFoundError, NoImagesError, TooManyImagesError
from service.outputs import ModelOutput, as_model_output
from service.reports import FhirReports
from service.traffic import InteractiveTraffic


class DataPlane:
    """Everything ``/predict``, ``/model`` and ``/v2/*`` do, minus HTTP.

    Args:
        answers: shapes predictions and the model summary (knows the manifest).
        decoder: the interactive image decoder (its pool, the idle fast path).
        batcher: the started batcher; its ``run_batch`` returns a :class:`~service.outputs.ModelOutput`.
        traffic: interactive traffic, counted here per request.
        max_images_per_request: more images -> :class:`TooManyImagesError`.
        reports: builds FHIR reports (``POST /predict`` with ``Accept: application/fhir+json``).
    """

    def __init__(self, answers: AnswerShaper, decoder: ImageDecoder, batcher: DynamicBatcher,
                 traffic: InteractiveTraffic, max_images_per_request: int = 64, *,
                 reports: FhirReports | None = None) -> None:
        self.answers = answers
        self.reports = reports or FhirReports()
        self.manifest = answers.manifest
        self.decoder = decoder
        self.batcher = batcher
        self.traffic = traffic
        self.max_images_per_request = max_images_per_request

    # ------------------------------------------------------------------ the common path
    def refuse_if_full(self) -> None:
        """Before a body is read: note the interactive request (job batches shrink at once) and refuse
        it with :class:`~service.batching.QueueFullError` when the queue is already full."""
        self.traffic.note()
        self.batcher.admission.check(1, at_least=True)

    def check_count(self, n: int) -> None:
        """Raise :class:`NoImagesError` for 0 and :class:`TooManyImagesError` above the limit."""
        if n == 0:
            raise NoImagesError("the request holds no image: send file parts named 'images' or JSON {'images': [...]}")
        if n > self.max_images_per_request:
            raise TooManyImagesError(
                f"the request holds {n} images; at most {self.max_images_per_request} are accepted per request"
            )

    async def _run(self, encoded: Sequence[EncodedImage],
                   inputs: v2.V2Inputs | None = None) -> tuple[list[DecodedImage], ModelOutput]:
        """Decode and infer one request's images; ``inputs`` adds V2 pixel rows (already decoded).

        Raises:
            NoImagesError, TooManyImagesError: image count out of range.
            QueueFullError: no room in the queue, checked before decoding.
            InvalidInputError: any image undecodable (``detail`` names each).
            DeadlineExceeded: the request deadline (counted from here, decoding included) passed
                before every image was started.
            InferenceError, BatcherClosed: from the batcher.
        """
        n = inputs.total if inputs is not None else len(encoded)
        self.check_count(n)
        deadline = time.monotonic() + self.batcher.request_timeout_s
        with self.traffic.request(), self.batcher.admission.reserve(n) as room:
            decoded = await self._within(deadline, self.decoder.decode(encoded)) if encoded else []
            images = inputs.in_order(decoded, DecodedImage) if inputs is not None else decoded
            output = await self._infer(room, images, deadline)
        return images, output

    async def _within(self, deadline: float, work: Awaitable[Any]) -> Any:
        """Await ``work`` until ``deadline`` (``time.monotonic()``), else :class:`DeadlineExceeded`."""
        try:
            return await asyncio.wait_for(work, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceeded(f"the request was not decoded within its deadline "
                                   f"({self.batcher.request_timeout_s * 1000:.0f} ms)") from None

    async def _infer(self, room: Reservation, images: list[DecodedImage], deadline: float) -> ModelOutput:
        """Submit decoded images into their reserved room with what is left of the request deadline."""
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise DeadlineExceeded(f"the request deadline ({self.batcher.request_timeout_s * 1000:.0f} ms) "
                                   "passed while decoding")
        return as_model_output(await self.batcher.submit([im.pixels for im in images], timeout_s=remaining_s,
                                                         reservation=room))

    # ------------------------------------------------------------------ /predict and /model
    async def predict(self, images: Sequence[EncodedImage]) -> PredictResponse:
        """Classify encoded images; one prediction per image, in input order (errors: see :meth:`_run`)."""
        decoded, output = await self._run(images)
        self.answers.check_in_distribution(decoded, output)
        return PredictResponse(model=self.answers.model_ref, predictions=[
            self.answers.prediction(i, img, output.image(i)) for i, img in enumerate(decoded)])

    async def predict_fhir(self, images: Sequence[EncodedImage]) -> bytes:
        """Classify encoded images and report them as a FHIR R4 Bundle (JSON bytes; see
        :mod:`service.reports`). Errors: those of :meth:`_run`, and
        :class:`~service.reports.ReportError` when the images name different patients."""
        decoded, output = await self._run(images)
        self.answers.check_in_distribution(decoded, output)
        predictions = [self.answers.prediction(i, img, output.image(i)) for i, img in enumerate(decoded)]
        # building and validating the resources costs ~5 ms per image (fhir.resources): off the event loop
        return await asyncio.to_thread(self.reports.bundle, predictions, [img.dicom for img in decoded],
                                       self.answers.model_ref)

    def model_info(self) -> ModelInfo:
        """Summary of the manifest plus the active execution provider."""
        return self.answers.model_info()

    # ------------------------------------------------------------------ Open Inference Protocol V2
    def check_model(self, name: str, version: str | None = None) -> None:
        """Raise :class:`ModelNotFoundError` unless ``name`` (and ``version``) is the served model."""
        m = self.manifest
        if name != m.name or (version is not None and version != m.version):
            raise ModelNotFoundError(f"unknown model {name!r}{'' if version is None else f' version {version!r}'}; "
                                     f"this server serves {m.name} (version {m.version})")

    def v2_metadata(self) -> ModelMetadataResponse:
        """OIP model metadata (see :func:`service.codecs.v2.model_metadata`)."""
        m, spec = self.manifest, self.decoder.spec
        return v2.model_metadata(m.name, m.version, m.input.name, spec.height, spec.width, m.class_codes,
                                 guard=m.ood is not None)

    async def v2_infer(self, request: InferenceRequest, binary: bytes = b"") -> tuple[InferenceResponse, bytes | None]:
        """Run an OIP inference request (inputs and output: see :mod:`service.codecs.v2`).

        Args:
            request: the parsed JSON part of the request.
            binary: the bytes after the JSON header (binary tensor data extension), else ``b""``.

        Returns:
            ``(response, binary_output)``; ``binary_output`` is the FP32 data when the client asked
            for binary output, else None.

        Raises:
            InvalidInputError: malformed tensors, unknown datatype or output, undecodable images; and
            the errors of :meth:`_run`.
        """
        want_binary = v2.wants_binary_output(request)
        spec = self.decoder.spec
        # converting a large JSON tensor costs real CPU time: keep it off the event loop
        inputs = await asyncio.get_running_loop().run_in_executor(
            self.decoder.pool, v2.parse_inputs, request, binary, spec.height, spec.width)
        images, output = await self._run(inputs.encoded, inputs)
        self.answers.check_in_distribution(images, output)
        m = self.manifest
        return v2.encode_response(output.probabilities, m.class_codes, m.name, m.version, request.id, want_binary,
                                  self.answers.guard_outputs(output, len(images)), row_uids=[im.uids() for im in images])
