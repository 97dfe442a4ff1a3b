"""EfficientNet-Lite0 in Keras, with Google's ImageNet weights loaded from NumPy arrays.

Architecture and weight layout as documented in ``../shared/weights/README.md`` (EfficientNet-Lite:
Tan & Le, "EfficientNet", ICML 2019, and the TF Lite variant in ``tensorflow/tpu``: no squeeze-excite,
ReLU6, fixed stem/head widths): stem Conv 3x3/2 (32) -> 16 MBConv blocks -> Conv 1x1 (1280) -> global
average pool. BatchNorm epsilon 1e-3, Keras/TF ``"same"`` padding, input ``(pixels - 127) / 128``.
The arrays are PyTorch layouts (OIHW); they are transposed to Keras' HWIO here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: (kernel, stride of the first block, expand ratio, output channels, repeats) per stage.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
)
#: Features of the pooled head.
FEATURES = 1280


def build_backbone(image_size: int, name: str = "efficientnet_lite0"):
    """EfficientNet-Lite0 without its classifier: float32 ``(B, S, S, 3)`` already normalised to about
    [-1, 1] -> pooled features float32 ``(B, 1280)``. Layer names follow the weight file's keys
    (``_blocks.N._expand_conv`` -> ``block{N}_expand_conv``), so :func:`load_imagenet_weights` can fill them."""
    import keras
    from keras import layers

    def bn(n):
        return layers.BatchNormalization(epsilon=1e-3, momentum=0.99, name=n)

    inp = keras.Input((image_size, image_size, 3), name="normalised")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = layers.ReLU(6.0, name="stem_relu")(bn("stem_bn")(x))
    channels, block = 32, 0
    for kernel, stride, expand, out_ch, repeats in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"block{block}_"
            h = x
            if expand != 1:
                h = layers.Conv2D(channels * expand, 1, use_bias=False, name=p + "expand_conv")(h)
                h = layers.ReLU(6.0, name=p + "expand_relu")(bn(p + "bn0")(h))
            h = layers.DepthwiseConv2D(kernel, strides=s, padding="same", use_bias=False, name=p + "depthwise_conv")(h)
            h = layers.ReLU(6.0, name=p + "depthwise_relu")(bn(p + "bn1")(h))
            h = layers.Conv2D(out_ch, 1, use_bias=False, name=p + "project_conv")(h)
            h = bn(p + "bn2")(h)
            if s == 1 and channels == out_ch:
                h = layers.Add(name=p + "add")([x, h])
            x, channels, block = h, out_ch, block + 1
    x = layers.Conv2D(FEATURES, 1, use_bias=False, name="head_conv")(x)
    x = layers.ReLU(6.0, name="head_relu")(bn("head_bn")(x))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, x, name=name)


def load_imagenet_weights(backbone, npz_path: Path) -> int:
    """Copy the arrays of ``efficientnet_lite0_imagenet.npz`` into :func:`build_backbone`'s layers.

    Returns:
        Number of layers filled.

    Raises:
        FileNotFoundError: no such file.
        KeyError / ValueError: the file does not match the architecture.
    """
    w = np.load(npz_path)

    def bn_arrays(prefix):
        return [w[f"{prefix}.{s}"] for s in ("weight", "bias", "running_mean", "running_var")]

    filled = 0
    for layer in backbone.layers:
        n = layer.name
        if n == "stem_conv":
            layer.set_weights([w["_conv_stem.weight"].transpose(2, 3, 1, 0)])
        elif n == "stem_bn":
            layer.set_weights(bn_arrays("_bn0"))
        elif n == "head_conv":
            layer.set_weights([w["_conv_head.weight"].transpose(2, 3, 1, 0)])
        elif n == "head_bn":
            layer.set_weights(bn_arrays("_bn1"))
        elif n.startswith("block") and "_" in n:
            idx, kind = n[5:].split("_", 1)
            key = f"_blocks.{idx}._{kind}"
            if kind in ("expand_conv", "project_conv"):
                layer.set_weights([w[key + ".weight"].transpose(2, 3, 1, 0)])
            elif kind == "depthwise_conv":
                layer.set_weights([w[key + ".weight"].transpose(2, 3, 0, 1)])
            elif kind in ("bn0", "bn1", "bn2"):
                layer.set_weights(bn_arrays(key))
            else:
                continue
        else:
            continue
        filled += 1
    return filled


def imagenet_classifier(npz_path: Path, image_size: int = 224):
    """The full ImageNet classifier (backbone + ``Dense(1000)`` logits) for checking the weights:
    float32 ``(B, S, S, 3)`` in 0..255 -> logits ``(B, 1000)``."""
    import keras

    backbone = build_backbone(image_size)
    load_imagenet_weights(backbone, npz_path)
    inp = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 128.0, offset=-127 / 128.0)(inp)
    fc = keras.layers.Dense(1000)
    out = fc(backbone(x))
    w = np.load(npz_path)
    fc.set_weights([w["_fc.weight"].T, w["_fc.bias"]])
    return keras.Model(inp, out)
