"""Experiment (2026-12-08): does the served model answer the same lesion the same way at other file sizes?

``python trainer/results/experiments/input_resolution.py > trainer/results/experiments/input_resolution.txt``

The shared HAM10000 copies are 200x150 JPEGs (most likely PIL bicubic from the 600x450 originals, quality 75,
4:2:0 chroma; ``../shared/data/ham10000/README.md``), and every member trained on them. Hospital systems will send
larger files: the 600x450 originals, or 1024x768 and more from current dermatoscopes. The service decodes any
size (a large JPEG at a reduced DCT scale, :func:`service.preprocessing.decode_image`) and resizes it to the
model input, so the same content at another size should get the same answer. This measures how far that holds
for the bundled model, as served (file bytes -> :func:`service.preprocessing.preprocess_bytes` ->
:class:`service.runtime.ModelRuntime`), on the test split (chooses nothing):

- ``stored``: the 200x150 file itself (the reference);
- ``600x450 q95``: bicubic 3x upsample, JPEG quality 95, 4:4:4 chroma (the originals' size);
- ``600x450 png``: the same pixels, lossless;
- ``1024x768 q90``: bicubic upsample, quality 90, 4:2:0 (decoded at 1/2 DCT scale by the service);
- ``600x450 q95 sharpened``: the ``600x450 q95`` pixels with an unsharp mask (radius 2 px, 80 %, threshold 2): a proxy for
  optics sharper than the ones behind the training copies (the copies cannot be made genuinely sharper).

The upsampled files carry no detail the stored ones lack, so the first three measure the service's own
resolution invariance (decode, draft scaling, resize filter), not the model's behaviour on truly
higher-resolution photographs, which no data here can show. Referral decisions are the service's with its
default OOD policy (``flag``): an OOD-flagged image is referred too.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.metrics import balanced_accuracy_score

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from export.parity import run_served
from service.answers import ReferralRule
from service.preprocessing import preprocess_bytes
from service.runtime import ModelRuntime
from trainer.config import DEFAULT_DATA_DIR
from trainer.data import read_labels, select_rows
from trainer.metrics import is_malignant, sensitivity_specificity


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def variants(data: bytes) -> dict[str, bytes]:
    """The stored file and its re-encoded larger versions (see the module docstring)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    big = img.resize((600, 450), Image.Resampling.BICUBIC)
    return {
        "stored": data,
        "600x450 q95": _encode(big, "JPEG", quality=95, subsampling=0),
        "600x450 png": _encode(big, "PNG"),
        "1024x768 q90": _encode(img.resize((1024, 768), Image.Resampling.BICUBIC), "JPEG", quality=90,
                                subsampling=2),
        "600x450 q95 sharpened": _encode(big.filter(ImageFilter.UnsharpMask(radius=2, percent=80, threshold=2)),
                                         "JPEG", quality=95, subsampling=0),
    }


def main(model_dir: Path = ROOT / "models" / "default") -> None:
    data_dir = DEFAULT_DATA_DIR
    runtime = ModelRuntime(model_dir, providers=["CPUExecutionProvider"])
    m = runtime.manifest
    codes = runtime.class_codes
    rule = ReferralRule.resolve(m)
    rows = select_rows(read_labels(data_dir), "test", None, 0)
    y = np.array([codes.index(r["label"]) for r in rows])
    mal = is_malignant(y, codes)
    per_variant: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, int] = {}
    for r in rows:
        for name, b in variants((data_dir / r["filename"]).read_bytes()).items():
            per_variant.setdefault(name, []).append(preprocess_bytes(b, runtime.spec))
            sizes[name] = sizes.get(name, 0) + len(b)
    print(f"# {m.name} {m.version}, test split ({len(rows)} images), as served; referral threshold "
          f"{rule.malignant_threshold}")
    print("| input | mean file size (KB) | balanced accuracy | top-1 agreement with stored | top-1 agreement with "
          "600x450 q95 | mean / max abs diff p (all classes) | referral agreement | referral sensitivity / "
          "specificity | OOD-flagged share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ref_p = ref_refer = None
    top1 = {}
    for name, imgs in per_variant.items():
        p, extras = run_served(runtime, np.stack(imgs))
        refer = np.array([rule.decide(dict(zip(codes, map(float, row))))[1] for row in p.astype(np.float64)])
        ood = extras.get(m.ood.output) if m.ood is not None else None
        flags = ood > m.ood.threshold if ood is not None else np.zeros(len(p), bool)
        flagged = float(flags.mean()) if ood is not None else float("nan")
        refer = refer | flags  # as the service answers with its default OOD policy (flag)
        sens, spec = sensitivity_specificity(refer, mal)
        top1[name] = p.argmax(1)
        if ref_p is None:
            ref_p, ref_refer = p, refer
        d = np.abs(p - ref_p)
        print(f"| {name} | {sizes[name] / len(rows) / 1024:.1f} | {balanced_accuracy_score(y, p.argmax(1)):.4f} | "
              f"{(p.argmax(1) == ref_p.argmax(1)).mean():.4f} | "
              + (f"{(p.argmax(1) == top1['600x450 q95']).mean():.4f}" if "600x450 q95" in top1 else "")
              + f" | {d.mean():.4f} / {d.max():.3f} | "
              f"{(refer == ref_refer).mean():.4f} | {sens:.3f} / {spec:.3f} | {flagged:.4f} |", flush=True)


if __name__ == "__main__":
    main()
