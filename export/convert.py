"""Convert a trained ``.keras`` model to ONNX (tf2onnx) and write a verified model directory.

The ONNX graph takes ``uint8 (N, H, W, 3)`` RGB (dynamic batch N) named ``image`` and returns
``float32 (N, K)`` logits named ``logits``. Normalisation is inside the graph; calibration
(temperature) is in the manifest. The directory is written to a temporary folder and moved into
place only after the parity check passes, so a failed export writes nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from export.errors import ExportError
from export.parity import check_parity
from export.staging import staged_directory, tool_versions
from schemas.manifest import HAM10000_CLASSES, Calibration, ClassInfo, InputSpec, Manifest, OutputSpec
from service.runtime import sha256_file

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: ONNX opset of the exported graph (tf2onnx 1.17 + onnxruntime 1.31 tested).
OPSET = 17


def keras_to_onnx(keras_path: Path, onnx_path: Path, opset: int = OPSET) -> tuple[int, int]:
    """Convert ``keras_path`` to ``onnx_path`` with a uint8 input and a dynamic batch dimension.

    Returns:
        The model's input ``(height, width)`` in pixels.

    Raises:
        ExportError: the model's input is not ``(H, W, 3)``.
    """
    import keras
    import tensorflow as tf
    import tf2onnx

    model = keras.models.load_model(keras_path, compile=False)
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[-1] != 3:
        raise ExportError(f"expected an image input (None, H, W, 3), got {shape}")
    height, width = int(shape[1]), int(shape[2])

    @tf.function(input_signature=[tf.TensorSpec((None, height, width, 3), tf.uint8, name=INPUT_NAME)])
    def serve(image):
        return {OUTPUT_NAME: model(tf.cast(image, tf.float32), training=False)}

    model_proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=opset, output_path=str(onnx_path)
    )
    names = [o.name for o in model_proto.graph.output]
    if names != [OUTPUT_NAME]:
        raise ExportError(f"unexpected ONNX outputs {names}")
    return height, width


def export_run(run_dir: Path, output_dir: Path, name: str, version_str: str, data_dir: Path,
               parity_images: int = 300, force: bool = False) -> Manifest:
    """Export a trainer run directory into a served model directory.

    Args:
        run_dir: a trainer output (``model.keras``, ``metrics.json``, ``calibration.json``,
            ``config.json``, report files).
        output_dir: the model directory to create (``model.onnx`` + ``manifest.json`` + report).
        name: model name in the manifest and the API.
        version_str: model version (e.g. ``1.0.0``).
        data_dir: dataset (``labels.csv`` + ``images/``) whose test split feeds the parity check.
        parity_images: test images compared Keras vs ONNX (releases use >= 300, the default; smaller
            values are for smoke tests and are recorded in the manifest's ``export.parity.images``).
        force: replace an existing ``output_dir``.

    Returns:
        The written manifest.

    Raises:
        ExportError: conversion failed, parity failed, or ``output_dir`` exists without ``force``.
    """
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    calibration = json.loads((run_dir / "calibration.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    resize_method = config.get("resize_method", "bilinear")  # what the trainer decoded with
    with staged_directory(output_dir, force) as tmp:
        height, width = keras_to_onnx(run_dir / "model.keras", tmp / "model.onnx")
        manifest = Manifest(
            name=name,
            version=version_str,
            created_at=datetime.now(UTC),
            sha256=sha256_file(tmp / "model.onnx"),
            classes=[ClassInfo(code=c, name=n) for c, n in HAM10000_CLASSES.items()],
            input=InputSpec(name=INPUT_NAME, height=height, width=width, dtype="uint8", resize_method=resize_method),
            output=OutputSpec(name=OUTPUT_NAME),
            calibration=Calibration(**calibration),
            metrics={k: metrics[k] for k in ("split", "test", "test_uncalibrated", "temperature", "wall_time_seconds")
                     if k in metrics},
            training=config,
        )
        (tmp / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        parity = check_parity(run_dir / "model.keras", tmp, data_dir, parity_images)
        manifest.export = tool_versions(OPSET) | {"parity": parity}
        (tmp / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        for f in json.loads((run_dir / "report_files.json").read_text()) if (run_dir / "report_files.json").exists() else []:
            shutil.copy2(run_dir / f, tmp / f)
        for f in ("MODEL_CARD.md", "metrics.json", "config.json", "history.json"):
            if (run_dir / f).exists():
                shutil.copy2(run_dir / f, tmp / f)
    log.info("wrote %s (sha256 %s)", output_dir, manifest.sha256)
    return manifest

