"""Image variants over HTTP (the live server): EXIF orientation and unusual colour modes."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps
from test_api import ATOL


def _probs(r: httpx.Response, codes: list[str]) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.array([[p["probabilities"][c] for c in codes] for p in r.json()["predictions"]])


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(live_server):
    with httpx.Client(base_url=live_server.base_url, timeout=30.0) as c:
        yield c


def test_exif_rotated_jpeg_predicts_like_the_upright_image(client, runtime, test_images):
    """A camera JPEG stored sideways with EXIF Orientation=6 ("rotate 90 degrees clockwise to
    display") must be classified like the upright picture."""
    upright_src = Image.open(test_images(1, offset=300)[0]).convert("RGB")
    stored = upright_src.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera sensor wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated_jpeg = _encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    plain_jpeg = _encode(stored, "JPEG", quality=95)  # same pixels, no orientation tag

    decoded = Image.open(io.BytesIO(rotated_jpeg))
    assert decoded.getexif().get(0x0112) == 6
    upright = ImageOps.exif_transpose(decoded)  # the same decoded pixels, turned upright by Pillow
    assert upright.size == upright_src.size
    upright_png = _encode(upright, "PNG")  # lossless: exactly the pixels the service should see

    codes = runtime.class_codes
    files = lambda data, name, ctype: [("images", (name, data, ctype))]  # noqa: E731
    p_rotated = _probs(client.post("/predict", files=files(rotated_jpeg, "exif6.jpg", "image/jpeg")), codes)
    p_upright = _probs(client.post("/predict", files=files(upright_png, "upright.png", "image/png")), codes)
    p_sideways = _probs(client.post("/predict", files=files(plain_jpeg, "sideways.jpg", "image/jpeg")), codes)
    np.testing.assert_allclose(p_rotated, p_upright, atol=ATOL)
    assert np.abs(p_sideways - p_upright).max() > ATOL, "rotation made no difference: the test proves nothing"


def test_colour_modes_over_http(client, runtime, test_images):
    base = Image.open(test_images(1, offset=301)[0]).convert("RGB").resize((200, 150))
    gray = base.convert("L")
    rgba = base.copy()
    rgba.putalpha(200)
    variants = {
        "palette.png": _encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "gray.png": _encode(gray, "PNG"),
        "gray.jpg": _encode(gray, "JPEG"),
        "rgba.png": _encode(rgba, "PNG"),
        "gray16.png": _encode(Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257), "PNG"),
        "cmyk.jpg": _encode(base.convert("CMYK"), "JPEG"),
        "la.png": _encode(gray.convert("LA"), "PNG"),
    }
    assert Image.open(io.BytesIO(variants["gray16.png"])).mode.startswith("I")
    assert Image.open(io.BytesIO(variants["cmyk.jpg"])).mode == "CMYK"
    files = [("images", (name, data, "application/octet-stream")) for name, data in variants.items()]
    r = client.post("/predict", files=files)
    probs = _probs(r, runtime.class_codes)
    assert [p["id"] for p in r.json()["predictions"]] == list(variants)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    # grey, 16-bit grey and grey+alpha hold the same picture: same answer
    by = dict(zip(variants, probs))
    np.testing.assert_allclose(by["gray16.png"], by["gray.png"], atol=1e-3)
    np.testing.assert_allclose(by["la.png"], by["gray.png"], atol=ATOL)
