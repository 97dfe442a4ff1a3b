"""Unit tests of the shared preprocessing (service.preprocessing): decode, EXIF, modes, limits."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.preprocessing import ImageDecodeError, PreprocessSpec, decode_image, preprocess_bytes

SPEC = PreprocessSpec(height=64, width=64)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 120, h: int = 90) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1), "RGB")


def test_jpeg_and_png_give_uint8_rgb_at_model_size():
    for fmt in ("JPEG", "PNG"):
        out = preprocess_bytes(encode(gradient(), fmt), SPEC)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_exif_orientation_is_applied():
    img = gradient(120, 60)  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    decoded = decode_image(encode(img, "JPEG", exif=exif.tobytes()), SPEC)
    assert decoded.size == (60, 120)  # now portrait


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_other_modes_convert_to_rgb(mode):
    base = gradient()
    if mode == "I;16":
        arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        img, fmt = Image.fromarray(arr), "PNG"
        assert img.mode.startswith("I;16")
    elif mode == "CMYK":
        img, fmt = base.convert("CMYK"), "JPEG"
    else:
        img, fmt = base.convert(mode), "PNG"
    out = decode_image(encode(img, fmt), SPEC)
    assert out.mode == "RGB" and out.size == base.size
    if mode == "I;16":  # 16-bit scaled to 8-bit, not clipped to white
        assert 100 < np.asarray(out).mean() < 160


def test_rgba_transparent_pixels_become_white():
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert np.asarray(decode_image(encode(img, "PNG"), SPEC))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"this is plain text, not an image", "not_an_image"),
        (encode(gradient(), "JPEG")[: len(encode(gradient(), "JPEG")) // 2], "truncated"),
        (encode(gradient(), "PNG")[:200], "truncated"),
        (encode(Image.new("RGB", (1, 1)), "PNG"), "too_small"),
        (encode(Image.new("RGB", (2000, 20)), "PNG"), "bad_aspect_ratio"),
    ],
)
def test_bad_inputs_raise_with_reason(data, reason):
    with pytest.raises(ImageDecodeError) as exc:
        preprocess_bytes(data, SPEC)
    assert exc.value.reason == reason


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height (decompression-bomb header)."""
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageDecodeError) as exc:
        preprocess_bytes(_png_with_declared_size(50_000, 50_000), SPEC)
    assert exc.value.reason == "too_many_pixels"


def test_header_lying_about_size_is_truncated():
    with pytest.raises(ImageDecodeError) as exc:
        preprocess_bytes(_png_with_declared_size(400, 300), SPEC)
    assert exc.value.reason == "truncated"
