"""Deraining task: a layer of oriented, elongated, semi-transparent rain streaks screened onto the image.

    drops  = Bernoulli(density) per pixel, each with a brightness ~ U(0.5, 1)
    streak = clip(length * opacity * (drops * motion kernel(length, angle)), 0, 1)      (H, W, 1)
    out    = 1 - (1 - image) (1 - streak)                                                (screen blend)

The motion kernel is the motion-blur effect's anti-aliased segment (sums to 1, hence the factor `length`, which
gives an isolated streak the brightness of its drop times `opacity`). Screening only brightens and never
exceeds 1: rain adds light scattered towards the camera (the additive O = B + S model of Yang et al. 2017),
and screen is the blend of the usual Photoshop rain synthesis (e.g. DDN's Rain14000, Fu et al. 2017).

`degrade_derain(image, seed)` -> `(H, W, 3)` float32 in [0, 1]; `rain_layer(seed, height, width)` -> the
`(H, W, 1)` streak layer alone (what a black image becomes). Ranges are ours, sized for 256-512 px crops and chosen by
eye against those sets: density 0.2-2 % of pixels, length 10-30 px, within 20 degrees of vertical (one angle per
image: wind), opacity 0.3-0.8.
"""
from __future__ import annotations

import math

import tensorflow as tf

from input_pipeline.degradations.sampling import log_uniform, sub_seed, uniform
from input_pipeline.effects.convolution import convolve_reflect
from input_pipeline.effects.motion_blur import kernel_size, motion_blur_kernel

VERTICAL = math.pi / 2  # the motion kernel's angle is measured from the +x (column) axis


def rain_layer(seed: tf.Tensor, height: int, width: int, *,
               density_range: tuple[float, float] = (0.002, 0.02),
               length_range: tuple[float, float] = (10.0, 30.0),
               angle_range: tuple[float, float] = (VERTICAL - math.radians(20), VERTICAL + math.radians(20)),
               opacity_range: tuple[float, float] = (0.3, 0.8)) -> tf.Tensor:
    """`(H, W, 1)` float32 streak layer in [0, 1] (see the module docstring)."""
    density = log_uniform(sub_seed(seed, 0), density_range)
    hits = tf.random.stateless_uniform([height, width, 1], sub_seed(seed, 1)) < density
    drops = tf.where(hits, uniform(sub_seed(seed, 2), (0.5, 1.0), [height, width, 1]), 0.0)
    length = uniform(sub_seed(seed, 3), length_range)
    angle = uniform(sub_seed(seed, 4), angle_range)
    opacity = uniform(sub_seed(seed, 5), opacity_range)
    kernel = motion_blur_kernel(length, angle, kernel_size(length_range[1]))
    return tf.clip_by_value(convolve_reflect(drops, kernel) * length * opacity, 0.0, 1.0)


def degrade_derain(image: tf.Tensor, seed: tf.Tensor, **ranges) -> tf.Tensor:
    """`(H, W, 3)` in [0, 1] with rain streaks screened on; `ranges` as for `rain_layer`."""
    streaks = rain_layer(seed, image.shape[0], image.shape[1], **ranges)
    return 1.0 - (1.0 - image) * (1.0 - streaks)
