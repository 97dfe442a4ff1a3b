"""The images a benchmark sends and the request bodies wrk posts (multipart or OIP JSON)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import typer

from benchmarks import CACHE_DIR
from trainer.data import split_rows

BOUNDARY = "dermbench0c2f6b1e9a4d"


def load_test_images(data_dir: Path, n: int) -> list[tuple[str, bytes]]:
    """``n`` test-split JPEGs (sorted by image_id) as ``(filename, bytes)``; n <= 0 = all."""
    rows = split_rows(data_dir, "test")
    if n > 0:
        rows = rows[:n]
    if not rows:
        raise typer.BadParameter(f"no test-split images in {data_dir}/labels.csv")
    return [(Path(r["filename"]).name, (data_dir / r["filename"]).read_bytes()) for r in rows]


def clinical_images(images: list[tuple[str, bytes]], n: int, size=(1600, 1200), quality: int = 90):
    """The first ``n`` images upscaled to ``size`` JPEGs (clinical-photo size), cached in .bench-cache/."""
    from PIL import Image

    out_dir = CACHE_DIR / f"clinical-{size[0]}x{size[1]}-q{quality}"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for name, data in images[:n]:
        path = out_dir / name
        if not path.is_file():
            img = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.BICUBIC)
            tmp = path.with_suffix(".tmp")
            img.save(tmp, "JPEG", quality=quality)
            tmp.replace(path)
        result.append((name, path.read_bytes()))
    return result


def build_bodies(images: list[tuple[str, bytes]], per_request: int, fmt: str, out_dir: Path) -> Path:
    """Write request bodies (``fmt``: ``multipart`` or ``oip``) of ``per_request`` images each for wrk."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_bodies = max(1, len(images) // per_request) if per_request > 1 else len(images)
    names = []
    for b in range(n_bodies):
        chunk = [images[(b * per_request + j) % len(images)] for j in range(per_request)]
        if fmt == "multipart":
            parts = []
            for name, data in chunk:
                parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
                             f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
            body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
        else:
            body = json.dumps(oip_request(chunk)).encode()
        fname = f"body_{b:05d}.bin"
        (out_dir / fname).write_bytes(body)
        names.append(fname)
    (out_dir / "index.txt").write_text("\n".join(names) + "\n")
    ctype = f"multipart/form-data; boundary={BOUNDARY}" if fmt == "multipart" else "application/json"
    (out_dir / "content_type.txt").write_text(ctype + "\n")
    return out_dir


def oip_request(chunk: list[tuple[str, bytes]]) -> dict:
    """An Open Inference Protocol request with the images as one base64 BYTES input."""
    return {"inputs": [{"name": "images", "shape": [len(chunk)], "datatype": "BYTES",
                        "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(d).decode("ascii") for _, d in chunk]}]}
