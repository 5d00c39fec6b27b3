"""Synthetic motion blur: a linear motion kernel whose length follows the blur degree beta.

A camera translating during the exposure integrates the scene along a segment; the kernel is that segment,
anti-aliased (each tap weighs max(0, 1 - distance to the segment)) and normalised to sum 1. beta in [0, 1]
sets the length `1 + beta * (max_length - 1)` pixels; beta = 0 leaves a single tap, the identity.

The kernel lives in a `kernel_size(max_length)` square, but only its non-zero taps cost: `motion_blur` crops
the kernel to the bounding box of its non-zero taps (1 x 1 at beta = 0, 1 x 21 for a horizontal segment of 21 px,
21 x 21 only for a full-length diagonal) and convolves all channels at once (depthwise_conv2d) with that box.
Cropping away zero taps changes nothing but the summation order: the result equals the former
`convolve_reflect(image, motion_blur_kernel(...))` (`effects.former.motion_blur`) to float rounding (~1e-7,
tests/test_effects.py). At 256 px and training strengths (beta ~ U(0.1, 1), angle ~ U(0, pi)) it is 4.0x faster
than that full 21 x 21 conv2d on planes (`benchmarks/input_pipeline.py --effects`, idle, benchmarks/RESULTS.md).
"""
from __future__ import annotations

import math

import tensorflow as tf


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


def _nonzero_span(mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """First and one-past-last index (int32) where the 1-D bool `mask` is true (it has at least one)."""
    where = tf.cast(tf.where(mask)[:, 0], tf.int32)
    return where[0], where[-1] + 1


def convolve_reflect_cropped(image: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """`convolve_reflect(image, kernel)` for an odd square `kernel` with at least one non-zero tap, computed
    with the kernel cropped to the bounding box of its non-zero taps (depthwise over the channels)."""
    size = int(kernel.shape[0])
    half = size // 2
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    channels = image.shape[-1] if image.shape[-1] is not None else tf.shape(image)[-1]
    top, bottom = _nonzero_span(tf.reduce_any(kernel != 0, axis=1))
    left, right = _nonzero_span(tf.reduce_any(kernel != 0, axis=0))
    box = kernel[top:bottom, left:right]
    # Output pixel (i, j) reads padded rows i + top .. i + bottom - 1 and columns j + left .. j + right - 1.
    padded = tf.pad(image, [[half, half], [half, half], [0, 0]], mode="REFLECT")
    window = padded[top:top + height + bottom - top - 1, left:left + width + right - left - 1]
    filters = tf.tile(box[:, :, None, None], tf.stack([1, 1, channels, 1]))
    out = tf.nn.depthwise_conv2d(window[None], filters, [1, 1, 1, 1], "VALID")[0]
    return tf.ensure_shape(out, image.shape)


def motion_blur(image: tf.Tensor, beta: tf.Tensor, angle: tf.Tensor, max_length: float) -> tf.Tensor:
    """`(H, W, 3)` image in [0, 1] blurred along `angle` (radians) with degree `beta` in [0, 1]."""
    length = 1.0 + tf.cast(beta, tf.float32) * (max_length - 1.0)
    return convolve_reflect_cropped(image, motion_blur_kernel(length, angle, kernel_size(max_length)))
