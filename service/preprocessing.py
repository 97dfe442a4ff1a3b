"""Image decoding and resizing: the one preprocessing path shared by trainer, export and service.

Decode bytes (JPEG/PNG/...) with Pillow -> apply EXIF orientation -> convert to 8-bit RGB ->
resize to the model's input size. Normalisation (scaling to [-1, 1] for MobileNetV2) is *not*
done here: it lives inside the exported ONNX graph, so every consumer only needs this module.

This module imports only Pillow and NumPy (no FastAPI, TensorFlow or onnxruntime), so the
trainer, the exporter's parity check and the service all run exactly the same code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

#: Resize filters by the name used in ``manifest.json`` (``input.resize_method``).
RESIZE_METHODS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

#: Default ceiling on decoded pixels (width * height). 40 megapixels covers clinical cameras
#: (a 24 MP DSLR frame is 6000 x 4000) while refusing decompression bombs early.
DEFAULT_MAX_PIXELS = 40_000_000

#: Default cap on aspect ratio (long side / short side). Dermoscopic and clinical photos are
#: 1:1 to 16:9; anything beyond 10:1 is not a lesion photo and would be squashed beyond use.
DEFAULT_MAX_ASPECT_RATIO = 10.0

#: Smallest accepted side in pixels. A 1x1 or 8x8 image holds no lesion information.
DEFAULT_MIN_SIDE = 16


class ImageDecodeError(ValueError):
    """An input could not be turned into a model input.

    Attributes:
        reason: short machine-readable code (``empty``, ``not_an_image``, ``truncated``,
            ``too_many_pixels``, ``too_small``, ``bad_aspect_ratio``, ``unsupported_mode``).
        detail: a human-readable sentence saying what was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model expects, read from the manifest's ``input`` section.

    Attributes:
        height: model input height in pixels.
        width: model input width in pixels.
        resize_method: a key of :data:`RESIZE_METHODS`.
        max_pixels: refuse images whose declared width*height exceeds this (pixels).
        max_aspect_ratio: refuse images whose long/short side ratio exceeds this.
        min_side: refuse images whose shorter side is below this (pixels).
    """

    height: int
    width: int
    resize_method: str = "bilinear"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    min_side: int = DEFAULT_MIN_SIDE


def decode_image(data: bytes, spec: PreprocessSpec) -> Image.Image:
    """Decode encoded image bytes into an upright 8-bit RGB Pillow image.

    The header is read first and its declared size checked against ``spec`` *before* any
    pixel data is decoded, so decompression bombs cost almost nothing. EXIF orientation is
    applied (``ImageOps.exif_transpose``). Palette, grayscale, RGBA (composited on white),
    CMYK and 16-bit images are converted to RGB.

    Args:
        data: the encoded file, e.g. JPEG or PNG bytes.
        spec: limits and target size.

    Returns:
        A Pillow image in mode ``RGB``.

    Raises:
        ImageDecodeError: empty input, not an image, truncated/corrupt data, too many
            pixels, too small, or absurd aspect ratio.
    """
    if not data:
        raise ImageDecodeError("empty", "the file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError("not_an_image", "the file is not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_many_pixels", f"image declares too many pixels: {exc}") from exc
    width, height = img.size
    if width * height > spec.max_pixels:
        raise ImageDecodeError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels; the limit is {spec.max_pixels}",
        )
    if min(width, height) < spec.min_side:
        raise ImageDecodeError(
            "too_small", f"image is {width}x{height}; each side must be at least {spec.min_side} pixels"
        )
    if max(width, height) / min(width, height) > spec.max_aspect_ratio:
        raise ImageDecodeError(
            "bad_aspect_ratio",
            f"image is {width}x{height}; aspect ratio above {spec.max_aspect_ratio:g}:1 is not a lesion photo",
        )
    try:
        if img.format == "JPEG":
            # Let libjpeg decode at a reduced scale (1/2, 1/4, 1/8) when the photo is much
            # larger than the model input; exact for the 200x150 dataset images (no reduction).
            img.draft("RGB", (spec.width * 2, spec.height * 2))
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError("truncated", f"the image data is truncated or corrupt: {exc}") from exc
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white, 16-bit scaled down)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageDecodeError("unsupported_mode", f"unsupported image mode {img.mode!r}") from exc


def resize_to_array(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize an RGB image to the model's input size (whole field of view, no crop).

    Args:
        img: a Pillow image in mode ``RGB``.
        spec: target ``height``/``width`` in pixels and ``resize_method``.

    Returns:
        ``np.ndarray`` of shape ``(spec.height, spec.width, 3)``, dtype ``uint8``, RGB order,
        values 0..255.
    """
    if img.size != (spec.width, spec.height):
        img = img.resize((spec.width, spec.height), RESIZE_METHODS[spec.resize_method])
    return np.asarray(img, dtype=np.uint8)


def preprocess_bytes(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """Decode and resize one encoded image: the full shared preprocessing path.

    Args:
        data: encoded image bytes (JPEG, PNG, ...).
        spec: model input size, resize method and safety limits.

    Returns:
        ``np.ndarray`` of shape ``(spec.height, spec.width, 3)``, dtype ``uint8``, RGB.

    Raises:
        ImageDecodeError: see :func:`decode_image`.
    """
    return resize_to_array(decode_image(data, spec), spec)


def preprocess_file(path: str, spec: PreprocessSpec) -> np.ndarray:
    """:func:`preprocess_bytes` on a file read from ``path`` (used by trainer and export)."""
    with open(path, "rb") as fh:
        return preprocess_bytes(fh.read(), spec)
