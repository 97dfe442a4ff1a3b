"""The real service (``python -m service`` in a subprocess, uvicorn on 127.0.0.1) over a real
socket with httpx, and NVIDIA's tritonclient for the Open Inference Protocol.

Reference answers come from the same model directory run in-process through the same
preprocessing (``service.preprocessing``) and ``ModelRuntime.predict_proba``.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import LIVE_MAX_IMAGES, LIVE_MAX_UPLOAD_BYTES, exit_code_without_ready, require

from schemas.api import DISCLAIMER
from schemas.manifest import HAM10000_CLASSES, MALIGNANT_CLASSES
from service.preprocessing import preprocess_file

ATOL = 1e-4


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def reference_probs(runtime, paths: list[Path]) -> np.ndarray:
    """float32 (N, 7): single-image in-process inference through the shared preprocessing."""
    return np.stack([runtime.predict_proba(preprocess_file(str(p), runtime.spec)[None])[0] for p in paths])


def multipart(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def assert_error(r: httpx.Response, status: int) -> dict:
    """The common error shape: JSON {"error": str, "request_id": str, "detail"?: list}."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    assert body["request_id"] == r.headers["x-request-id"]
    return body


def image_errors(body: dict) -> dict[int, dict]:
    return {d["index"]: d for d in body["detail"]}


def check_prediction(p: dict, probs_ref: np.ndarray | None, codes: list[str], thresholds: dict) -> None:
    """Per-image response shape and internal consistency (and equality to a reference row)."""
    assert set(p) >= {"id", "index", "label", "label_name", "probability", "probabilities",
                      "malignant_probability", "referral_recommended", "referral_reasons"}
    assert list(p["probabilities"]) == codes and set(codes) == set(HAM10000_CLASSES)
    probs = np.array([p["probabilities"][c] for c in codes])
    assert abs(probs.sum() - 1.0) < 1e-4
    assert p["label"] == codes[int(probs.argmax())]
    assert p["label_name"] == HAM10000_CLASSES[p["label"]]
    assert p["probability"] == pytest.approx(probs.max(), abs=1e-7)
    malignant = sum(p["probabilities"][c] for c in MALIGNANT_CLASSES)
    assert p["malignant_probability"] == pytest.approx(malignant, abs=1e-6)
    expected = []
    if malignant >= thresholds["malignant_probability_threshold"]:
        expected.append("malignant_probability_at_or_above_threshold")
    if probs.max() < thresholds["min_top_probability"]:
        expected.append("top_probability_below_minimum")
    assert p["referral_reasons"] == expected
    assert p["referral_recommended"] is bool(expected)
    if probs_ref is not None:
        assert p["label"] == codes[int(probs_ref.argmax())]
        np.testing.assert_allclose(probs, probs_ref, atol=ATOL)


@pytest.fixture(scope="module")
def client(live_server):
    with httpx.Client(base_url=live_server.base_url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def model_info(client) -> dict:
    r = client.get("/model")
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------ health, model
def test_health_live_and_ready(client):
    assert client.get("/health/live").json() == {"status": "alive"}
    r = client.get("/health/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_model_info_matches_manifest(model_info, runtime):
    m = runtime.manifest
    assert model_info["name"] == m.name and model_info["version"] == m.version
    assert model_info["sha256"] == m.sha256
    assert [c["code"] for c in model_info["classes"]] == m.class_codes
    assert {c["code"]: c["name"] for c in model_info["classes"]} == {c.code: c.name for c in m.classes}
    assert {c["code"] for c in model_info["classes"] if c["malignant"]} == set(MALIGNANT_CLASSES)
    assert (model_info["input"]["height"], model_info["input"]["width"]) == (m.input.height, m.input.width)
    assert model_info["calibration_temperature"] == pytest.approx(m.calibration.temperature)
    assert model_info["referral"]["malignant_probability_threshold"] == m.referral.malignant_probability_threshold
    assert model_info["referral"]["min_top_probability"] == m.referral.min_top_probability
    assert model_info["execution_provider"] == "CPUExecutionProvider"
    assert isinstance(model_info["metrics"], dict)
    assert "not a diagnosis" in model_info["disclaimer"]


# ------------------------------------------------------------------------------ predict
def test_predict_multipart_real_images(client, runtime, test_images, model_info):
    paths = test_images(3)
    r = client.post("/predict", files=multipart(paths))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": model_info["name"], "version": model_info["version"]}
    assert body["disclaimer"] == DISCLAIMER
    preds = body["predictions"]
    assert [p["index"] for p in preds] == [0, 1, 2]
    assert [p["id"] for p in preds] == [p.name for p in paths]
    ref = reference_probs(runtime, paths)
    for p, row in zip(preds, ref):
        check_prediction(p, row, runtime.class_codes, model_info["referral"])


def test_predict_json_real_images_keeps_order_and_ids(client, runtime, test_images, model_info):
    paths = test_images(4, offset=3)
    payload = {"images": [{"id": f"img-{i}", "data": b64(p.read_bytes())} for i, p in enumerate(paths)]}
    payload["images"][2].pop("id")
    r = client.post("/predict", json=payload)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["id"] for p in preds] == ["img-0", "img-1", None, "img-3"]
    ref = reference_probs(runtime, paths)
    for p, row in zip(preds, ref):
        check_prediction(p, row, runtime.class_codes, model_info["referral"])


def test_http_answers_equal_in_process_onnxruntime(client, runtime, test_images):
    """Same top class and probabilities within 1e-4 as onnxruntime in-process, both encodings."""
    paths = test_images(5, offset=10)
    ref = reference_probs(runtime, paths)
    via_multipart = client.post("/predict", files=multipart(paths)).json()["predictions"]
    via_json = client.post("/predict", json={"images": [{"data": b64(p.read_bytes())} for p in paths]}).json()
    for preds in (via_multipart, via_json["predictions"]):
        got = np.array([[p["probabilities"][c] for c in runtime.class_codes] for p in preds])
        assert [p["label"] for p in preds] == [runtime.class_codes[i] for i in ref.argmax(1)]
        np.testing.assert_allclose(got, ref, atol=ATOL)


# ------------------------------------------------------------------------------ bad inputs
def test_not_an_image_is_named_by_index(client, test_images):
    good = test_images(1)[0]
    files = multipart([good]) + [("images", ("notes.txt", b"this is not an image", "text/plain"))]
    body = assert_error(client.post("/predict", files=files), 422)
    errs = image_errors(body)
    assert list(errs) == [1]
    assert errs[1]["reason"] == "not_an_image" and errs[1]["id"] == "notes.txt"


def test_empty_file_is_rejected(client):
    body = assert_error(client.post("/predict", files=[("images", ("empty.jpg", b"", "image/jpeg"))]), 422)
    assert image_errors(body)[0]["reason"] == "empty"


def test_truncated_jpeg_is_rejected(client, test_images):
    a, b = test_images(2)
    data = b.read_bytes()
    files = multipart([a]) + [("images", ("cut.jpg", data[: len(data) // 2], "image/jpeg"))]
    body = assert_error(client.post("/predict", files=files), 422)
    errs = image_errors(body)
    assert list(errs) == [1] and errs[1]["reason"] == "truncated"


def test_invalid_base64_is_named_by_index_and_id(client, test_images):
    good = b64(test_images(1)[0].read_bytes())
    payload = {"images": [{"data": good}, {"data": good}, {"id": "bad", "data": "@@not base64!!"}]}
    body = assert_error(client.post("/predict", json=payload), 422)
    errs = image_errors(body)
    assert list(errs) == [2] and errs[2]["reason"] == "invalid_base64" and errs[2]["id"] == "bad"


@pytest.mark.parametrize("payload", [
    b'{"imgs": []}',
    b'{"images": "abc"}',
    b'{"images": [{"id": "x"}]}',
    b'{"images": [{"data": 5}]}',
    b'{"images": [',
    b'[]',
])
def test_wrong_json_shape_is_422(client, payload):
    r = client.post("/predict", content=payload, headers={"content-type": "application/json"})
    body = assert_error(r, 422)
    assert isinstance(body["detail"], list) and body["detail"]
    assert all({"loc", "msg", "type"} <= set(d) for d in body["detail"])


def test_no_images_is_422(client):
    assert_error(client.post("/predict", json={"images": []}), 422)
    # multipart without any 'images' part
    assert_error(client.post("/predict", files=[("other", ("a.jpg", b"xyz", "image/jpeg"))]), 422)


@pytest.mark.parametrize("ctype", ["text/plain", "image/jpeg", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(client, ctype):
    assert_error(client.post("/predict", content=b"hello", headers={"content-type": ctype}), 415)


def test_too_many_images_is_413(client, test_images):
    path = test_images(1)[0]
    n = LIVE_MAX_IMAGES + 1
    assert_error(client.post("/predict", files=multipart([path] * n)), 413)
    payload = {"images": [{"data": b64(path.read_bytes())}] * n}
    assert_error(client.post("/predict", json=payload), 413)


def test_body_over_byte_limit_is_413(client):
    big = b"\xff" * (LIVE_MAX_UPLOAD_BYTES + 200_000)
    # declared Content-Length over the limit
    assert_error(client.post("/predict", files=[("images", ("big.jpg", big, "image/jpeg"))]), 413)

    # chunked upload without Content-Length: counted while streaming
    def chunks():
        for i in range(0, len(big), 64 * 1024):
            yield big[i: i + 64 * 1024]

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413)


def test_concurrent_valid_and_bad_requests(live_server, runtime, test_images):
    """Valid requests racing bad ones all get their own correct answer; bad ones get 422."""
    paths = test_images(12, offset=20)
    ref = reference_probs(runtime, paths)
    codes = runtime.class_codes
    valid = [[0], [1, 2], [3], [4, 5, 6], [7], [8, 9], [10], [11, 0]]

    async def body():
        async with httpx.AsyncClient(base_url=live_server.base_url, timeout=60.0) as c:
            async def good(idx):
                if len(idx) % 2:
                    return await c.post("/predict", files=multipart([paths[i] for i in idx]))
                return await c.post("/predict", json={"images": [{"data": b64(paths[i].read_bytes())} for i in idx]})

            async def bad(k):
                files = multipart([paths[k]]) + [("images", ("x.bin", b"\x00garbage" * 10, "image/jpeg"))]
                return await c.post("/predict", files=files)

            tasks = [good(idx) for idx in valid] + [bad(k) for k in range(6)]
            return await asyncio.gather(*tasks)

    responses = asyncio.run(body())
    for idx, r in zip(valid, responses[: len(valid)]):
        assert r.status_code == 200, r.text
        got = np.array([[p["probabilities"][c] for c in codes] for p in r.json()["predictions"]])
        np.testing.assert_allclose(got, ref[idx], atol=ATOL)
    for r in responses[len(valid):]:
        assert list(image_errors(assert_error(r, 422))) == [1]
    assert httpx.get(live_server.base_url + "/health/ready").status_code == 200


# ------------------------------------------------------------------------------ cross-cutting
def test_request_id_is_echoed_or_generated(client):
    r = client.get("/health/live", headers={"X-Request-ID": "trace-42.a"})
    assert r.headers["x-request-id"] == "trace-42.a"
    r = client.get("/health/live")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r = client.get("/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r = client.post("/predict", content=b"x", headers={"content-type": "text/plain", "X-Request-ID": "err-1"})
    assert r.headers["x-request-id"] == "err-1" and r.json()["request_id"] == "err-1"


def test_unknown_path_uses_error_shape(client):
    assert_error(client.get("/no/such/path"), 404)


def test_metrics_exposes_the_named_metrics(client, test_images):
    client.post("/predict", files=multipart(test_images(2)))
    text = client.get("/metrics").text
    for name in ("dermserve_http_requests_total", "dermserve_http_request_duration_seconds_bucket",
                 "dermserve_queue_images", "dermserve_batch_size_images_bucket",
                 "dermserve_inference_duration_seconds_bucket", "dermserve_images_refused_total",
                 "dermserve_model_info"):
        assert name in text, name
    assert re.search(r'dermserve_http_requests_total\{method="POST",route="/predict",status="200"\} [1-9]', text)
    assert re.search(r'dermserve_http_requests_total\{method="POST",route="/predict",status="422"\} [1-9]', text)


def test_openapi_documents_both_predict_encodings(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/predict"]["post"]
    assert op["operationId"] == "predict"
    assert set(op["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert "PredictRequest" in spec["components"]["schemas"]
    ops = [o.get("operationId") for p in spec["paths"].values() for o in p.values()]
    assert all(ops) and len(ops) == len(set(ops))
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------------------ Open Inference Protocol
def test_v2_server_and_model_metadata(client, runtime):
    m = runtime.manifest
    assert client.get("/v2").json()["name"] == "dermserve"
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get(f"/v2/models/{m.name}").json()
    assert meta["name"] == m.name and m.version in meta["versions"]
    shapes = {t["datatype"]: t["shape"] for t in meta["inputs"]}
    assert shapes["BYTES"] == [-1] and shapes["UINT8"] == [-1, m.input.height, m.input.width, 3]
    assert meta["outputs"][0]["shape"] == [-1, 7] and meta["outputs"][0]["datatype"] == "FP32"
    assert client.get(f"/v2/models/{m.name}/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{m.name}/versions/{m.version}/ready").status_code == 200
    assert_error(client.get("/v2/models/nope"), 404)
    assert_error(client.get(f"/v2/models/{m.name}/versions/999/ready"), 404)


def test_v2_infer_bytes_json(client, runtime, test_images):
    paths = test_images(3, offset=30)
    req = {"id": "r1", "inputs": [{"name": "images", "shape": [3], "datatype": "BYTES",
                                   "data": [b64(p.read_bytes()) for p in paths]}]}
    r = client.post(f"/v2/models/{runtime.manifest.name}/infer", json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == runtime.manifest.name and out["id"] == "r1"
    outputs = {o["name"]: o for o in out["outputs"]}
    # a model with an out-of-distribution guard adds its two outputs (JSON data); the probabilities come first
    guard = runtime.manifest.ood is not None
    assert list(outputs) == (["probabilities", "ood_score", "out_of_distribution"] if guard else ["probabilities"])
    o = outputs["probabilities"]
    assert o["name"] == "probabilities" and o["datatype"] == "FP32" and o["shape"] == [3, 7]
    np.testing.assert_allclose(np.array(o["data"]).reshape(3, 7), reference_probs(runtime, paths), atol=ATOL)


def test_v2_infer_uint8_tensor_json(client, runtime, test_images):
    paths = test_images(2, offset=40)
    arr = np.stack([preprocess_file(str(p), runtime.spec) for p in paths])
    req = {"inputs": [{"name": runtime.manifest.input.name, "shape": list(arr.shape), "datatype": "UINT8",
                       "data": arr.ravel().tolist()}]}
    r = client.post(f"/v2/models/{runtime.manifest.name}/infer", json=req)
    assert r.status_code == 200, r.text
    o = r.json()["outputs"][0]
    np.testing.assert_allclose(np.array(o["data"]).reshape(2, 7), reference_probs(runtime, paths), atol=ATOL)


def test_v2_infer_errors(client, runtime):
    url = f"/v2/models/{runtime.manifest.name}/infer"
    h, w = runtime.spec.height, runtime.spec.width
    bad_shape = {"inputs": [{"name": "image", "shape": [1, h + 1, w, 3], "datatype": "UINT8",
                             "data": [0] * ((h + 1) * w * 3)}]}
    assert_error(client.post(url, json=bad_shape), 422)
    short = {"inputs": [{"name": "image", "shape": [1, h, w, 3], "datatype": "UINT8", "data": [0, 1, 2]}]}
    assert_error(client.post(url, json=short), 422)
    bad_b64 = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": ["@@@"]}]}
    assert image_errors(assert_error(client.post(url, json=bad_b64), 422))[0]["reason"] == "invalid_base64"
    wrong_type = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}]}
    assert_error(client.post(url, json=wrong_type), 422)
    assert_error(client.post(url, content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_error(client.post("/v2/models/nope/infer", json=bad_b64), 404)


def test_v2_with_tritonclient(live_server, runtime, test_images):
    """NVIDIA's own OIP client: BYTES input of raw JPEGs (binary extension) and a UINT8 tensor (JSON)."""
    require(importlib.util.find_spec("tritonclient") is not None and importlib.util.find_spec("gevent") is not None,
            "tritonclient[http] is not installed (pip install -e '.[test]')")
    import tritonclient.http as httpclient

    name = runtime.manifest.name
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{live_server.port}", network_timeout=60.0)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert meta["name"] == name

        paths = test_images(3, offset=50)
        ref = reference_probs(runtime, paths)
        raw = httpclient.InferInput("images", [3], "BYTES")
        raw.set_data_from_numpy(np.array([p.read_bytes() for p in paths], dtype=np.object_), binary_data=True)
        result = client.infer(name, [raw])  # no outputs requested -> binary output
        probs = result.as_numpy("probabilities")
        assert probs.shape == (3, 7) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, ref, atol=ATOL)

        arr = np.stack([preprocess_file(str(p), runtime.spec) for p in paths[:2]])
        tensor = httpclient.InferInput(runtime.manifest.input.name, list(arr.shape), "UINT8")
        tensor.set_data_from_numpy(arr, binary_data=False)
        out = httpclient.InferRequestedOutput("probabilities", binary_data=False)
        result = client.infer(name, [tensor], outputs=[out])
        np.testing.assert_allclose(result.as_numpy("probabilities").reshape(2, 7), ref[:2], atol=ATOL)
    finally:
        client.close()


# ------------------------------------------------------------------------------ other server configs
def test_api_key_auth(server_factory, test_images):
    server = server_factory(env={"DERMSERVE_API_KEYS": '["k1"]'})
    files = multipart(test_images(1))
    with httpx.Client(base_url=server.base_url, timeout=30.0) as c:
        r = c.post("/predict", files=files)
        assert_error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(c.post("/predict", files=files, headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(c.post("/predict", files=files, headers={"X-API-Key": "k2"}), 401)
        assert c.post("/predict", files=files, headers={"Authorization": "Bearer k1"}).status_code == 200
        assert c.post("/predict", files=files, headers={"X-API-Key": "k1"}).status_code == 200
        assert_error(c.get("/model"), 401)
        assert_error(c.get("/metrics"), 401)
        assert_error(c.get("/v2"), 401)
        assert c.get("/model", headers={"X-API-Key": "k1"}).status_code == 200
        for open_path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
            assert c.get(open_path).status_code == 200, open_path
    assert "k1" not in server.log()


def test_queue_full_is_503_with_retry_after(server_factory, test_images):
    """A request that does not fit in the bounded queue is refused whole, at once."""
    server = server_factory(env={"DERMSERVE_MAX_QUEUE_IMAGES": "2"})
    with httpx.Client(base_url=server.base_url, timeout=30.0) as c:
        r = c.post("/predict", files=multipart(test_images(3)))
        assert_error(r, 503)
        assert int(r.headers["retry-after"]) >= 1
        assert c.post("/predict", files=multipart(test_images(2))).status_code == 200
        assert c.get("/health/ready").status_code == 200
        assert re.search(r'dermserve_images_refused_total\{reason="queue_full"\} 3\.0', c.get("/metrics").text)
    assert "max_images_per_request (64) > max_queue_images (2)" in server.log()


def test_sigterm_drains_and_exits_cleanly(server_factory, test_images):
    server = server_factory()
    with httpx.Client(base_url=server.base_url, timeout=30.0) as c:
        assert c.post("/predict", files=multipart(test_images(2))).status_code == 200
    # a graceful stop exits 0 (service.__main__ does not let uvicorn re-raise the signal); see test_shutdown.py
    assert server.stop() == 0
    log = server.log()
    assert '"event": "draining"' in log and '"event": "stopped"' in log


def test_model_with_flipped_byte_is_refused(server_factory, model_dir, tmp_path):
    """sha256 mismatch: the process never becomes ready, exits non-zero and says why."""
    bad = tmp_path / "tampered"
    bad.mkdir()
    shutil.copy(model_dir / "manifest.json", bad / "manifest.json")
    data = bytearray((model_dir / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))

    server = server_factory(model=bad, wait=False)
    code = exit_code_without_ready(server)
    assert code is not None, "the server kept running with a tampered model"
    assert code != 0
    log = server.log()
    assert "sha256" in log and "refusing" in log and '"event": "model_load_failed"' in log


# ------------------------------------------------------------------------------ in-process (no server)
def test_not_ready_before_lifespan_answers_503(model_dir):
    """Without the lifespan having run (no model loaded), readiness and work routes say 503."""
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_dir=model_dir, _env_file=None))

    async def body():
        # httpx's ASGI transport does not run the lifespan: the app stays "not loaded"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert (await c.get("/health/live")).status_code == 200
            for path in ("/health/ready", "/v2/health/ready", "/model"):
                r = await c.get(path)
                assert r.status_code == 503 and r.headers["retry-after"] == "5", path
                assert r.json()["error"]
            assert (await c.post("/predict", json={"images": [{"data": "AAAA"}]})).status_code == 503

    asyncio.run(body())


def test_error_table_statuses_and_headers():
    from fastapi.exceptions import RequestValidationError

    from service.batching import BatcherClosed, DeadlineExceeded, InferenceError, QueueFullError
    from service.errors import (
        AuthenticationError,
        NotReadyError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        error_body,
    )
    from service.inputs import InvalidInputError, ModelNotFoundError, NoImagesError, TooManyImagesError
    from service.preprocessing import ImageDecodeError

    cases = [
        (ImageDecodeError("truncated", "cut"), 422, {}),
        (InvalidInputError("bad", [{"index": 3, "id": None, "reason": "x", "message": "y"}]), 422, {}),
        (RequestValidationError([{"loc": ("body",), "msg": "m", "type": "t", "input": "HUGE"}]), 422, {}),
        (NoImagesError("none"), 422, {}),
        (TooManyImagesError("many"), 413, {}),
        (PayloadTooLargeError("big"), 413, {}),
        (UnsupportedMediaTypeError("type"), 415, {}),
        (AuthenticationError("key"), 401, {"WWW-Authenticate": "Bearer"}),
        (ModelNotFoundError("who"), 404, {}),
        (QueueFullError("full", retry_after_s=7), 503, {"Retry-After": "7"}),
        (BatcherClosed("closed"), 503, {"Retry-After": "5"}),
        (NotReadyError("later"), 503, {"Retry-After": "5"}),
        (DeadlineExceeded("late"), 504, {}),
        (InferenceError("boom"), 500, {}),
        (KeyError("secret internals"), 500, {}),
    ]
    for exc, status, headers in cases:
        got_status, body, got_headers = error_body(exc, "rid")
        assert got_status == status, exc
        assert got_headers == headers, exc
        assert isinstance(body["error"], str) and body["request_id"] == "rid"
    _, body, _ = error_body(KeyError("secret internals"), "rid")
    assert "secret" not in body["error"]
    validation = RequestValidationError([{"loc": ("body",), "msg": "m", "type": "t", "input": "HUGE"}])
    _, body, _ = error_body(validation, None)
    assert "HUGE" not in str(body)
    _, body, _ = error_body(InvalidInputError("bad", [{"index": 3, "id": None, "reason": "x", "message": "y"}]), None)
    assert body["detail"][0]["index"] == 3


def test_client_disconnect_cancels_the_work():
    from service.routes.deps import ClientDisconnected, cancel_on_disconnect

    class FakeRequest:
        async def receive(self):
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

    async def body():
        cancelled = asyncio.Event()

        async def work():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with pytest.raises(ClientDisconnected):
            await asyncio.wait_for(cancel_on_disconnect(FakeRequest(), work()), 10)
        assert cancelled.is_set()

        async def quick():
            return 42

        class Silent:
            async def receive(self):
                await asyncio.sleep(30)

        assert await asyncio.wait_for(cancel_on_disconnect(Silent(), quick()), 10) == 42

    asyncio.run(body())


def test_index_page_served_only_if_present(client):
    from service.routes.ui import STATIC_DIR

    r = client.get("/")
    if (STATIC_DIR / "index.html").is_file():
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    else:
        assert_error(r, 404)


def test_cors_only_when_configured(model_dir):
    from service.app import create_app
    from service.settings import Settings

    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}

    async def allowed(settings):
        app = create_app(settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.options("/predict", headers=preflight)
            return r.headers.get("access-control-allow-origin")

    assert asyncio.run(allowed(Settings(model_dir=model_dir, _env_file=None))) is None
    on = Settings(model_dir=model_dir, cors_origins=["http://ui.example"], _env_file=None)
    assert asyncio.run(allowed(on)) == "http://ui.example"


def test_logs_are_json_with_request_id_and_no_client_ids(live_server, test_images):
    import json

    path = test_images(1, offset=60)[0]
    secret_name = "patient-4711-lesion.jpg"
    payload = {"images": [{"id": "patient-4712", "data": b64(path.read_bytes())}, {"id": "patient-4713", "data": "%%"}]}
    with httpx.Client(base_url=live_server.base_url, timeout=30.0) as c:
        assert c.post("/predict", files=[("images", (secret_name, path.read_bytes(), "image/jpeg"))],
                      headers={"X-Request-ID": "log-check-1"}).status_code == 200
        assert c.post("/predict", json=payload, headers={"X-Request-ID": "log-check-2"}).status_code == 422
    time.sleep(0.2)
    lines = [ln for ln in live_server.log().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is one JSON object
    access = [r for r in records if r.get("request_id") in ("log-check-1", "log-check-2")]
    assert {r["request_id"] for r in access} == {"log-check-1", "log-check-2"}
    assert all(r["route"] == "/predict" for r in access if "route" in r)
    text = live_server.log()
    for secret in ("patient-4711", "patient-4712", "patient-4713", path.name):
        assert secret not in text
