"""Experiment (2026-12-07): would a test-time colour normalisation protect the members from colour shifts?

``python trainer/results/experiments/colour_normalisation.py > trainer/results/experiments/colour_normalisation.txt``

``colour_shift.py`` found that a global white-balance or exposure change of the 0..255 RGB input (warm,
cool, dark, bright, gamma) costs a member ~5 points of held-out balanced accuracy. Retraining every family
on colour-normalised input costs hours; this asks the cheaper question first: normalise each image, at
inference only, to the **reference illuminant of the member's own training images**, so that typical
images barely change and a shifted one is mapped back:

- illuminant estimate per image and channel: Shades of Gray, ``e_c = (mean(x_c ** p)) ** (1/p)`` with
  p = 6 on ``x / 255`` (Finlayson & Trezzi 2004; used for dermoscopy by Barata et al., IEEE JBHI 2015,
  and by ISIC 2018/2019 top entries);
- reference ``r_c``: geometric mean of ``e_c`` over the member's training images (never its held-out fold);
- ``full``: ``x_c * r_c / e_c`` (removes colour cast and exposure); ``chroma``: the same gains divided by
  their geometric mean over the channels (removes the colour cast only, keeps exposure).

Family ``cv`` (4 members; every pool image is held out once, so the rows are out-of-fold figures over the
7,821 pool images), identity view, arg-max of the raw logits (no tau, no temperature); no figure uses
the test split. Shifts as in ``colour_shift.py``. Members run as ONNX (tf2onnx) through onnxruntime for speed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, log_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from colour_shift import SHIFTS

from trainer.model import SOG_P as P  # the same Shades-of-Gray norm as the model layer


def illuminant(x: np.ndarray) -> np.ndarray:
    """Shades-of-Gray illuminant ``float64 (N, 3)`` of ``x`` ``(N, S, S, 3)`` in 0..255 (p = :data:`P`)."""
    out = np.empty((len(x), 3))
    for i in range(0, len(x), 256):
        z = x[i:i + 256].astype(np.float64) / 255.0
        out[i:i + 256] = np.mean(z ** P, axis=(1, 2)) ** (1.0 / P)
    return np.maximum(out, 1e-3)


def normalise(x: np.ndarray, ref: np.ndarray, mode: str) -> np.ndarray:
    """``x`` ``float32 (N, S, S, 3)`` 0..255 mapped to the reference illuminant ``ref`` ``(3,)``."""
    if mode == "off":
        return x
    gains = ref[None, :] / illuminant(x)
    if mode == "chroma":
        gains = gains / np.exp(np.log(gains).mean(axis=1, keepdims=True))
    return np.clip(x * gains[:, None, None, :].astype(np.float32), 0.0, 255.0)


def onnx_member(member_dir: Path, tmp: Path):
    """An onnxruntime session of one member (float32 (N, S, S, 3) 0..255 -> logits (N, 7))."""
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from trainer.cv import load_member

    model = load_member(member_dir)
    size = model.input_shape[1]

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name="x")])
    def f(x):
        return {"logits": model(x, training=False)}

    path = tmp / f"{member_dir.name}.onnx"
    tf2onnx.convert.from_function(f, input_signature=f.input_signature, opset=17, output_path=str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def main() -> None:
    from trainer.cv import fold_splits, member_config

    family = Path(__file__).resolve().parents[1] / "cv"
    modes = ("off", "full", "chroma")
    logits = {(m, s): [] for m in modes for s in SHIFTS}
    labels = []
    with tempfile.TemporaryDirectory() as tmp:
        for member in sorted(p for p in family.iterdir() if (p / "weights.npz").exists()):
            cfg = member_config(member)
            train, held, _ = fold_splits(cfg)
            ref = np.exp(np.log(illuminant(train.images)).mean(axis=0))
            sess = onnx_member(member, Path(tmp))
            x = held.images.astype(np.float32)
            labels.append(held.labels)
            for s, fn in SHIFTS.items():
                shifted = np.clip(fn(x), 0.0, 255.0).astype(np.float32)
                for m in modes:
                    z = normalise(shifted, ref, m)
                    logits[(m, s)].append(np.concatenate(
                        [sess.run(None, {"x": z[i:i + 128]})[0] for i in range(0, len(z), 128)]))
            print(f"# {member.name}: reference illuminant {np.round(ref, 3).tolist()}", flush=True)
    y = np.concatenate(labels)
    print("\nOOF balanced accuracy (family cv, identity view, arg-max, no tau)\n")
    print("| normalisation | " + " | ".join(SHIFTS) + " | mean over shifts | clean NLL |")
    print("|---|" + "---:|" * (len(SHIFTS) + 2))
    for m in modes:
        row = {s: balanced_accuracy_score(y, np.concatenate(logits[(m, s)]).argmax(1)) for s in SHIFTS}
        lg = np.concatenate(logits[(m, "none")])
        p = np.exp(lg - lg.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        mean_shift = np.mean([v for s, v in row.items() if s != "none"])
        print(f"| {m} | " + " | ".join(f"{v:.3f}" for v in row.values())
              + f" | {mean_shift:.3f} | {log_loss(y, p, labels=range(7)):.4f} |", flush=True)


if __name__ == "__main__":
    main()
