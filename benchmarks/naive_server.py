"""Naive baseline: a plain FastAPI endpoint, one onnxruntime call per request, no batching.

What a first version of a model server usually looks like: a sync ``def`` endpoint (FastAPI runs it in
its thread pool), the same shared preprocessing function as dermserve, one ``InferenceSession.run``
per request (all of the request's images in that call), onnxruntime's default session options.

Run: ``python -m benchmarks.naive_server --model-dir models/default --port 8001`` (binds 127.0.0.1).
Endpoints: ``POST /predict`` (multipart, file parts named ``images``), ``GET /health/ready``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, File, UploadFile

from service.preprocessing import PreprocessSpec, preprocess_bytes


def create_app(model_dir: Path) -> FastAPI:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    inp = manifest["input"]
    spec = PreprocessSpec(height=inp["height"], width=inp["width"], resize_method=inp.get("resize_method", "bilinear"))
    session = ort.InferenceSession(str(model_dir / manifest["model_file"]), providers=["CPUExecutionProvider"])
    in_name, out_name = manifest["input"]["name"], manifest["output"]["name"]
    temperature = float(manifest["calibration"]["temperature"])
    codes = [c["code"] for c in manifest["classes"]]
    app = FastAPI()

    @app.get("/health/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/predict")
    def predict(images: list[UploadFile] = File(...)) -> dict:
        batch = np.stack([preprocess_bytes(f.file.read(), spec) for f in images])
        (logits,) = session.run([out_name], {in_name: batch})
        z = logits / temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        return {"predictions": [{"label": codes[int(p.argmax())], "probabilities": dict(zip(codes, p.tolist()))}
                                for p in probs]}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", type=Path, default=Path("models/default"))
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    uvicorn.run(create_app(args.model_dir), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
