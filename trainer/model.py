"""Keras model builders: MobileNetV2 transfer learning (default) and a small from-scratch CNN.

Both take float32 ``(B, H, W, 3)`` RGB in 0..255 and output **logits** ``(B, n_classes)``;
normalisation is the first layer, so it travels into the ONNX graph.
"""

from __future__ import annotations

from pathlib import Path


def build_model(arch: str, image_size: int, n_classes: int, alpha: float = 0.5,
                weights: Path | None = None, dropout: float = 0.2):
    """Build an uncompiled Keras model.

    Args:
        arch: ``mobilenetv2`` (Sandler et al., CVPR 2018; ImageNet weights from ``weights``),
            ``efficientnet_lite0`` (:mod:`trainer.efficientnet_lite`; weights from the ``.npz`` file) or
            ``simple_cnn`` (four Conv-BN-ReLU-MaxPool blocks, the seeds' baseline shape).
        image_size: input height = width in pixels.
        n_classes: output logits.
        alpha: MobileNetV2 width multiplier.
        weights: path of a Keras Applications no-top ``.h5`` file (``mobilenetv2``) or of
            ``efficientnet_lite0_imagenet.npz`` (``efficientnet_lite0``), or None for random init.
        dropout: dropout rate before the classifier.

    Returns:
        ``(model, backbone)``; ``backbone`` is None for ``simple_cnn``.

    Raises:
        FileNotFoundError: ``weights`` given but missing.
        ValueError: unknown ``arch``.
    """
    import keras

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    if arch == "mobilenetv2":
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"backbone weights not found: {weights}")
        backbone = keras.applications.MobileNetV2(
            input_shape=(image_size, image_size, 3), alpha=alpha, include_top=False, pooling="avg",
            weights=str(weights) if weights is not None else None,
        )
        # MobileNetV2 expects [-1, 1] (keras.applications.mobilenet_v2.preprocess_input).
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(inputs)
        x = backbone(x)
    elif arch == "efficientnet_lite0":
        from trainer.efficientnet_lite import build_backbone, load_imagenet_weights

        backbone = build_backbone(image_size)
        if weights is not None:
            if Path(weights).suffix != ".npz":
                raise ValueError(f"efficientnet_lite0 loads its ImageNet weights from an .npz file, got {weights}")
            if not Path(weights).is_file():
                raise FileNotFoundError(f"backbone weights not found: {weights}")
            load_imagenet_weights(backbone, Path(weights))
        # the TF Lite models' input normalisation: (pixels - 127) / 128
        x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalise")(inputs)
        x = backbone(x)
    elif arch == "simple_cnn":
        backbone = None
        x = keras.layers.Rescaling(1.0 / 255.0, name="normalise")(inputs)
        for i, filters in enumerate((32, 64, 128, 256)):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
            x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
            x = keras.layers.ReLU(name=f"relu{i}")(x)
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=f"dermserve_{arch}"), backbone
