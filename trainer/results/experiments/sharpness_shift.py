"""Experiment (2026-12-08): does sharpness jitter in training make members steadier on sharper images?

``python trainer/results/experiments/sharpness_shift.py trainer/results/cv_a035 trainer/results/cv_a035_sharp
> trainer/results/experiments/sharpness_shift.txt``
(arguments: member directories, or family directories meaning all their members)

``input_resolution.txt`` found that an unsharp mask on upsampled test files moves a few per cent of the served
model's top classes. Family ``cv_a035_sharp`` is ``cv_a035`` (same network, recipe and 3-fold split, fold seed 7) trained with
``aug_sharpness=0.8`` (:mod:`trainer.augment`). Each member is scored on **its own held-out fold** (never the
test split), identity view, arg-max, no tau, with each image made the way ``input_resolution.py`` makes it
from the stored 200x150 file and then decoded as the service decodes uploads
(:func:`service.preprocessing.preprocess_bytes`):

- ``stored``: the file itself;
- ``600x450``: bicubic 3x upsample, JPEG quality 95, 4:4:4;
- ``sharpened``: the same with an unsharp mask (radius 2 px, 80 %, threshold 2) before encoding;
- ``softened``: the same with a Gaussian blur (radius 1 px) before encoding (the other direction).

Reported per member: held-out balanced accuracy under each, and the share of held-out images whose top class
under ``sharpened`` / ``softened`` equals the one under ``600x450`` (the resize alone is not the question).
Members with the same fold seed and fold share held-out images, so the two families compare fold by fold.
The jitter acts at the model's input scale (Gaussian sigma 1 px of 160) and the shifts here at 600x450 (radius
2 px, ~0.5 px of 160): this measures whether training on one transfers to the other.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.metrics import balanced_accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def _variants(data: bytes) -> dict[str, bytes]:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    big = img.resize((600, 450), Image.Resampling.BICUBIC)

    def enc(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=95, subsampling=0)
        return buf.getvalue()

    return {"stored": data, "600x450": enc(big),
            "sharpened": enc(big.filter(ImageFilter.UnsharpMask(radius=2, percent=80, threshold=2))),
            "softened": enc(big.filter(ImageFilter.GaussianBlur(radius=1)))}


def member_scores(member_dir: Path) -> dict[str, float]:
    """Held-out balanced accuracy under each variant and top-1 agreement of the shifted ones with ``600x450``."""
    from service.preprocessing import PreprocessSpec, preprocess_bytes
    from trainer.cv import fold_splits, load_member, member_config
    from trainer.data import read_labels

    cfg = member_config(member_dir)
    _, held, _ = fold_splits(cfg)
    files = {r["image_id"]: r["filename"] for r in read_labels(Path(cfg.data_dir))}
    spec = PreprocessSpec(height=cfg.image_size, width=cfg.image_size, resize_method=cfg.resize_method)
    arrays: dict[str, list[np.ndarray]] = {}
    for image_id in held.image_ids:
        for name, b in _variants((Path(cfg.data_dir) / files[image_id]).read_bytes()).items():
            arrays.setdefault(name, []).append(preprocess_bytes(b, spec))
    model = load_member(member_dir)
    preds = {name: np.asarray(model.predict(np.stack(a).astype(np.float32), batch_size=64, verbose=0)).argmax(1)
             for name, a in arrays.items()}
    out = {name: float(balanced_accuracy_score(held.labels, p)) for name, p in preds.items()}
    out["agree sharpened"] = float((preds["sharpened"] == preds["600x450"]).mean())
    out["agree softened"] = float((preds["softened"] == preds["600x450"]).mean())
    return out


def main(dirs: list[str]) -> None:
    cols = ["stored", "600x450", "sharpened", "softened", "agree sharpened", "agree softened"]
    print("| member | aug_sharpness | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    from trainer.cv import member_config

    for d in map(Path, dirs):
        members = [d] if (d / "weights.npz").exists() else sorted(p for p in d.iterdir() if (p / "weights.npz").exists())
        for member in members:
            s = member_scores(member)
            print(f"| {member.parent.name}/{member.name} | {member_config(member).aug_sharpness:g} | "
                  + " | ".join(f"{s[c]:.3f}" for c in cols) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
