"""Highlight-removal task: specular highlights, bright smooth lobes added where the image is already bright.

By the dichromatic reflection model (Shafer 1985) a specular highlight adds the illuminant's colour (white here)
to the diffuse image. Each of up to `count_range[1]` lobes is an elliptical Gaussian of peak ~ U(intensity_range),
semi-axes ~ U(size_range) x min(H, W) and aspect U(aspect_range) at a random orientation, centred on a pixel drawn
with probability proportional to exp(bright_bias * luma) of the Gaussian-smoothed image (speculars sit on lit,
glossy surfaces, which are already bright):

    out = clip(image + sum_k lobe_k, 0, 1)      (only brightens; peaks above 1 - image saturate)

Ranges are ours, by eye from SHIQ (Fu et al. 2021; real photos, where highlights are a few compact lobes
covering a few percent of the image). `degrade_highlight(image, seed)` -> `(H, W, 3)` float32 in [0, 1].
"""
from __future__ import annotations

import math

import tensorflow as tf

from input_pipeline.degradations.sampling import luminance, pixel_grid, sub_seed, uniform, uniform_int
from input_pipeline.effects.unsharp import gaussian_blur


def highlight_lobes(image: tf.Tensor, seed: tf.Tensor, *, count_range: tuple[int, int] = (1, 6),
                    size_range: tuple[float, float] = (0.015, 0.05),
                    aspect_range: tuple[float, float] = (1.0, 3.0),
                    intensity_range: tuple[float, float] = (0.6, 1.5),
                    bright_bias: float = 12.0) -> tf.Tensor:
    """`(H, W, 1)` float32 >= 0: the sum of the lobes for `(H, W, 3)` image."""
    height, width = image.shape[0], image.shape[1]
    most = count_range[1]
    luma = luminance(gaussian_blur(image, 2.0))
    centres = tf.random.stateless_categorical(bright_bias * tf.reshape(luma, [1, -1]), most, sub_seed(seed, 0))[0]
    cy = tf.cast(centres // width, tf.float32)
    cx = tf.cast(centres % width, tf.float32)
    size = uniform(sub_seed(seed, 1), size_range, [most]) * min(height, width)
    aspect = uniform(sub_seed(seed, 2), aspect_range, [most])
    orientation = uniform(sub_seed(seed, 3), (0.0, math.pi), [most])
    peak = uniform(sub_seed(seed, 4), intensity_range, [most])
    active = tf.cast(tf.range(most) < uniform_int(sub_seed(seed, 5), count_range), tf.float32)
    y, x = pixel_grid(height, width)
    dy, dx = y[..., None] - cy, x[..., None] - cx
    along = dx * tf.cos(orientation) + dy * tf.sin(orientation)
    across = -dx * tf.sin(orientation) + dy * tf.cos(orientation)
    lobes = tf.exp(-0.5 * ((along / (size * aspect)) ** 2 + (across / size) ** 2))
    return tf.reduce_sum(lobes * peak * active, axis=-1, keepdims=True)


def degrade_highlight(image: tf.Tensor, seed: tf.Tensor, **ranges) -> tf.Tensor:
    """`(H, W, 3)` in [0, 1] with white specular lobes added and clipped; `ranges` as for `highlight_lobes`."""
    return tf.clip_by_value(image + highlight_lobes(image, seed, **ranges), 0.0, 1.0)
