"""In-process measurements of single levers (no HTTP): ``python -m benchmarks.levers --help``.

- ``ort``: onnxruntime session options -- intra-op threads, graph optimisation level, and loading a
  saved optimised graph (session creation time) -- at batch 1 and the given batch size;
- ``decode``: decode + resize time per image with and without Pillow's JPEG ``draft`` (reduced-size
  DCT decode), on the dataset images and on the clinical-size (1600x1200) copies; checks that the
  draft actually reduced the decoded size and how far the result is from a full decode;
- ``copies``: ``np.stack`` of decoded images vs decoding straight into a preallocated batch tensor.

Results are printed and written as JSON (``--out``). Decode/copy timings are single-threaded.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from benchmarks import BENCH_DIR, REPO_ROOT
from benchmarks.bodies import clinical_images, load_test_images

app = typer.Typer(add_completion=False, help=__doc__)


def _time(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls (after one warm-up call)."""
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def ort_levers(model_dir: Path, batch: int, repeat: int) -> list[dict]:
    import onnxruntime as ort

    manifest = json.loads((model_dir / "manifest.json").read_text())
    h, w = manifest["input"]["height"], manifest["input"]["width"]
    model = str(model_dir / manifest["model_file"])
    in_name, out_name = manifest["input"]["name"], manifest["output"]["name"]
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    rng = np.random.default_rng(0)
    rows = []
    saved = Path(tempfile.mkdtemp()) / "optimised.onnx"
    for threads in (1, 2):
        for lname, level in levels.items():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = level
            if lname == "all" and threads == 1:
                opts.optimized_model_filepath = str(saved)
            t0 = time.perf_counter()
            sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
            create_s = time.perf_counter() - t0
            row = {"intra_op_threads": threads, "graph_optimization": lname, "session_create_s": create_s}
            for b in sorted({1, batch}):
                x = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
                s = _time(lambda: sess.run([out_name], {in_name: x}), repeat)
                row[f"batch{b}_images_per_s"] = b / s
            rows.append(row)
            typer.echo(row)
    # loading the saved optimised graph with optimisation disabled: does it start faster?
    for threads in (1, 2):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(saved), sess_options=opts, providers=["CPUExecutionProvider"])
        row = {"intra_op_threads": threads, "graph_optimization": "saved-optimised, disable",
               "session_create_s": time.perf_counter() - t0}
        for b in sorted({1, batch}):
            x = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
            row[f"batch{b}_images_per_s"] = b / _time(lambda: sess.run([out_name], {in_name: x}), repeat)
        rows.append(row)
        typer.echo(row)
    return rows


def decode_levers(model_dir: Path, images: list, clinical: list) -> list[dict]:
    from PIL import Image

    from service.preprocessing import PreprocessSpec, decode_image, preprocess_bytes, resize_to_array

    manifest = json.loads((model_dir / "manifest.json").read_text())
    spec = PreprocessSpec(manifest["input"]["height"], manifest["input"]["width"],
                          manifest["input"].get("resize_method", "bilinear"))

    def no_draft(data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        img.load()
        return resize_to_array(img.convert("RGB"), spec)

    rows = []
    for name, imgs in (("dermoscopic", images), ("clinical-1600x1200", clinical)):
        datas = [d for _, d in imgs]
        decoded_sizes = {decode_image(d, spec).size for d in datas[:8]}
        t_draft = _time(lambda: [preprocess_bytes(d, spec) for d in datas], 3) / len(datas)
        t_full = _time(lambda: [no_draft(d) for d in datas], 3) / len(datas)
        diffs = [np.abs(preprocess_bytes(d, spec).astype(int) - no_draft(d).astype(int)).mean() for d in datas[:16]]
        row = {"images": name, "source_size": Image.open(io.BytesIO(datas[0])).size,
               "decoded_size_with_draft": sorted(decoded_sizes), "ms_per_image_draft": t_draft * 1000,
               "ms_per_image_full_decode": t_full * 1000, "speedup": t_full / t_draft,
               "mean_abs_pixel_diff_vs_full": float(np.mean(diffs))}
        rows.append(row)
        typer.echo(row)
    return rows


def copy_levers(model_dir: Path, images: list, batch: int) -> dict:
    from service.preprocessing import PreprocessSpec, decode_image

    manifest = json.loads((model_dir / "manifest.json").read_text())
    spec = PreprocessSpec(manifest["input"]["height"], manifest["input"]["width"],
                          manifest["input"].get("resize_method", "bilinear"))
    from service.preprocessing import RESIZE_METHODS

    datas = [d for _, d in images[:batch]]
    resized = [decode_image(d, spec).resize((spec.width, spec.height), RESIZE_METHODS[spec.resize_method])
               for d in datas]
    arrays = [np.asarray(im, dtype=np.uint8) for im in resized]
    out = np.empty((len(datas), spec.height, spec.width, 3), np.uint8)

    def into_buffer() -> None:
        for i, im in enumerate(resized):
            out[i] = np.asarray(im)

    row = {"batch": len(datas), "np_stack_us": _time(lambda: np.stack(arrays), 50) * 1e6,
           "asarray_then_stack_us": _time(lambda: np.stack([np.asarray(im) for im in resized]), 50) * 1e6,
           "asarray_into_preallocated_us": _time(into_buffer, 50) * 1e6}
    typer.echo(row)
    return row


@app.command()
def main(
    model_dir: Annotated[Path, typer.Option()] = REPO_ROOT / "models" / "default",
    data_dir: Annotated[Path, typer.Option()] = REPO_ROOT.parent / "shared" / "data" / "ham10000",
    batch: Annotated[int, typer.Option(help="batch size for the ORT and copy levers")] = 32,
    repeat: Annotated[int, typer.Option(help="timed repetitions per ORT measurement")] = 20,
    images: Annotated[int, typer.Option()] = 64,
    out: Annotated[Path, typer.Option()] = BENCH_DIR / "results" / "levers.json",
) -> None:
    """Measure the in-process levers; print and write JSON."""
    imgs = load_test_images(data_dir, images)
    clinical = clinical_images(imgs, min(images, 32))
    result = {"ort": ort_levers(model_dir, batch, repeat), "decode": decode_levers(model_dir, imgs, clinical),
              "copies": copy_levers(model_dir, imgs, batch)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()
