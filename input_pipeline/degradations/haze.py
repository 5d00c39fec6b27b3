"""Dehazing task: the atmospheric scattering model over a smooth synthetic depth.

    I = J t + A (1 - t),    t = exp(-beta d)

J the clean `(H, W, 3)` image, A a grey airlight, d in [0, 1] a depth proxy: a vertical gradient (the top of a
photo is usually farther away: sky, horizon) plus low-frequency noise (a 4 x 4 Gaussian grid, bicubically
upsampled), rescaled to [0, 1]. `haze_parameters(seed, height, width)` returns (t `(H, W, 1)`, A scalar) and
`degrade_dehaze` applies the model with them, so the output is exactly J t + A (1 - t) for the returned t, A.

Ranges: beta in [0.6, 1.8] and A in [0.7, 1.0] are RESIDE's (Li et al. 2019, indoor training set ITS, where
they multiply NYU depth maps); with our d in [0, 1] the farthest point keeps 17-55 % of its radiance. The depth-noise amplitude 0.5 (relative to the
gradient's unit span) is ours.
"""
from __future__ import annotations

import tensorflow as tf

from input_pipeline.degradations.sampling import sub_seed, uniform

NOISE_GRID = 4


def depth_proxy(seed: tf.Tensor, height: int, width: int, noise_amplitude: float = 0.5) -> tf.Tensor:
    """`(H, W, 1)` float32 smooth depth in [0, 1]: 1 - row / (H - 1) plus upsampled low-frequency noise."""
    rows = tf.range(height, dtype=tf.float32) / max(height - 1, 1)
    gradient = tf.tile((1.0 - rows)[:, None, None], [1, width, 1])
    coarse = tf.random.stateless_normal([1, NOISE_GRID, NOISE_GRID, 1], seed)
    noise = tf.image.resize(coarse, [height, width], method="bicubic")[0]
    depth = gradient + noise_amplitude * noise
    low, high = tf.reduce_min(depth), tf.reduce_max(depth)
    return (depth - low) / tf.maximum(high - low, 1e-6)


def haze_parameters(seed: tf.Tensor, height: int, width: int, *,
                    beta_range: tuple[float, float] = (0.6, 1.8),
                    airlight_range: tuple[float, float] = (0.7, 1.0),
                    noise_amplitude: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
    """(transmission t `(H, W, 1)` in (0, 1], airlight A scalar) of one example."""
    beta = uniform(sub_seed(seed, 0), beta_range)
    airlight = uniform(sub_seed(seed, 1), airlight_range)
    depth = depth_proxy(sub_seed(seed, 2), height, width, noise_amplitude)
    return tf.exp(-beta * depth), airlight


def degrade_dehaze(image: tf.Tensor, seed: tf.Tensor, **ranges) -> tf.Tensor:
    """`(H, W, 3)` J in [0, 1] -> hazy J t + A (1 - t) in [0, 1]; `ranges` as for `haze_parameters`."""
    transmission, airlight = haze_parameters(seed, image.shape[0], image.shape[1], **ranges)
    return image * transmission + airlight * (1.0 - transmission)
