"""Cheap batch augmentation for dermoscopy, on whole batches in one graph.

Why not Keras' ``RandomRotation``/``RandomZoom`` layers: on this 2-core CPU the old pipeline
(per-image hue/saturation, then projective rotation and zoom with reflect fill) ran beside the
training step and competed with it for the same two cores: measured by ``python -m trainer.timing``
(see ``trainer/results/timing.json``). This module keeps the augmentations that matter for
dermoscopic images, which have no canonical orientation (Perez et al., "Data augmentation for
skin lesion analysis", ISIC workshop 2018: flips, rotations, crops and colour jitter help most), and
does each as one vectorised op per batch:

- the dihedral group (8 flips x 90-degree rotations) per image, by ``tf.where`` on a transposed
  and reversed copy (square images only);
- random resized crop per image (area 65-100 %, aspect 3/4-4/3) with one ``crop_and_resize`` call;
- brightness (+-10 %), contrast (+-15 %) and saturation (+-15 %) per image, element-wise;
- optionally a hue rotation per image (off by default; one batched RGB->HSV->RGB round trip);
- optionally a sharpness change per image (off by default): ``blur + s * (x - blur)`` with a fixed Gaussian
  blur (sigma 1 px, 5 x 5) and ``s`` uniform in ``1 +- sharpness`` -- below 1 it softens, above 1 it is an
  unsharp mask, the operation behind ``PIL.ImageFilter.UnsharpMask`` (without its threshold). Reason: an
  unsharp mask on upsampled test files moves a few per cent of the served model's top classes
  (``trainer/results/experiments/input_resolution.txt``), and images from other dermatoscopes may be
  sharper (or softer) than the 200x150 JPEG copies the members learn from. The jitter works at the model's
  input scale (sigma 1 px of 160), coarser than that measurement's mask (radius 2 px of 600x450, ~0.5 px
  of 160): ``trainer/results/experiments/sharpness_shift.py`` measures whether it transfers.

The defaults are the recipe of the ``cv``/``cv_b``/``cv_c`` families; :class:`trainer.config.TrainConfig`
exposes each strength (``crop_min_area``, ``aug_brightness``, ``aug_contrast``, ``aug_saturation``,
``aug_hue``, ``aug_sharpness``), so a stronger recipe -- Perez et al. 2018 report crops down to 40 % of the area and colour
jitter of +-30 % among their best -- is a configuration, not a code change.

Input and output: ``float32 (B, S, S, 3)`` RGB in 0..255.
"""

from __future__ import annotations


def dihedral(x, k_rot, flip):
    """Apply rotation by ``k_rot`` x 90 degrees, then a left-right flip where ``flip``, per image.

    Args:
        x: ``float32 (B, S, S, C)`` (square).
        k_rot: ``int32 (B,)`` in 0..3.
        flip: ``bool (B,)``.

    Returns:
        ``float32 (B, S, S, C)``: together the eight elements of the dihedral group D4.
    """
    import tensorflow as tf

    def sel(mask, a, b):
        return tf.where(tf.reshape(mask, (-1, 1, 1, 1)), a, b)

    # rot90 counter-clockwise = transpose then flip up-down; built from two masks
    transpose = tf.equal(k_rot % 2, 1)
    x = sel(transpose, tf.transpose(x, (0, 2, 1, 3)), x)
    # after an optional transpose, k=1 -> flip rows; k=2 -> flip rows+cols; k=3 -> flip cols
    flip_rows = tf.logical_or(tf.equal(k_rot, 1), tf.equal(k_rot, 2))
    flip_cols = tf.logical_or(tf.equal(k_rot, 2), tf.equal(k_rot, 3))
    x = sel(flip_rows, tf.reverse(x, axis=[1]), x)
    x = sel(tf.math.logical_xor(flip_cols, flip), tf.reverse(x, axis=[2]), x)
    return x


def make_batch_augment(seed: int, min_area: float = 0.65, brightness: float = 0.1, contrast: float = 0.15,
                       saturation: float = 0.15, hue: float = 0.0, sharpness: float = 0.0):
    """A function ``(step int64, x float32 (B, S, S, 3), y) -> (x', y)`` applying the augmentations above.

    Draws are stateless (``tf.random.stateless_uniform``) keyed by ``(seed, step)``, so a run is
    reproducible and the function needs no state inside ``tf.data`` (use ``Dataset.enumerate()``).

    Args:
        seed: run seed; each batch's draws come from ``(seed, step)``.
        min_area: smallest crop area as a share of the image (the crop is resized back to S x S).
        brightness: maximum relative brightness change (multiplicative, 0.1 = +-10 %).
        contrast: maximum relative contrast change around each image's mean.
        saturation: maximum relative change of the distance from each pixel's grey value.
        hue: maximum hue rotation as a share of the colour circle (0.05 = +-18 degrees); 0 = none.
        sharpness: maximum relative change of the detail above a 1-pixel Gaussian blur (0.8: from 0.2 x,
            softer, to 1.8 x, an unsharp mask of 80 %); 0 = none.
    """
    import tensorflow as tf

    def fn(step, x, y):
        counter = [0]

        def uniform(shape, lo=0.0, hi=1.0, dtype=tf.float32):
            counter[0] += 1
            key = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64) * 64 + counter[0]])
            return tf.random.stateless_uniform(shape, key, lo, hi, dtype=dtype)

        b = tf.shape(x)[0]
        size = tf.shape(x)[1]
        x = dihedral(x, uniform((b,), 0, 4, dtype=tf.int32), uniform((b,)) < 0.5)
        area = uniform((b,), min_area, 1.0)
        log_ratio = uniform((b,), tf.math.log(3 / 4), tf.math.log(4 / 3))
        ratio = tf.exp(log_ratio)
        h = tf.minimum(tf.sqrt(area / ratio), 1.0)
        w = tf.minimum(tf.sqrt(area * ratio), 1.0)
        y0 = uniform((b,)) * (1.0 - h)
        x0 = uniform((b,)) * (1.0 - w)
        boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)
        x = tf.image.crop_and_resize(x, boxes, tf.range(b), tf.stack([size, size]))
        grey = tf.reduce_mean(x, axis=3, keepdims=True)
        s = uniform((b, 1, 1, 1), 1 - saturation, 1 + saturation)
        x = grey + (x - grey) * s
        mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
        c = uniform((b, 1, 1, 1), 1 - contrast, 1 + contrast)
        x = mean + (x - mean) * c
        x = x * uniform((b, 1, 1, 1), 1 - brightness, 1 + brightness)
        if hue > 0:
            hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 255.0) / 255.0)
            h = tf.math.floormod(hsv[..., :1] + uniform((b, 1, 1, 1), -hue, hue), 1.0)
            x = tf.image.hsv_to_rgb(tf.concat([h, hsv[..., 1:]], axis=-1)) * 255.0
        if sharpness > 0:
            t = tf.range(-2, 3, dtype=tf.float32)
            g = tf.exp(-0.5 * t * t)
            g = g / tf.reduce_sum(g)
            kernel = tf.tile((g[:, None] * g[None, :])[:, :, None, None], [1, 1, 3, 1])  # (5, 5, 3, 1)
            padded = tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]], mode="SYMMETRIC")
            blur = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")
            x = blur + (x - blur) * uniform((b, 1, 1, 1), 1 - sharpness, 1 + sharpness)
        return tf.clip_by_value(x, 0.0, 255.0), y

    return fn
