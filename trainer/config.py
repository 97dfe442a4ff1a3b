"""The trainer's configuration: every knob of a run, saved verbatim next to the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

#: The repository root; relative defaults below are resolved against it, not the working directory.
REPO_ROOT = Path(__file__).resolve().parent.parent


def _repo_path(value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


def portable_path(path: Path | str) -> str:
    """``path`` as committed files should record it (``member.json``, ``choices.json``, the model manifest).

    A relative ``path`` is relative to the working directory, as the trainer's command line reads it. Recorded:

    1. under the configured dataset or weights folder (:data:`DEFAULT_DATA_DIR`, :data:`DEFAULT_WEIGHTS_DIR`,
       i.e. after ``DERMSERVE_DATA_DIR`` / ``DERMSERVE_WEIGHTS_DIR``): as their documented places
       :data:`SHARED_DATA_DIR` / :data:`SHARED_WEIGHTS_DIR` (``../shared/data/ham10000/...``);
    2. in the repository: relative to its root (``trainer/results/cv/fold0``);
    3. beside it (under the repository's parent folder, unless that is the filesystem root):
       ``../<rest>``;
    4. anything else: absolute.

    Recorded paths then name the same files on any machine instead of the training machine's ``/work/...``;
    :func:`local_path` and :func:`trainer.ensemble.resolve_member` read them back. Each rule compares the path
    as written (normalised: a symlinked ``../shared`` stays ``../shared``) and, failing that, resolved.
    """
    p = Path(path).expanduser()
    absolute = p if p.is_absolute() else Path.cwd() / p
    candidates = (Path(os.path.normpath(absolute)), absolute.resolve())
    for candidate in candidates:
        for shared, local in _shared_places():
            for root in (local, local.resolve()):
                if candidate.is_relative_to(root):
                    return str(shared / candidate.relative_to(root))
    for candidate in candidates:
        if candidate.is_relative_to(REPO_ROOT):
            return str(candidate.relative_to(REPO_ROOT))
        parent = REPO_ROOT.parent
        if parent != Path(parent.anchor) and candidate.is_relative_to(parent):
            return str(Path("..") / candidate.relative_to(parent))
    return str(absolute.resolve())


#: The configuration fields that hold paths (:func:`portable_config`, :func:`local_config`).
PATH_FIELDS = ("data_dir", "output_dir", "weights", "cache_dir")
#: The documented places of the dataset and the weights, as :func:`portable_path` records them.
SHARED_DATA_DIR = Path("../shared/data/ham10000")
SHARED_WEIGHTS_DIR = Path("../shared/weights")


def _shared_places() -> tuple[tuple[Path, Path], ...]:
    """``(documented place, configured place)`` of the dataset and the weights (read at call time, after any
    ``DERMSERVE_DATA_DIR`` / ``DERMSERVE_WEIGHTS_DIR``)."""
    return (SHARED_DATA_DIR, DEFAULT_DATA_DIR), (SHARED_WEIGHTS_DIR, DEFAULT_WEIGHTS_DIR)


def portable_config(cfg: dict) -> dict:
    """A config dict (``TrainConfig.model_dump(mode="json")``) with its :data:`PATH_FIELDS` recorded by
    :func:`portable_path`: what ``member.json`` and the model manifest store, so that the committed files name
    ``../shared/...`` and ``trainer/results/...``, not one machine's ``/work/...``. Other keys are unchanged."""
    return {k: portable_path(v) if k in PATH_FIELDS and v else v for k, v in cfg.items()}


def local_path(recorded: str | Path) -> Path:
    """Where a path recorded by :func:`portable_path` lies on this machine.

    Absolute paths are kept. A relative path under :data:`SHARED_DATA_DIR` or :data:`SHARED_WEIGHTS_DIR` is
    re-rooted at :data:`DEFAULT_DATA_DIR` / :data:`DEFAULT_WEIGHTS_DIR`, so ``DERMSERVE_DATA_DIR`` and
    ``DERMSERVE_WEIGHTS_DIR`` move committed members' data and weights too; any other relative path is
    relative to the repository root, not the working directory.
    """
    p = Path(recorded)
    if p.is_absolute():
        return p
    p = Path(os.path.normpath(p))
    for shared, local in _shared_places():
        if p.is_relative_to(shared):
            return local / p.relative_to(shared)
    return REPO_ROOT / p


def local_config(cfg: dict) -> dict:
    """The inverse of :func:`portable_config`: the :data:`PATH_FIELDS` that are set become absolute
    :class:`~pathlib.Path` values through :func:`local_path`; other keys are unchanged."""
    return {k: local_path(v) if k in PATH_FIELDS and v else v for k, v in cfg.items()}


#: Where the dataset lives unless told otherwise (``DERMSERVE_DATA_DIR`` overrides).
DEFAULT_DATA_DIR = _repo_path(os.environ.get("DERMSERVE_DATA_DIR", "../shared/data/ham10000"))
#: Where the verified ImageNet weights live unless told otherwise (``DERMSERVE_WEIGHTS_DIR``).
DEFAULT_WEIGHTS_DIR = _repo_path(os.environ.get("DERMSERVE_WEIGHTS_DIR", "../shared/weights"))
#: Keras Applications' MobileNetV2 alpha 0.5 no-top file (see ../shared/weights/README.md).
MOBILENETV2_050_WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"


class TrainConfig(BaseModel):
    """One training run. Saved as ``config.json`` in the output directory.

    Image size is square (height = width, pixels); the 200x150 dataset images are resized to it
    with the shared preprocessing (whole field of view, aspect not preserved).
    """

    data_dir: Path = DEFAULT_DATA_DIR
    output_dir: Path = Path("runs/latest")
    arch: Literal["mobilenetv2", "mobilenet", "efficientnet_lite0", "simple_cnn"] = "mobilenetv2"
    alpha: float = Field(0.5, description="MobileNet (v2, or v1 for arch=mobilenet) width multiplier")
    weights: Path | None = Field(
        DEFAULT_WEIGHTS_DIR / MOBILENETV2_050_WEIGHTS,
        description="ImageNet backbone weights (.h5); None = random init; 'imagenet' not supported offline",
    )
    image_size: int = Field(
        160, description="model input height = width, pixels. Measured (val only): frozen-feature study "
        "(trainer/results/study.json) 128/160/192/224 -> balanced accuracy 0.53/0.53/0.60/0.59 (sqrt class weights); "
        "full fine-tuning within the 60-minute budget: 160 px x 10 epochs 0.725 (the bundled model) vs 192 px x 8 "
        "epochs 0.705 (~6 min per epoch at 192 vs ~4 at 160 on 2 cores), so 160")
    resize_method: Literal["bilinear", "bicubic"] = "bilinear"
    batch_size: int = 32
    head_epochs: int = Field(1, description="epochs training only the classifier head (backbone frozen)")
    head_lr: float = 1e-3
    finetune_epochs: int = Field(10, description="epochs fine-tuning the whole network")
    finetune_lr: float = Field(3e-4, description="peak learning rate of the cosine schedule")
    warmup_epochs: float = 0.5
    dropout: float = 0.2
    freeze_blocks: int = Field(
        0, ge=0, le=16, description="keep the stem and MobileNetV2 blocks 0..N-1 frozen while fine-tuning (0 = "
        "fine-tune everything). The early high-resolution blocks dominate the backward pass on CPU: measured "
        "training step, batch 32, 2 cores, 192 px: all layers 1409 ms, freeze_blocks=4 862 ms, freeze_blocks=7 585 ms")
    freeze_batchnorm: bool = Field(
        False, description="keep the backbone's BatchNorm layers in inference mode while fine-tuning "
        "(Keras transfer-learning guide; MobileNetV2's BN momentum 0.999 otherwise leaves stale moving "
        "statistics for many epochs -- measured: val balanced accuracy fell from 0.52 to 0.23 after one epoch)")
    batchnorm_momentum: float = Field(
        0.9, description="momentum of the backbone's BatchNorm moving statistics when they are trained "
        "(freeze_batchnorm=False); Keras' MobileNetV2 uses 0.999, too slow for ~200 steps per epoch")
    label_smoothing: float = 0.0
    imbalance: Literal["class_weight", "sqrt_class_weight", "none"] = Field(
        "sqrt_class_weight", description="class-imbalance handling in the loss"
    )
    colour_constancy: Literal["none", "shades_of_gray"] = Field(
        "none", description="input colour normalisation inside the model (trainer.model.shades_of_gray)")
    augment: bool = True
    crop_min_area: float = Field(0.65, gt=0, le=1, description="smallest random-resized-crop area (share of image)")
    aug_brightness: float = Field(0.1, ge=0, lt=1, description="brightness jitter, +- share")
    aug_contrast: float = Field(0.15, ge=0, lt=1, description="contrast jitter, +- share")
    aug_saturation: float = Field(0.15, ge=0, lt=1, description="saturation jitter, +- share")
    aug_hue: float = Field(0.0, ge=0, le=0.5, description="hue rotation, +- share of the colour circle (0 = none)")
    aug_sharpness: float = Field(
        0.0, ge=0, le=1, description="sharpness jitter: detail above a 1-px Gaussian blur scaled by 1 +- this "
        "(0 = none; trainer.augment; used by trainer.cv members only, like aug_hue)")
    early_stopping_patience: int = Field(4, description="epochs without val balanced-accuracy gain")
    seed: int = 42
    limit_per_split: int | None = Field(None, description="use at most this many images per split (smoke tests)")
    cache_dir: Path | None = Field(Path(".cache/images"), description="decoded-array cache; None = no cache")
    workers: int = Field(os.cpu_count() or 2, description="threads decoding images")
    gallery: bool = True
