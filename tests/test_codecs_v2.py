"""The Open Inference Protocol V2 tensor codec alone (service.codecs.v2): pure functions, no HTTP, no model."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from schemas.api import InferenceRequest
from service.codecs import v2
from service.inputs import EncodedImage, InvalidInputError

H, W = 4, 5  # a tiny "model input size"


def request(*inputs: dict, **kw) -> InferenceRequest:
    return InferenceRequest.model_validate({"inputs": list(inputs), **kw})


def bytes_input(*blobs: bytes, shape: list[int] | None = None) -> dict:
    return {"name": "images", "datatype": "BYTES", "shape": shape or [len(blobs)],
            "data": [base64.b64encode(b).decode() for b in blobs]}


def length_prefixed(*blobs: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in blobs)


def test_bytes_input_in_json_gives_base64_images_in_order():
    inputs = v2.parse_inputs(request(bytes_input(b"first", b"second")), b"", H, W)
    assert [img.b64 for img in inputs.encoded] == [base64.b64encode(b).decode() for b in (b"first", b"second")]
    assert inputs.pixel_rows == [] and inputs.total == 2


def test_bytes_input_as_binary_data_with_length_prefixes():
    raw = length_prefixed(b"abc", b"", b"defg")
    req = request({"name": "images", "datatype": "BYTES", "shape": [3, 1],
                   "parameters": {"binary_data_size": len(raw)}})
    inputs = v2.parse_inputs(req, raw, H, W)
    assert [img.data for img in inputs.encoded] == [b"abc", b"", b"defg"]


@pytest.mark.parametrize(("raw", "shape", "message"), [
    (length_prefixed(b"abc")[:2], [1], "truncated BYTES length prefix"),
    (struct.pack("<I", 10) + b"abc", [1], "longer than the binary data"),
    (length_prefixed(b"a", b"b"), [3], "shape says 3 elements but 2"),
    (length_prefixed(b"a"), [1, 2], "BYTES shape must be [N] or [N, 1]"),
])
def test_malformed_bytes_input_is_refused(raw, shape, message):
    req = request({"name": "images", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": len(raw)}})
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        v2.parse_inputs(req, raw, H, W)


def test_pixel_tensors_uint8_and_fp32_json_and_binary():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, H, W, 3), dtype=np.uint8)
    as_json = {"name": "image", "datatype": "UINT8", "shape": [2, H, W, 3], "data": pixels.tolist()}
    fp32 = {"name": "image", "datatype": "FP32", "shape": [1, H, W, 3], "data": (pixels[:1] + 0.4).ravel().tolist()}
    raw = pixels.tobytes()
    binary = {"name": "image", "datatype": "UINT8", "shape": [2, H, W, 3], "parameters": {"binary_data_size": len(raw)}}
    for inp, body, expected in ((as_json, b"", pixels), (fp32, b"", pixels[:1]), (binary, raw, pixels)):
        inputs = v2.parse_inputs(request(inp), body, H, W)
        got = np.stack([row for _, row in inputs.pixel_rows])
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("inp", "message"), [
    ({"datatype": "UINT8", "shape": [1, H + 1, W, 3], "data": [0] * ((H + 1) * W * 3)}, "tensor shape must be"),
    ({"datatype": "UINT8", "shape": [1, H, W, 3], "data": [0] * 3}, "values for shape"),
    ({"datatype": "UINT8", "shape": [1, H, W, 3], "data": [0.5] * (H * W * 3)}, "UINT8 values must be integers"),
    ({"datatype": "FP32", "shape": [1, H, W, 3], "data": [300.0] * (H * W * 3)}, "within 0..255"),
    ({"datatype": "INT64", "shape": [1], "data": [1]}, "use BYTES"),
    ({"datatype": "BYTES", "shape": [1], "data": [7]}, "base64 strings"),
    ({"datatype": "BYTES", "shape": [1]}, "neither 'data' nor"),
])
def test_malformed_tensors_are_refused_naming_the_input(inp, message):
    with pytest.raises(InvalidInputError, match=message) as err:
        v2.parse_inputs(request({"name": "x", **inp}), b"", H, W)
    assert "'x'" in str(err.value) or "INT64" in str(err.value)


def test_binary_data_must_be_claimed_exactly():
    raw = length_prefixed(b"abc")
    req = request({"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}})
    with pytest.raises(InvalidInputError, match="not claimed"):
        v2.parse_inputs(req, raw + b"extra", H, W)
    big = request({"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 99}})
    with pytest.raises(InvalidInputError, match="exceeds the binary data"):
        v2.parse_inputs(big, raw, H, W)


def test_mixed_inputs_keep_request_order():
    px = np.full((1, H, W, 3), 7, np.uint8)
    req = request(bytes_input(b"a"), {"name": "image", "datatype": "UINT8", "shape": [1, H, W, 3],
                                      "data": px.ravel().tolist()}, bytes_input(b"b"))
    inputs = v2.parse_inputs(req, b"", H, W)
    assert inputs.total == 3 and [pos for pos, _ in inputs.pixel_rows] == [1]
    ordered = inputs.in_order(["decoded-a", "decoded-b"], lambda row: f"pixels-{int(row[0, 0, 0])}")
    assert ordered == ["decoded-a", "pixels-7", "decoded-b"]


def test_split_body_by_header_length():
    assert v2.split_body(b'{"a":1}BIN', "7") == (b'{"a":1}', b"BIN")
    assert v2.split_body(b'{"a":1}', None) == (b'{"a":1}', b"")
    for bad in ("-1", "99", "x"):
        with pytest.raises(InvalidInputError, match="Inference-Header-Content-Length"):
            v2.split_body(b"{}", bad)


def test_output_choice_and_unknown_outputs():
    assert not v2.wants_binary_output(request(bytes_input(b"a")))
    assert v2.wants_binary_output(request(bytes_input(b"a"), parameters={"binary_data_output": True}))
    assert v2.wants_binary_output(request(bytes_input(b"a"), outputs=[{"name": "probabilities",
                                                                      "parameters": {"binary_data": True}}]))
    with pytest.raises(InvalidInputError, match="unknown output 'logits'"):
        v2.wants_binary_output(request(bytes_input(b"a"), outputs=[{"name": "logits"}]))


def test_encode_response_json_and_binary():
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
    resp, binary = v2.encode_response(probs, ["x", "y"], "m", "1", "req-1", binary=False)
    assert binary is None
    out = resp.outputs[0]
    assert (out.name, out.shape, out.datatype, out.data) == ("probabilities", [2, 2], "FP32", [0.25, 0.75, 0.5, 0.5])
    assert out.parameters == {"classes": "x,y"} and resp.id == "req-1" and resp.model_version == "1"
    body, media, headers = v2.http_body(resp, binary)
    assert media == "application/json" and json.loads(body)["outputs"][0]["data"] == out.data and headers == {}

    resp, binary = v2.encode_response(probs, ["x", "y"], "m", "1", None, binary=True)
    assert resp.outputs[0].data is None and resp.outputs[0].parameters["binary_data_size"] == len(binary) == 16
    np.testing.assert_array_equal(np.frombuffer(binary, "<f4").reshape(2, 2), probs)
    body, media, headers = v2.http_body(resp, binary)
    n = int(headers[v2.HEADER_LENGTH])
    assert media == "application/octet-stream" and body[n:] == binary and json.loads(body[:n])["model_name"] == "m"


def test_model_metadata_names_the_inputs_and_output():
    meta = v2.model_metadata("m", "1", "image", H, W, ["a", "b", "c"])
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("images", "BYTES", [-1]),
                                                                   ("image", "UINT8", [-1, H, W, 3])]
    assert [(t.name, t.shape) for t in meta.outputs] == [("probabilities", [-1, 3])]
    assert meta.outputs[0].parameters["classes"] == "a,b,c"


def test_encoded_image_raw_decodes_base64_once():
    assert EncodedImage(b64=base64.b64encode(b"xyz").decode()).raw() == b"xyz"
    with pytest.raises(ValueError, match="not valid base64"):
        EncodedImage(b64="!!").raw()
