"""Synthetic motion blur: a linear motion kernel whose length follows the blur degree beta.

A camera translating during the exposure integrates the scene along a segment; the kernel is that segment,
anti-aliased (each tap weighs max(0, 1 - distance to the segment)) and normalised to sum 1. beta in [0, 1]
sets the length `1 + beta * (max_length - 1)` pixels; beta = 0 leaves a single tap, the identity.
"""
from __future__ import annotations

import math

import tensorflow as tf

from input_pipeline.effects.convolution import convolve_reflect


def kernel_size(max_length: float) -> int:
    """The odd side of the square kernel that holds a segment of `max_length` pixels at any angle."""
    return 2 * math.ceil((max_length - 1.0) / 2.0) + 1


def motion_blur_kernel(length: tf.Tensor, angle: tf.Tensor, size: int) -> tf.Tensor:
    """`(size, size)` float32 kernel of a centred segment of `length` pixels at `angle` radians; sums to 1."""
    half = (size - 1) / 2.0
    coords = tf.range(size, dtype=tf.float32) - half
    y, x = tf.meshgrid(coords, coords, indexing="ij")
    direction = tf.stack([tf.cos(angle), tf.sin(angle)])
    half_length = tf.maximum(tf.cast(length, tf.float32) - 1.0, 0.0) / 2.0
    along = tf.clip_by_value(x * direction[0] + y * direction[1], -half_length, half_length)
    distance = tf.sqrt((x - along * direction[0]) ** 2 + (y - along * direction[1]) ** 2)
    weights = tf.nn.relu(1.0 - distance)
    return weights / tf.reduce_sum(weights)


def motion_blur(image: tf.Tensor, beta: tf.Tensor, angle: tf.Tensor, max_length: float) -> tf.Tensor:
    """`(H, W, 3)` image in [0, 1] blurred along `angle` (radians) with degree `beta` in [0, 1]."""
    length = 1.0 + tf.cast(beta, tf.float32) * (max_length - 1.0)
    return convolve_reflect(image, motion_blur_kernel(length, angle, kernel_size(max_length)))
