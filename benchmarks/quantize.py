"""int8 quantisation with onnxruntime's tools, and whether it is allowed: ``python -m benchmarks.quantize``.

1. ``onnxruntime.quantization.quant_pre_process`` (shape inference + graph clean-up), then
   ``quantize_static`` (QDQ format, per-channel int8 weights, uint8 activations) calibrated on
   ``--calib`` training-split images decoded by dermserve's own preprocessing.
2. Balanced accuracy (mean per-class recall) of the fp32 and the int8 graph on the **full test
   split**, both through ``service.runtime``-equivalent calls (same preprocessing, same session
   options), plus in-process throughput at batch 1 and ``--batch``.
3. Writes a servable model directory (``--out-dir``, default ``.bench-cache/model-int8``): the int8
   graph and a copy of the manifest with its sha256 and version suffix ``+int8``, so that
   ``python -m benchmarks --variant int8:model_dir=.bench-cache/model-int8`` can serve it.

The rule (issue): keep int8 only if balanced accuracy drops by at most 0.5 points.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from benchmarks import BENCH_DIR, CACHE_DIR, REPO_ROOT
from trainer.data import split_rows

app = typer.Typer(add_completion=False, help=__doc__)


def balanced_accuracy(y_true: list[int], y_pred: list[int], k: int) -> float:
    recalls = []
    for c in range(k):
        idx = [i for i, t in enumerate(y_true) if t == c]
        if idx:
            recalls.append(sum(y_pred[i] == c for i in idx) / len(idx))
    return float(np.mean(recalls))


@app.command()
def main(
    model_dir: Annotated[Path, typer.Option()] = REPO_ROOT / "models" / "default",
    data_dir: Annotated[Path, typer.Option()] = REPO_ROOT.parent / "shared" / "data" / "ham10000",
    out_dir: Annotated[Path, typer.Option(help="int8 model directory to write")] = CACHE_DIR / "model-int8",
    calib: Annotated[int, typer.Option(help="training-split images for calibration")] = 256,
    batch: Annotated[int, typer.Option()] = 32,
    test_limit: Annotated[int, typer.Option(help="test images evaluated (0 = the full split)")] = 0,
    report: Annotated[Path, typer.Option()] = BENCH_DIR / "results" / "quantize.json",
) -> None:
    """Quantise, evaluate fp32 vs int8 on the test split, write the int8 model dir and a JSON report."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from service.preprocessing import PreprocessSpec, preprocess_file
    from service.runtime import sha256_file

    manifest = json.loads((model_dir / "manifest.json").read_text())
    inp = manifest["input"]
    spec = PreprocessSpec(inp["height"], inp["width"], inp.get("resize_method", "bilinear"))
    codes = [c["code"] for c in manifest["classes"]]
    fp32 = model_dir / manifest["model_file"]
    out_dir.mkdir(parents=True, exist_ok=True)
    pre = out_dir / "model.pre.onnx"
    int8 = out_dir / "model.onnx"

    train = split_rows(data_dir, "train")
    rng = np.random.default_rng(0)
    calib_rows = [train[i] for i in rng.choice(len(train), size=min(calib, len(train)), replace=False)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib_rows)

        def get_next(self):
            r = next(self._it, None)
            if r is None:
                return None
            return {inp["name"]: preprocess_file(str(data_dir / r["filename"]), spec)[None]}

    t0 = time.perf_counter()
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)
    quant_s = time.perf_counter() - t0
    typer.echo(f"quantised in {quant_s:.1f} s -> {int8} ({int8.stat().st_size / 1e6:.2f} MB, "
               f"fp32 {fp32.stat().st_size / 1e6:.2f} MB)")

    test = split_rows(data_dir, "test")
    if test_limit:
        test = test[:test_limit]
    x_all = np.stack([preprocess_file(str(data_dir / r["filename"]), spec) for r in test])
    y_true = [codes.index(r["label"]) for r in test]

    result: dict = {"model": manifest["name"], "version": manifest["version"], "test_images": len(test),
                    "calibration_images": len(calib_rows), "quantize_s": quant_s,
                    "size_mb": {"fp32": fp32.stat().st_size / 1e6, "int8": int8.stat().st_size / 1e6}}
    for name, path in (("fp32", fp32), ("int8", int8)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        run = lambda x: sess.run([manifest["output"]["name"]], {inp["name"]: x})[0]  # noqa: E731
        logits = np.concatenate([run(x_all[i: i + batch]) for i in range(0, len(x_all), batch)])
        y_pred = logits.argmax(1).tolist()
        speed = {}
        for b in (1, batch):
            x = x_all[:b]
            run(x)
            t0 = time.perf_counter()
            reps = max(3, 64 // b)
            for _ in range(reps):
                run(x)
            speed[f"batch{b}_images_per_s"] = b * reps / (time.perf_counter() - t0)
        result[name] = {"balanced_accuracy": balanced_accuracy(y_true, y_pred, len(codes)),
                        "accuracy": float(np.mean(np.array(y_pred) == np.array(y_true))), **speed}
        result.setdefault("_logits", {})[name] = logits
        typer.echo(f"{name}: {result[name]}")
    lg = result.pop("_logits")
    result["top1_agreement"] = float(np.mean(lg["fp32"].argmax(1) == lg["int8"].argmax(1)))
    drop = (result["fp32"]["balanced_accuracy"] - result["int8"]["balanced_accuracy"]) * 100
    result["balanced_accuracy_drop_points"] = drop
    result["allowed"] = drop <= 0.5
    typer.echo(f"balanced accuracy drop: {drop:.2f} points -> int8 {'allowed' if drop <= 0.5 else 'NOT allowed'} "
               f"(rule: <= 0.5); top-1 agreement {result['top1_agreement']:.3f}")

    # a servable model dir: int8 graph + manifest with the new sha256
    m = dict(manifest, sha256=sha256_file(int8), version=f"{manifest['version']}+int8", model_file="model.onnx")
    (out_dir / "manifest.json").write_text(json.dumps(m, indent=2))
    for extra in ("config.json",):
        if (model_dir / extra).is_file():
            shutil.copy(model_dir / extra, out_dir / extra)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=2))
    typer.echo(f"wrote {out_dir} and {report}")


if __name__ == "__main__":
    app()
