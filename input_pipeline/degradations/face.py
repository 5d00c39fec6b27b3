"""Face-restoration task: the blind degradation Diff-Plugin's face data goes through (GFPGAN's, Wang et al. 2021).

    out = up( JPEG_q( down_r(image * k) + n ) )

- k: a 41 x 41 Gaussian blur kernel, isotropic or anisotropic (probability 1/2 each), sigmas in [0.1, 10] px,
  rotation in [-pi, pi] (GFPGAN's `random_mixed_kernels(['iso', 'aniso'], [0.5, 0.5], 41, [0.1, 10], ...)`);
- down_r: bilinear resize to size / r, r in [0.8, 8] (r < 1 upsamples);
- n: Gaussian noise of std in [0, 20] / 255, then clip and quantisation to 8 bits;
- JPEG_q: quality q in [60, 100];
- up: bilinear resize back to `(H, W)`.

GFPGAN's optional colour jitter and greyscale conversion are left out (not among the degradations above).
JPEG statelessly: `tf.image.random_jpeg_quality` uses a stateful generator, so q is drawn with
`stateless_uniform` from the example seed and passed as a tensor to `tf.image.adjust_jpeg_quality` (libjpeg
itself is deterministic), so the output is a pure function of the seed in eager and graph mode alike.
`degrade_face(image, seed)` -> `(H, W, 3)` float32 in [0, 1]; H, W >= 21 (the kernel's reflected border).
"""
from __future__ import annotations

import math

import tensorflow as tf

from input_pipeline.degradations.sampling import sub_seed, uniform, uniform_int
from input_pipeline.effects.convolution import convolve_reflect

KERNEL_SIZE = 41


def gaussian_kernel_2d(sigma_x: tf.Tensor, sigma_y: tf.Tensor, rotation: tf.Tensor,
                       size: int = KERNEL_SIZE) -> tf.Tensor:
    """`(size, size)` Gaussian with standard deviations sigma_x, sigma_y along axes rotated by `rotation`; sums to 1."""
    coords = tf.range(size, dtype=tf.float32) - (size - 1) / 2.0
    y, x = tf.meshgrid(coords, coords, indexing="ij")
    along = x * tf.cos(rotation) + y * tf.sin(rotation)
    across = -x * tf.sin(rotation) + y * tf.cos(rotation)
    weights = tf.exp(-0.5 * ((along / sigma_x) ** 2 + (across / sigma_y) ** 2))
    return weights / tf.reduce_sum(weights)


def face_blur_kernel(seed: tf.Tensor, sigma_range: tuple[float, float] = (0.1, 10.0)) -> tf.Tensor:
    """GFPGAN's mixed kernel: isotropic (sigma_y = sigma_x, no rotation) or anisotropic, probability 1/2 each."""
    sigma_x = uniform(sub_seed(seed, 0), sigma_range)
    isotropic = tf.random.stateless_uniform([], sub_seed(seed, 1)) < 0.5
    sigma_y = tf.where(isotropic, sigma_x, uniform(sub_seed(seed, 2), sigma_range))
    rotation = tf.where(isotropic, 0.0, uniform(sub_seed(seed, 3), (-math.pi, math.pi)))
    return gaussian_kernel_2d(sigma_x, sigma_y, rotation)


def degrade_face(image: tf.Tensor, seed: tf.Tensor, *, sigma_range: tuple[float, float] = (0.1, 10.0),
                 downsample_range: tuple[float, float] = (0.8, 8.0),
                 noise_range: tuple[float, float] = (0.0, 20.0),
                 jpeg_range: tuple[int, int] = (60, 100)) -> tf.Tensor:
    """`(H, W, 3)` in [0, 1] -> blurred, resampled, noisy, JPEG-compressed `(H, W, 3)` in [0, 1]."""
    height, width = image.shape[0], image.shape[1]
    blurred = convolve_reflect(image, face_blur_kernel(sub_seed(seed, 0), sigma_range))
    factor = uniform(sub_seed(seed, 1), downsample_range)
    small_size = tf.maximum(tf.cast(tf.round(tf.constant([height, width], tf.float32) / factor), tf.int32), 1)
    small = tf.image.resize(blurred, small_size, method="bilinear")
    noise_std = uniform(sub_seed(seed, 2), noise_range) / 255.0
    noisy = small + noise_std * tf.random.stateless_normal(tf.shape(small), sub_seed(seed, 3))
    quantised = tf.cast(tf.round(tf.clip_by_value(noisy, 0.0, 1.0) * 255.0), tf.uint8)
    compressed = tf.image.adjust_jpeg_quality(quantised, uniform_int(sub_seed(seed, 4), jpeg_range))
    restored = tf.image.resize(tf.image.convert_image_dtype(compressed, tf.float32), [height, width],
                               method="bilinear")
    return tf.clip_by_value(tf.ensure_shape(restored, [height, width, 3]), 0.0, 1.0)
