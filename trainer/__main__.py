"""``python -m trainer``: train a model on a HAM10000-style dataset (labels.csv + images/)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from trainer.config import TrainConfig

app = typer.Typer(add_completion=False, help=__doc__)
#: flag defaults come from the config model, so the CLI and TrainConfig cannot drift apart
_D = TrainConfig()


@app.command()
def main(
    data_dir: Path = typer.Option(_D.data_dir, help="folder with labels.csv and images/ (env DERMSERVE_DATA_DIR)"),
    output_dir: Path = typer.Option(_D.output_dir, help="where model.keras, metrics and report go"),
    arch: str = typer.Option(_D.arch, help="mobilenetv2 | simple_cnn"),
    weights: Optional[Path] = typer.Option(_D.weights, help="ImageNet backbone .h5 (../shared/weights/)"),
    image_size: int = typer.Option(_D.image_size, help="square input size, pixels"),
    head_epochs: int = typer.Option(_D.head_epochs),
    finetune_epochs: int = typer.Option(_D.finetune_epochs),
    batch_size: int = typer.Option(_D.batch_size),
    finetune_lr: float = typer.Option(_D.finetune_lr),
    head_lr: float = typer.Option(_D.head_lr),
    freeze_blocks: int = typer.Option(_D.freeze_blocks, help="keep the stem and blocks 0..N-1 frozen while fine-tuning"),
    freeze_batchnorm: bool = typer.Option(_D.freeze_batchnorm, help="BatchNorm in inference mode while fine-tuning"),
    bn_momentum: float = typer.Option(_D.batchnorm_momentum, help="BatchNorm momentum when BatchNorm is trained"),
    imbalance: str = typer.Option(_D.imbalance, help="class_weight | sqrt_class_weight | none"),
    limit_per_split: Optional[int] = typer.Option(None, help="at most this many images per split (smoke tests)"),
    seed: int = typer.Option(_D.seed),
    no_augment: bool = typer.Option(False, help="disable augmentation"),
    no_gallery: bool = typer.Option(False, help="skip the image gallery PNGs"),
    cache_dir: Optional[Path] = typer.Option(_D.cache_dir, help="decoded-image cache folder"),
    no_cache: bool = typer.Option(False, help="do not cache decoded images on disk"),
    config_json: Optional[Path] = typer.Option(None, help="a config.json to start from; flags given override it"),
) -> None:
    """Train, select the best epoch on val balanced accuracy, calibrate on val, report on test."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = json.loads(config_json.read_text()) if config_json else {}
    cfg = TrainConfig(**(base | dict(
        data_dir=data_dir, output_dir=output_dir, arch=arch, weights=weights, image_size=image_size,
        head_epochs=head_epochs, finetune_epochs=finetune_epochs, batch_size=batch_size,
        finetune_lr=finetune_lr, head_lr=head_lr, freeze_blocks=freeze_blocks, freeze_batchnorm=freeze_batchnorm,
        batchnorm_momentum=bn_momentum, imbalance=imbalance, limit_per_split=limit_per_split, seed=seed,
        augment=not no_augment, gallery=not no_gallery, cache_dir=None if no_cache else cache_dir)))
    from trainer.train import run

    run(cfg)


if __name__ == "__main__":
    app()
