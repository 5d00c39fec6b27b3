"""Demoireing task: screen-capture moire, the beat of two slightly rotated / scaled gratings, modulating the image.

A photographed screen multiplies the display's pixel grating with the sensor's sampling grating. With grating
frequencies k1 = f (cos theta, sin theta) and k2 = f s (cos(theta + delta), sin(theta + delta)) (cycles / px),

    g1_c(p) = cos(2 pi k1 . p + 2 pi c / 3)      (the display; c = 0, 1, 2 the R, G, B sub-pixel offsets)
    g2(p)   = cos(2 pi k2 . w(p))                (the sensor; w a slight barrel / pincushion warp, curvature kappa)
    m_c     = 2 G_3 * (g1_c g2)                  (the lens' low-pass keeps the difference term cos 2 pi (k1 - k2) . p
                                                  and removes the sum term near 2 f)
    out_c   = clip(image_c (1 + a m_c), 0, 1)

so, unwarped, the added pattern lies in a narrow band around the beat frequency |k1 - k2| ~ f sqrt((1 - s)^2 +
delta^2), and the colour offsets make it the rainbow bands seen on screen photos. f <= 0.24 keeps the sum term
below Nyquist (no aliasing before the low-pass).

Ranges (ours, by eye: LCDMoire's screen photos show periods from ~10 px to the whole image): f in [0.12, 0.24],
delta in +-[1, 8] degrees, s in [0.97, 1.03] (beat periods ~30-500 px), kappa in [-0.15, 0.15] (on the
half-diagonal), amplitude a in [0.05, 0.2]. `degrade_demoire(image, seed)` -> `(H, W, 3)` float32 in [0, 1].
"""
from __future__ import annotations

import math

import tensorflow as tf

from input_pipeline.degradations.sampling import pixel_grid, sub_seed, uniform
from input_pipeline.effects.unsharp import gaussian_blur

LOW_PASS_SIGMA = 3.0  # passes the beat (<= 0.034 cycles / px: gain >= 0.8), removes the sum (>= 0.23: gain < 1e-3)


def moire_pattern(seed: tf.Tensor, height: int, width: int, *,
                  frequency_range: tuple[float, float] = (0.12, 0.24),
                  rotation_range: tuple[float, float] = (math.radians(1.0), math.radians(8.0)),
                  scale_range: tuple[float, float] = (0.97, 1.03),
                  curvature_range: tuple[float, float] = (-0.15, 0.15)) -> tf.Tensor:
    """`(H, W, 3)` float32 pattern m in about [-1, 1] (see the module docstring)."""
    frequency = uniform(sub_seed(seed, 0), frequency_range)
    theta = uniform(sub_seed(seed, 1), (0.0, math.pi))
    sign = tf.where(tf.random.stateless_uniform([], sub_seed(seed, 2)) < 0.5, -1.0, 1.0)
    delta = sign * uniform(sub_seed(seed, 3), rotation_range)
    scale = uniform(sub_seed(seed, 4), scale_range)
    kappa = uniform(sub_seed(seed, 5), curvature_range)
    y, x = pixel_grid(height, width)
    y, x = y - (height - 1) / 2.0, x - (width - 1) / 2.0
    warp = 1.0 + kappa * (x ** 2 + y ** 2) / ((height ** 2 + width ** 2) / 4.0)
    phase1 = 2 * math.pi * frequency * (x * tf.cos(theta) + y * tf.sin(theta))
    phase2 = 2 * math.pi * frequency * scale * warp * (x * tf.cos(theta + delta) + y * tf.sin(theta + delta))
    subpixel = tf.constant([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    product = tf.cos(phase1[..., None] + subpixel) * tf.cos(phase2)[..., None]
    return 2.0 * gaussian_blur(product, LOW_PASS_SIGMA)


def degrade_demoire(image: tf.Tensor, seed: tf.Tensor, *, amplitude_range: tuple[float, float] = (0.05, 0.2),
                    **ranges) -> tf.Tensor:
    """`(H, W, 3)` in [0, 1] modulated by the moire pattern; `ranges` as for `moire_pattern`."""
    pattern = moire_pattern(sub_seed(seed, 0), image.shape[0], image.shape[1], **ranges)
    amplitude = uniform(sub_seed(seed, 1), amplitude_range)
    return tf.clip_by_value(image * (1.0 + amplitude * pattern), 0.0, 1.0)
