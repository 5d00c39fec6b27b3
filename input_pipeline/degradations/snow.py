"""Desnowing task: snow flakes of three sizes composited over the image, the nearest ones motion-blurred.

Each layer i (far, middle, near) holds flakes at Bernoulli(density_i) pixels, each a Gaussian blob of
`flake_sigmas[i]` px with peak opacity ~ U(opacity_range); the near layer's flakes fall during the exposure, so
it is motion-blurred along a near-vertical direction (rescaled so a lone streak keeps its flake's peak). The
layers' alphas combine as 1 - prod(1 - alpha_i) and the snow is white:

    out = image + alpha (1 - image)       (only brightens; equals 1 where alpha = 1)

`degrade_desnow(image, seed)` -> `(H, W, 3)` float32 in [0, 1]; `snow_alpha(seed, height, width)` -> the
`(H, W, 1)` alpha alone. Three sizes and the near-layer streaks follow the small / medium / large snow masks of
Snow100K (Liu et al. 2018, DesnowNet); the densities (flakes per pixel) and sizes are ours, for 256-512 px crops.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from input_pipeline.degradations.sampling import log_uniform, sub_seed, uniform
from input_pipeline.effects.convolution import convolve_reflect
from input_pipeline.effects.motion_blur import kernel_size, motion_blur
from input_pipeline.effects.unsharp import gaussian_kernel_1d

FLAKE_SIGMAS = (0.7, 1.4, 2.6)
DENSITY_RANGES = ((4e-3, 1.5e-2), (8e-4, 3e-3), (1e-4, 5e-4))


def _blobs(points: tf.Tensor, sigma: float) -> tf.Tensor:
    """Each point of `(H, W, 1)` becomes a Gaussian blob of `sigma` px with peak equal to the point's value."""
    taps = gaussian_kernel_1d(sigma)
    taps = taps / tf.reduce_max(taps)
    return convolve_reflect(convolve_reflect(points, taps[:, None]), taps[None, :])


def snow_alpha(seed: tf.Tensor, height: int, width: int, *,
               flake_sigmas: tuple[float, ...] = FLAKE_SIGMAS,
               density_ranges: tuple[tuple[float, float], ...] = DENSITY_RANGES,
               opacity_range: tuple[float, float] = (0.5, 1.0),
               fall_length_range: tuple[float, float] = (1.0, 15.0),
               fall_angle_range: tuple[float, float] = (math.pi / 2 - 0.5, math.pi / 2 + 0.5)) -> tf.Tensor:
    """`(H, W, 1)` float32 snow opacity in [0, 1]; the last layer (largest flakes) is motion-blurred."""
    transparency = tf.ones([height, width, 1])
    for i, (sigma, densities) in enumerate(zip(flake_sigmas, density_ranges)):
        layer_seed = sub_seed(seed, i)
        density = log_uniform(sub_seed(layer_seed, 0), densities)
        hits = tf.random.stateless_uniform([height, width, 1], sub_seed(layer_seed, 1)) < density
        points = tf.where(hits, uniform(sub_seed(layer_seed, 2), opacity_range, [height, width, 1]), 0.0)
        alpha = _blobs(points, sigma)
        if i == len(flake_sigmas) - 1:
            max_length = fall_length_range[1]
            length = uniform(sub_seed(layer_seed, 3), fall_length_range)
            beta = (length - 1.0) / max(max_length - 1.0, 1e-6)
            angle = uniform(sub_seed(layer_seed, 4), fall_angle_range)
            # A lone flake's peak after the blur, measured on a canvas that holds flake and streak.
            side = 2 * (kernel_size(max_length) + gaussian_kernel_1d(sigma).shape[0]) + 1
            point = np.zeros([side, side, 1], np.float32)
            point[side // 2, side // 2] = 1.0
            lone = _blobs(tf.constant(point), sigma)
            peak = tf.reduce_max(motion_blur(lone, beta, angle, max_length))
            alpha = motion_blur(alpha, beta, angle, max_length) / peak
        transparency *= 1.0 - tf.clip_by_value(alpha, 0.0, 1.0)
    return 1.0 - transparency


def degrade_desnow(image: tf.Tensor, seed: tf.Tensor, **ranges) -> tf.Tensor:
    """`(H, W, 3)` in [0, 1] with white snow composited on; `ranges` as for `snow_alpha`."""
    alpha = snow_alpha(seed, image.shape[0], image.shape[1], **ranges)
    return image + alpha * (1.0 - image)
