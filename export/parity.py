"""End-to-end parity: trainer path (Keras) vs service path (ONNX) on the same real JPEG files.

Keras side: files -> the trainer's data loader -> ``model.keras`` -> softmax(logits / T).
ONNX side: file bytes -> the service's :class:`service.runtime.ModelRuntime` (its own
preprocessing spec from the manifest, its own sha256 check) -> calibrated probabilities.
Both sides decode with :mod:`service.preprocessing`, as the service does in production.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.errors import ExportError

#: Largest allowed |p_keras - p_onnx| for any class of any image.
MAX_ABS_DIFF = 0.01
#: Share of images whose top class must agree.
MIN_TOP1_AGREEMENT = 0.995


def served_images(data_dir: Path, rows: list[dict[str, str]], spec) -> np.ndarray:
    """The rows' image files decoded as the service decodes uploads (:func:`service.preprocessing.preprocess_bytes`).

    Args:
        data_dir: dataset folder; each row's ``filename`` is relative to it.
        rows: ``labels.csv`` rows (:func:`trainer.data.read_labels`).
        spec: the model's :class:`service.preprocessing.PreprocessSpec` (``ModelRuntime.spec``).

    Returns:
        ``uint8 (N, H, W, 3)`` RGB.

    Raises:
        FileNotFoundError: an image file is missing.
        service.preprocessing.ImageDecodeError: an image file does not decode.
    """
    from service.preprocessing import preprocess_bytes

    return np.stack([preprocess_bytes((Path(data_dir) / r["filename"]).read_bytes(), spec) for r in rows])


def run_served(runtime, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The service's own graph call (:meth:`service.runtime.ModelRuntime.predict`) over ``images`` in batches.

    Args:
        runtime: a :class:`service.runtime.ModelRuntime`.
        images: ``uint8 (N, H, W, 3)`` (:func:`served_images`).
        batch_size: images per call.

    Returns:
        (calibrated probabilities ``float32 (N, K)``, each extra output of the manifest ``float32 (N,)`` by name).
    """
    outs = [runtime.predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    extras = {name: np.concatenate([o.extras[name] for o in outs]) for name in (outs[0].extras if outs else {})}
    return np.concatenate([o.probabilities for o in outs]), extras


def top1_agreement(p_ref: np.ndarray, p_new: np.ndarray, tie_band: float = 0.0) -> tuple[float, int]:
    """Share of images whose top class is the same in both, among those the reference decides clearly.

    Args:
        p_ref: reference probabilities ``float (N, K)`` (Keras).
        p_new: probabilities to check ``float (N, K)`` (ONNX).
        tie_band: images whose reference top-two margin is at most this are left out (0: every image):
            a difference inside the probability tolerance may swap such a near-tie without any error.

    Returns:
        ``(agreement, images in the band)``; agreement is NaN when every image lies in the band (nothing was
        compared, so a check on it must fail rather than pass).
    """
    same = p_ref.argmax(1) == p_new.argmax(1)
    if tie_band <= 0:
        return float(same.mean()) if len(same) else float("nan"), 0
    top2 = np.sort(p_ref, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > tie_band
    return (float(same[decided].mean()) if decided.any() else float("nan")), int((~decided).sum())


def check_parity(keras_path: Path, model_dir: Path, data_dir: Path, n_images: int) -> dict:
    """Compare probabilities on up to ``n_images`` test-split images (all of them if fewer exist).

    Returns:
        ``{"images", "max_abs_diff", "top1_agreement", "thresholds"}``.

    Raises:
        ExportError: max |diff| > :data:`MAX_ABS_DIFF` or top-1 agreement < :data:`MIN_TOP1_AGREEMENT`,
            or no test images found.
    """
    import keras

    from service.runtime import ModelRuntime, softmax_with_temperature
    from trainer.data import load_split, read_labels, select_rows

    runtime = ModelRuntime(model_dir, providers=["CPUExecutionProvider"])
    rows = select_rows(read_labels(Path(data_dir)), "test", None, 0)[:n_images]
    if not rows:
        raise ExportError(f"no test-split images in {data_dir} for the parity check")
    split = load_split(Path(data_dir), rows, runtime.spec, cache_dir=None, workers=2)
    model = keras.models.load_model(keras_path, compile=False)
    temperature = runtime.manifest.calibration.temperature
    p_keras = softmax_with_temperature(np.asarray(model.predict(split.images.astype(np.float32), batch_size=32, verbose=0)), temperature)

    p_onnx, _ = run_served(runtime, served_images(Path(data_dir), rows, runtime.spec))
    max_diff = float(np.abs(p_keras - p_onnx).max())
    agree, _ = top1_agreement(p_keras, p_onnx)
    result = {"images": len(rows), "max_abs_diff": max_diff, "top1_agreement": agree,
              "thresholds": {"max_abs_diff": MAX_ABS_DIFF, "min_top1_agreement": MIN_TOP1_AGREEMENT}}
    print(f"parity on {len(rows)} test images: max |p_keras - p_onnx| = {max_diff:.2e}, "
          f"top-1 agreement {agree:.4f}", flush=True)
    if max_diff > MAX_ABS_DIFF or not agree >= MIN_TOP1_AGREEMENT:
        raise ExportError(
            f"parity check failed on {len(rows)} images: max abs diff {max_diff:.4g} (limit {MAX_ABS_DIFF}), "
            f"top-1 agreement {agree:.4f} (limit {MIN_TOP1_AGREEMENT}); nothing written"
        )
    return result
