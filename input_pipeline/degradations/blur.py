"""Deblurring task: camera-motion blur (the existing motion-blur effect) or defocus blur (a disc PSF).

`degrade_deblur(image, seed)` -> `(H, W, 3)` float32 in [0, 1], the input blurred by one of the two, chosen
with `motion_probability`. Both kernels are non-negative and sum to 1 (borders reflected), so flat regions and
the mean are kept.

Ranges (ours, for 256-512 px crops): motion length 5-21 px, about the extent of GoPro's (Nah et al. 2017,
the deblurring plugin's training set) blur once its 1280 x 720 frames are resized to 512 px; defocus radius
1.5-5 px, a mild to strong pillbox at that size.
"""
from __future__ import annotations

import math

import tensorflow as tf

from input_pipeline.degradations.sampling import sub_seed, uniform
from input_pipeline.effects.convolution import convolve_reflect
from input_pipeline.effects.motion_blur import motion_blur


def disc_kernel(radius: tf.Tensor, size: int) -> tf.Tensor:
    """`(size, size)` pillbox PSF of `radius` px (geometric-optics defocus), anti-aliased at the rim; sums to 1.

    A tap weighs clip(radius + 0.5 - distance, 0, 1), its approximate area inside the disc; radius 0 is the
    identity.
    """
    coords = tf.range(size, dtype=tf.float32) - (size - 1) / 2.0
    y, x = tf.meshgrid(coords, coords, indexing="ij")
    weights = tf.clip_by_value(tf.cast(radius, tf.float32) + 0.5 - tf.sqrt(x ** 2 + y ** 2), 0.0, 1.0)
    return weights / tf.reduce_sum(weights)


def defocus_blur(image: tf.Tensor, radius: tf.Tensor, max_radius: float) -> tf.Tensor:
    """`(H, W, C)` convolved with the disc of `radius` <= `max_radius` px (the static kernel side)."""
    return convolve_reflect(image, disc_kernel(radius, 2 * math.ceil(max_radius) + 1))


def degrade_deblur(image: tf.Tensor, seed: tf.Tensor, *, motion_probability: float = 0.5,
                   motion_length_range: tuple[float, float] = (5.0, 21.0),
                   defocus_radius_range: tuple[float, float] = (1.5, 5.0)) -> tf.Tensor:
    """`(H, W, 3)` in [0, 1] -> motion- or defocus-blurred `(H, W, 3)` in [0, 1] (see the module docstring)."""
    max_length = motion_length_range[1]
    length = uniform(sub_seed(seed, 1), motion_length_range)
    # The effect takes the blur degree beta in [0, 1]: length = 1 + beta (max_length - 1).
    beta = (length - 1.0) / max(max_length - 1.0, 1e-6)
    angle = uniform(sub_seed(seed, 2), (0.0, math.pi))
    radius = uniform(sub_seed(seed, 3), defocus_radius_range)
    use_motion = tf.random.stateless_uniform([], sub_seed(seed, 0)) < motion_probability
    return tf.cond(use_motion, lambda: motion_blur(image, beta, angle, max_length),
                   lambda: defocus_blur(image, radius, defocus_radius_range[1]))
