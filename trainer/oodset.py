"""The project's out-of-distribution evaluation set: non-dermoscopic images built by code.

Nothing is downloaded. The images come from files that installed packages ship (scikit-image's
``skimage/data``, matplotlib's ``sample_data``, pydicom's bundled test files) or are drawn here
(documents, screenshots, blank and noise frames, test patterns, a synthetic ultrasound sector).
They are used only to **evaluate** the out-of-distribution guard, never to fit it.

Each item is ``OODImage(name, category, png)``: ``png`` is PNG-encoded RGB bytes, so the images go
through the service's own decoder and preprocessing exactly like an uploaded file.
"""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class OODImage:
    """One evaluation image: a stable ``name``, a ``category`` and PNG ``png`` bytes (RGB)."""

    name: str
    category: str
    png: bytes


def _png(arr: np.ndarray) -> bytes:
    """PNG bytes of ``arr`` (``uint8 (H, W)`` or ``(H, W, 3|4)``), converted to RGB."""
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale any numeric array to 0..255 uint8 (min-max); constant arrays become mid-grey."""
    a = np.asarray(a, dtype=np.float64)
    lo, hi = np.nanmin(a), np.nanmax(a)
    if hi <= lo:
        return np.full(a.shape, 128, dtype=np.uint8)
    return ((a - lo) / (hi - lo) * 255).astype(np.uint8)


#: scikit-image sample files (skimage/data) and the category of each.
SKIMAGE_FILES: dict[str, str] = {
    "astronaut.png": "photo", "brick.png": "texture", "camera.png": "photo", "chelsea.png": "photo",
    "coffee.png": "photo", "coins.png": "photo", "color.png": "test_pattern", "grass.png": "texture",
    "gravel.png": "texture", "horse.png": "graphic", "hubble_deep_field.jpg": "photo", "logo.png": "graphic",
    "moon.png": "photo", "motorcycle_left.png": "photo", "page.png": "document", "rocket.jpg": "photo",
    "text.png": "document", "clock_motion.png": "photo", "chessboard_RGB.png": "test_pattern",
    "cell.png": "microscopy", "ihc.png": "microscopy", "retina.jpg": "fundus", "microaneurysms.png": "fundus",
    "phantom.png": "ct",
}
#: matplotlib sample files and their categories (``s1045.ima.gz`` is an MR slice, 256 x 256 uint16).
MATPLOTLIB_FILES: dict[str, str] = {
    "grace_hopper.jpg": "photo", "Minduka_Present_Blue_Pack.png": "photo", "logo2.png": "graphic",
}
#: pydicom's bundled test files (shipped in the wheel) with one grey-scale frame each.
PYDICOM_FILES: dict[str, str] = {"CT_small.dcm": "ct", "MR_small.dcm": "mr"}


def _skimage_images() -> list[OODImage]:
    import skimage

    base = os.path.join(os.path.dirname(skimage.__file__), "data")
    out = []
    for fname, cat in SKIMAGE_FILES.items():
        path = os.path.join(base, fname)
        if os.path.exists(path):
            with Image.open(path) as img:
                out.append(OODImage(f"skimage/{fname}", cat, _png(np.asarray(img.convert("RGB")))))
    return out


def _matplotlib_images() -> list[OODImage]:
    import matplotlib

    base = os.path.join(matplotlib.get_data_path(), "sample_data")
    out = []
    for fname, cat in MATPLOTLIB_FILES.items():
        with Image.open(os.path.join(base, fname)) as img:
            out.append(OODImage(f"matplotlib/{fname}", cat, _png(np.asarray(img.convert("RGB")))))
    with gzip.open(os.path.join(base, "s1045.ima.gz")) as fh:
        mr = np.frombuffer(fh.read(), np.uint16).reshape(256, 256)
    out.append(OODImage("matplotlib/s1045.ima (MR)", "mr", _png(_to_uint8(mr))))
    return out


def _pydicom_images() -> list[OODImage]:
    import pydicom
    from pydicom.data import get_testdata_file

    out = []
    for fname, cat in PYDICOM_FILES.items():
        path = get_testdata_file(fname)
        if path:
            ds = pydicom.dcmread(path)
            out.append(OODImage(f"pydicom/{fname}", cat, _png(_to_uint8(ds.pixel_array))))
    return out


def _figure_png(draw) -> bytes:
    """Render a matplotlib figure drawn by ``draw(fig)`` to RGB PNG bytes (Agg, 100 dpi)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 4.5), dpi=100)
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        return _png(np.asarray(img.convert("RGB")))


def _drawn_images() -> list[OODImage]:
    rng = np.random.default_rng(20261202)
    h, w = 450, 600
    out = []
    for name, value in (("white", 255), ("black", 0), ("grey", 128)):
        out.append(OODImage(f"drawn/blank_{name}", "blank", _png(np.full((h, w, 3), value, np.uint8))))
    out.append(OODImage("drawn/gaussian_noise", "noise",
                        _png(np.clip(rng.normal(128, 50, (h, w, 3)), 0, 255).astype(np.uint8))))
    out.append(OODImage("drawn/uniform_noise", "noise", _png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))))
    sp = np.full((h, w), 128, np.uint8)
    mask = rng.random((h, w))
    sp[mask < 0.05], sp[mask > 0.95] = 0, 255
    out.append(OODImage("drawn/salt_and_pepper", "noise", _png(sp)))
    bars = np.array([[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0], [192, 0, 192], [192, 0, 0],
                     [0, 0, 192]], np.uint8)
    out.append(OODImage("drawn/colour_bars", "test_pattern",
                        _png(np.repeat(bars[np.arange(w) * 7 // w][None], h, axis=0))))
    yy, xx = np.mgrid[0:h, 0:w]
    out.append(OODImage("drawn/gradient", "test_pattern",
                        _png(np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 128)], -1).astype(np.uint8))))
    out.append(OODImage("drawn/checkerboard", "test_pattern",
                        _png((((yy // 40) + (xx // 40)) % 2 * 255).astype(np.uint8))))
    grid = np.full((h, w, 3), 255, np.uint8)
    grid[::25] = grid[:, ::25] = (0, 0, 0)
    out.append(OODImage("drawn/grid", "test_pattern", _png(grid)))
    # synthetic B-mode ultrasound frame: speckle inside a sector, black outside
    r = np.hypot(yy - 0.0, xx - w / 2)
    theta = np.arctan2(xx - w / 2, yy + 1e-9)
    inside = (r < h * 0.95) & (np.abs(theta) < 0.6)
    speckle = rng.rayleigh(40, (h, w)) * np.exp(-r / (h * 1.5))
    out.append(OODImage("drawn/ultrasound_sector", "ultrasound", _png(np.where(inside, np.clip(speckle, 0, 255), 0)
                                                                         .astype(np.uint8))))
    # a document page and a report screenshot
    page = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(page)
    for i in range(18):
        d.text((30, 20 + i * 23), f"Line {i + 1}: the quick brown fox jumps over the lazy dog 0123456789", fill="black")
    out.append(OODImage("drawn/document_page", "document", _png(np.asarray(page))))

    def chart(fig):
        ax = fig.add_subplot()
        x = np.linspace(0, 10, 200)
        ax.plot(x, np.sin(x), label="sin")
        ax.plot(x, np.cos(x), label="cos")
        ax.set_title("Quarterly figures")
        ax.legend()

    def bars_chart(fig):
        ax = fig.add_subplot()
        ax.bar(list("ABCDEFG"), [3, 7, 2, 5, 8, 4, 6], color="tab:orange")
        ax.set_ylabel("count")

    def table(fig):
        ax = fig.add_subplot()
        ax.axis("off")
        ax.table(cellText=[[f"{r * c}" for c in range(1, 6)] for r in range(1, 9)],
                 colLabels=list("ABCDE"), loc="center")

    def heatmap(fig):
        ax = fig.add_subplot()
        ax.imshow(rng.random((20, 30)), cmap="viridis")

    def scatter(fig):
        ax = fig.add_subplot()
        ax.scatter(rng.normal(size=300), rng.normal(size=300), s=8)

    for name, fn in (("line_chart", chart), ("bar_chart", bars_chart), ("table", table), ("heatmap", heatmap),
                     ("scatter_plot", scatter)):
        out.append(OODImage(f"drawn/{name}", "screenshot", _figure_png(fn)))
    ui = Image.new("RGB", (w, h), (240, 240, 245))
    d = ImageDraw.Draw(ui)
    d.rectangle((0, 0, w, 40), fill=(30, 60, 120))
    d.text((12, 12), "Patient list - Ward 4", fill="white")
    for i in range(8):
        d.rectangle((20, 60 + i * 45, w - 20, 95 + i * 45), outline=(150, 150, 160), fill="white")
        d.text((30, 70 + i * 45), f"Bed {i + 1}   appointment 09:{10 + i}   status: ok", fill="black")
    out.append(OODImage("drawn/app_screenshot", "screenshot", _png(np.asarray(ui))))
    return out


def build_ood_set() -> list[OODImage]:
    """All evaluation images (>= 40), in a fixed order.

    Raises:
        ImportError: scikit-image, matplotlib or pydicom is not installed (``pip install -e '.[train]'``).
    """
    return _skimage_images() + _matplotlib_images() + _pydicom_images() + _drawn_images()


def decode_all(images: list[OODImage], spec) -> np.ndarray:
    """Every image through the service's preprocessing: ``uint8 (N, H, W, 3)`` for ``spec``."""
    from service.preprocessing import preprocess_bytes

    return np.stack([preprocess_bytes(i.png, spec) for i in images])
