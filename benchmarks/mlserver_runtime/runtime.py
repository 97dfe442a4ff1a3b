"""A small MLServer 1.7 custom runtime doing what dermserve does: decode + resize + onnxruntime.

Input: one ``BYTES`` tensor of shape ``[N]`` (or ``[N, 1]``) holding encoded image files as base64
strings (Open Inference Protocol JSON). Output: ``probabilities`` FP32 ``[N, K]``, temperature-
calibrated, in manifest class order. MLServer's adaptive batching merges concurrent requests along
the first axis before :meth:`DermRuntime.predict` and splits the answer afterwards.

Decoding uses dermserve's own ``service.preprocessing`` (numpy + Pillow only), imported from the
repository root given as ``parameters.extra.repo_root`` in ``model-settings.json``; the model
directory is ``parameters.uri``. The harness (``python -m benchmarks``) fills both in.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class DermRuntime(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra = (params.extra or {}) if params else {}
        repo_root = extra.get("repo_root")
        if repo_root and repo_root not in sys.path:
            sys.path.insert(0, repo_root)
        from service.preprocessing import PreprocessSpec, preprocess_bytes

        model_dir = Path(params.uri)
        manifest = json.loads((model_dir / "manifest.json").read_text())
        inp = manifest["input"]
        self._spec = PreprocessSpec(height=inp["height"], width=inp["width"],
                                    resize_method=inp.get("resize_method", "bilinear"))
        self._preprocess = preprocess_bytes
        self._session = ort.InferenceSession(str(model_dir / manifest["model_file"]),
                                             providers=["CPUExecutionProvider"])
        self._in, self._out = inp["name"], manifest["output"]["name"]
        self._temperature = float(manifest["calibration"]["temperature"])
        self._session.run([self._out], {self._in: np.zeros((1, inp["height"], inp["width"], 3), np.uint8)})
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        elements = payload.inputs[0].data.root
        images = []
        for el in elements:
            if isinstance(el, list):  # shape [N, 1]
                el = el[0]
            raw = el.encode("ascii") if isinstance(el, str) else el
            images.append(self._preprocess(base64.b64decode(raw), self._spec))
        (logits,) = self._session.run([self._out], {self._in: np.stack(images)})
        z = logits.astype(np.float64) / self._temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[ResponseOutput(name="probabilities", shape=list(probs.shape), datatype="FP32",
                                    data=probs.ravel().tolist())],
        )
