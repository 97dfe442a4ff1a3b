"""Keras model builders: MobileNetV2 transfer learning (default) and a small from-scratch CNN.

Both take float32 ``(B, H, W, 3)`` RGB in 0..255 and output **logits** ``(B, n_classes)``;
normalisation is the first layer, so it travels into the ONNX graph.
"""

from __future__ import annotations

from pathlib import Path

#: Shades-of-Gray norm (Finlayson & Trezzi, "Shades of gray and colour constancy", CIC 2004; p = 6 as in
#: Barata et al., "Improving dermoscopy image classification using color constancy", IEEE JBHI 2015, and
#: the ISIC 2019 winner, Gessert et al., MethodsX 2020).
SOG_P = 6.0
#: The illuminant every image is mapped to, per channel (R, G, B) on 0..1: the geometric mean of the
#: Shades-of-Gray estimates of the training images (160 px) of family ``cv``'s fold 0 -- 3/4 of the train +
#: val pool; its four folds give values within 0.002 of each other
#: (``trainer/results/experiments/colour_normalisation.txt``). Three numbers from pool images, never from
#: the test split. Mapping to the dataset's typical illuminant rather than to grey keeps typical images
#: almost unchanged.
SOG_REFERENCE = (0.781, 0.583, 0.614)


def shades_of_gray(x, p: float = SOG_P, reference: tuple[float, float, float] = SOG_REFERENCE):
    """Colour constancy: map each image's estimated illuminant to ``reference`` (backend ops, in-graph).

    Per image and channel ``e_c = mean((x_c / 255) ** p) ** (1 / p)`` (Shades of Gray), then
    ``x_c * reference_c / e_c`` clipped to 0..255. Removes a global white-balance error and exposure
    (up to clipping): measured on held-out images, such shifts cost a member trained without it 4-9
    points of balanced accuracy (``trainer/results/experiments/colour_shift.txt``).

    Args:
        x: ``float32 (B, H, W, 3)`` RGB in 0..255.

    Returns:
        ``float32 (B, H, W, 3)`` in 0..255.
    """
    from keras import ops

    e = ops.power(ops.mean(ops.power(x / 255.0, p), axis=(1, 2), keepdims=True), 1.0 / p)
    ref = ops.reshape(ops.convert_to_tensor(reference, dtype="float32"), (1, 1, 1, 3))
    return ops.clip(x * ref / ops.maximum(e, 1e-3), 0.0, 255.0)


def build_model(arch: str, image_size: int, n_classes: int, alpha: float = 0.5,
                weights: Path | None = None, dropout: float = 0.2, colour_constancy: str = "none"):
    """Build an uncompiled Keras model.

    Args:
        arch: ``mobilenetv2`` (Sandler et al., CVPR 2018; ImageNet weights from ``weights``),
            ``mobilenet`` (MobileNet v1, Howard et al. 2017: depthwise-separable convolutions without
            residuals or inverted bottlenecks; ``alpha`` 0.25 with ``mobilenet_2_5_224_tf_no_top.h5``),
            ``efficientnet_lite0`` (:mod:`trainer.efficientnet_lite`; weights from the ``.npz`` file) or
            ``simple_cnn`` (four Conv-BN-ReLU-MaxPool blocks, the seeds' baseline shape).
        image_size: input height = width in pixels.
        n_classes: output logits.
        alpha: MobileNet (v1 or v2) width multiplier.
        weights: path of a Keras Applications no-top ``.h5`` file (``mobilenetv2``) or of
            ``efficientnet_lite0_imagenet.npz`` (``efficientnet_lite0``), or None for random init.
        dropout: dropout rate before the classifier.
        colour_constancy: ``"none"`` or ``"shades_of_gray"`` (:func:`shades_of_gray` as the first
            layer, so it travels into the ONNX graph with the member; it has no weights).

    Returns:
        ``(model, backbone)``; ``backbone`` is None for ``simple_cnn``.

    Raises:
        FileNotFoundError: ``weights`` given but missing.
        ValueError: unknown ``arch``.
    """
    import keras

    image = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    if colour_constancy == "shades_of_gray":
        inputs = keras.layers.Lambda(shades_of_gray, name="colour_constancy")(image)
    elif colour_constancy == "none":
        inputs = image
    else:
        raise ValueError(f"unknown colour_constancy {colour_constancy!r}")
    if arch in ("mobilenetv2", "mobilenet"):
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"backbone weights not found: {weights}")
        application = keras.applications.MobileNetV2 if arch == "mobilenetv2" else keras.applications.MobileNet
        backbone = application(
            input_shape=(image_size, image_size, 3), alpha=alpha, include_top=False, pooling="avg",
            weights=str(weights) if weights is not None else None,
        )
        # both expect [-1, 1] (keras.applications.mobilenet_v2 / mobilenet .preprocess_input)
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
    return keras.Model(image, logits, name=f"dermserve_{arch}"), backbone
