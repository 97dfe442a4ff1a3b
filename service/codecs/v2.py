"""Open Inference Protocol V2 tensor codec (KServe ``specification/protocol/inference_rest.md``).

Pure functions between the protocol's JSON (+ binary tensor data extension) shapes and arrays: no
HTTP, no model, no event loop. The route (:mod:`service.routes.v2`) splits the body, the data plane
runs the images, this module does the rest.

Inputs (any number, concatenated in order, each contributing images):

- ``BYTES`` ``[N]`` or ``[N, 1]``: N encoded image files -- base64 strings in JSON, or with the binary
  extension 4-byte little-endian length prefixes followed by the bytes;
- ``UINT8`` / ``FP32`` ``[N, H, W, 3]`` (``H``, ``W`` = the model input size): RGB pixels 0..255
  (FP32 values are rounded to the nearest integer).

Output: one tensor :data:`OUTPUT` ``FP32 [N_total, K]``: calibrated probabilities in manifest class
order (``parameters.classes``), as JSON ``data`` or, when asked for, little-endian binary data.
When any image was a DICOM object, the output's parameters also carry :data:`UID_PARAMETERS`
(``study_instance_uid``, ``series_instance_uid``, ``sop_instance_uid``): each a comma-separated
string with one entry per output row, empty for rows that were not DICOM (parameter values must be
scalars in the protocol; UIDs are digits and dots, so the comma is unambiguous, as in ``classes``).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from schemas.api import InferenceRequest, InferenceResponse, MetadataTensor, ModelMetadataResponse, ResponseOutput
from service.inputs import EncodedImage, InvalidInputError

#: Name of the BYTES input (encoded images) and of the single output.
BYTES_INPUT = "images"
OUTPUT = "probabilities"
#: Extra outputs of a model with an out-of-distribution guard (see :func:`encode_response`).
OOD_SCORE_OUTPUT = "ood_score"
OOD_FLAG_OUTPUT = "out_of_distribution"
#: Header giving the length of the JSON part when binary tensor data follows it.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Output parameters echoing the DICOM UIDs of the rows (see the module docstring).
UID_PARAMETERS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")

T = TypeVar("T")


@dataclass(frozen=True)
class V2Inputs:
    """A request's images, split by kind.

    Attributes:
        encoded: encoded images (from ``BYTES`` inputs), in request order.
        pixel_rows: ``(position, uint8 (H, W, 3))`` of each pixel-tensor image; ``position`` is the
            image's place among all ``total`` images.
        total: images in the request.
    """

    encoded: list[EncodedImage]
    pixel_rows: list[tuple[int, np.ndarray]]

    @property
    def total(self) -> int:
        return len(self.encoded) + len(self.pixel_rows)

    def in_order(self, decoded: Sequence[T], from_pixels: Callable[[np.ndarray], T]) -> list[T]:
        """All images in request order: ``decoded`` (one per :attr:`encoded`) fill the positions the
        pixel rows leave free; pixel rows are wrapped with ``from_pixels``."""
        out: list[T | None] = [None] * self.total
        for pos, row in self.pixel_rows:
            out[pos] = from_pixels(row)
        it = iter(decoded)
        for pos in range(self.total):
            if out[pos] is None:
                out[pos] = next(it)
        return out  # type: ignore[return-value]


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """``(json_part, binary_part)`` of a request body (binary tensor data extension).

    Raises:
        InvalidInputError: ``header_length`` is not an integer within the body size.
    """
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
        if not 0 <= n <= len(body):
            raise ValueError
    except ValueError:
        raise InvalidInputError(f"{HEADER_LENGTH} must be an integer between 0 and the body size") from None
    return body[:n], body[n:]


def wants_binary_output(request: InferenceRequest) -> bool:
    """True when the client asked for the output as binary data (``binary_data_output`` or the output's
    ``binary_data``).

    Raises:
        InvalidInputError: an output other than :data:`OUTPUT` (or the guard's outputs, which are always
            sent as JSON data) was asked for.
    """
    want = bool((request.parameters or {}).get("binary_data_output", False))
    for o in request.outputs or []:
        if o.name in (OOD_SCORE_OUTPUT, OOD_FLAG_OUTPUT):
            continue
        if o.name != OUTPUT:
            raise InvalidInputError(f"unknown output {o.name!r}; this model's outputs are {OUTPUT!r} "
                                    f"(and {OOD_SCORE_OUTPUT!r}, {OOD_FLAG_OUTPUT!r} with a guard)")
        if (o.parameters or {}).get("binary_data") is not None:
            want = bool(o.parameters["binary_data"])  # type: ignore[index]
    return want


def parse_inputs(request: InferenceRequest, binary: bytes, height: int, width: int) -> V2Inputs:
    """Split a request's inputs into encoded images and pixel rows (``height`` x ``width`` = model input size).

    Raises:
        InvalidInputError: unknown datatype, bad shape, binary sizes that do not add up, bad pixel values.
    """
    encoded: list[EncodedImage] = []
    pixel_rows: list[tuple[int, np.ndarray]] = []
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
            encoded.extend(bytes_elements(inp.name, inp.shape, inp.data, raw))
        elif inp.datatype in ("UINT8", "FP32"):
            for row in pixel_tensor(inp.name, inp.shape, inp.datatype, inp.data, raw, height, width):
                pixel_rows.append((len(encoded) + len(pixel_rows), row))
        else:
            raise InvalidInputError(f"input {inp.name!r} has datatype {inp.datatype}; use BYTES (encoded images) "
                                    f"or UINT8/FP32 [N, {height}, {width}, 3]")
    if offset != len(binary):
        raise InvalidInputError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    return V2Inputs(encoded, pixel_rows)


def bytes_elements(name: str, shape: list[int], data: list[Any] | None, raw: bytes | None) -> list[EncodedImage]:
    """The elements of a ``BYTES`` input: length-prefixed ``raw`` bytes, or base64 strings in ``data``.

    Raises:
        InvalidInputError: bad shape, truncated data, or an element count that differs from ``shape``.
    """
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or any(d < 0 for d in shape):
        raise InvalidInputError(f"input {name!r}: BYTES shape must be [N] or [N, 1], got {shape}")
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
        for el in flatten(data):
            if not isinstance(el, str):
                raise InvalidInputError(f"input {name!r}: BYTES elements must be base64 strings in JSON")
            elements.append(EncodedImage(b64=el))
    if len(elements) != shape[0]:
        raise InvalidInputError(f"input {name!r}: shape says {shape[0]} elements but {len(elements)} were sent")
    return elements


def pixel_tensor(name: str, shape: list[int], datatype: str, data: list[Any] | None, raw: bytes | None,
                 height: int, width: int) -> np.ndarray:
    """A ``UINT8``/``FP32`` ``[N, height, width, 3]`` input as ``uint8`` (values checked to be 0..255).

    Raises:
        InvalidInputError: wrong shape, element count, non-integer UINT8 values, or values outside 0..255.
    """
    if len(shape) != 4 or shape[1:] != [height, width, 3] or shape[0] < 0:
        raise InvalidInputError(f"input {name!r}: tensor shape must be [N, {height}, {width}, 3] (the model input "
                                f"size), got {shape}")
    count = math.prod(shape)
    dtype = np.dtype("<u1") if datatype == "UINT8" else np.dtype("<f4")
    try:
        if raw is not None:
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"{len(raw)} bytes for {count} {datatype} elements")
            arr = np.frombuffer(raw, dtype=dtype)
        else:
            flat = list(flatten(data))
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


def flatten(data: Any) -> Iterator[Any]:
    """The leaves of a nested list (OIP allows row-major flat or nested ``data``)."""
    if isinstance(data, list):
        for el in data:
            yield from flatten(el)
    else:
        yield data


def encode_response(probabilities: np.ndarray, classes: Sequence[str], model_name: str, model_version: str,
                    request_id: str | None, binary: bool,
                    guard: tuple[Sequence[float], Sequence[bool], float] | None = None,
                    row_uids: Sequence[Mapping[str, str | None]] | None = None,
                    ) -> tuple[InferenceResponse, bytes | None]:
    """The response for ``probabilities`` ``(N, K)``.

    With ``guard`` = ``(ood_scores, out_of_distribution flags, threshold)`` (a model with an
    out-of-distribution guard), two more outputs follow, always as JSON data: :data:`OOD_SCORE_OUTPUT`
    FP32 ``[N]`` and :data:`OOD_FLAG_OUTPUT` BOOL ``[N]``.

    Args:
        row_uids: per row, the DICOM UIDs of its image (``{}`` for other images); when any row has
            one, the :data:`OUTPUT` tensor's parameters carry :data:`UID_PARAMETERS`.

    Returns:
        ``(response, binary_output)``: with ``binary``, the output carries
        ``parameters.binary_data_size`` and no ``data``, and ``binary_output`` is the little-endian
        FP32 data; else ``binary_output`` is None.
    """
    probs = np.ascontiguousarray(probabilities, dtype="<f4")
    out = ResponseOutput(name=OUTPUT, shape=list(probs.shape), datatype="FP32",
                         parameters={"classes": ",".join(classes), **uid_parameters(row_uids or [])})
    binary_out = None
    if binary:
        binary_out = probs.tobytes()
        out.parameters["binary_data_size"] = len(binary_out)  # type: ignore[index]
    else:
        out.data = [float(v) for v in probs.ravel()]
    outputs = [out]
    if guard is not None:
        scores, flags, threshold = guard
        outputs += [
            ResponseOutput(name=OOD_SCORE_OUTPUT, shape=[len(scores)], datatype="FP32",
                           parameters={"threshold": threshold}, data=[float(s) for s in scores]),
            ResponseOutput(name=OOD_FLAG_OUTPUT, shape=[len(flags)], datatype="BOOL", data=[bool(f) for f in flags]),
        ]
    return InferenceResponse(model_name=model_name, model_version=model_version, id=request_id,
                             outputs=outputs), binary_out


def uid_parameters(row_uids: Sequence[Mapping[str, str | None]]) -> dict[str, str]:
    """:data:`UID_PARAMETERS` as comma-separated strings (one entry per row), or ``{}`` when no row
    came from DICOM."""
    if not any(uids.get(k) for uids in row_uids for k in UID_PARAMETERS):
        return {}
    return {k: ",".join(uids.get(k) or "" for uids in row_uids) for k in UID_PARAMETERS}


def http_body(response: InferenceResponse, binary_output: bytes | None) -> tuple[bytes, str, dict[str, str]]:
    """``(body, media type, extra headers)`` of a response: compact JSON alone, or a JSON header
    followed by the binary output (its length in :data:`HEADER_LENGTH`)."""
    payload = response.model_dump(exclude_none=True)
    if binary_output is None:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        return body, "application/json", {}
    head = json.dumps(payload).encode()
    return head + binary_output, "application/octet-stream", {HEADER_LENGTH: str(len(head))}


def model_metadata(name: str, version: str, input_name: str, height: int, width: int,
                   classes: Sequence[str], guard: bool = False) -> ModelMetadataResponse:
    """Model metadata: inputs ``images`` BYTES ``[-1]`` and ``input_name`` UINT8 ``[-1, H, W, 3]``,
    output :data:`OUTPUT` FP32 ``[-1, K]``."""
    return ModelMetadataResponse(
        name=name, versions=[version], platform="onnxruntime_onnx",
        inputs=[
            MetadataTensor(name=BYTES_INPUT, datatype="BYTES", shape=[-1],
                           parameters={"content": "encoded image files (JPEG, PNG, ..., DICOM Part 10); base64 "
                                                  "strings in JSON"}),
            MetadataTensor(name=input_name, datatype="UINT8", shape=[-1, height, width, 3],
                           parameters={"content": "RGB pixels 0..255 at the model input size; FP32 also accepted"}),
        ],
        outputs=[MetadataTensor(name=OUTPUT, datatype="FP32", shape=[-1, len(classes)],
                                parameters={"classes": ",".join(classes), "calibrated": True})]
        + ([MetadataTensor(name=OOD_SCORE_OUTPUT, datatype="FP32", shape=[-1],
                           parameters={"content": "out-of-distribution score, higher = less dermoscopic"}),
            MetadataTensor(name=OOD_FLAG_OUTPUT, datatype="BOOL", shape=[-1],
                           parameters={"content": "ood_score above the model's threshold"})] if guard else []),
    )
