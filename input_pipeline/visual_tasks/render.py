"""Label maps rendered as images, so that labelled tasks fit the image-to-image grid.

- Segmentation: class id c -> the PASCAL VOC colour map entry c (the bit-interleaving palette of the VOC
  devkit's labelcolormap.m: class 0 black, 1 (128, 0, 0), 2 (0, 128, 0), ..., 255 (224, 224, 192), VOC's
  "ignore"). Ids outside [0, 255] are clipped into it.
- Depth: per image min-max normalised to [0, 1] (the hint carries relative depth: a single reference pair
  cannot fix a metric scale); the smallest value renders dark purple and the largest yellow (whether small
  means near or far is the dataset's convention), through a viridis-like ramp: a 256-entry table interpolated
  linearly between five samples of matplotlib's viridis. A constant map renders as the ramp's first colour.
All renders are `(H, W, 3)` float32 in [0, 1].
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

# matplotlib's viridis at 0, 0.25, 0.5, 0.75, 1.
_VIRIDIS_SAMPLES = np.array([[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551],
                             [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]], np.float32)


def voc_palette() -> np.ndarray:
    """`(256, 3)` float32 in [0, 1]: the PASCAL VOC colour of each class id."""
    palette = np.zeros((256, 3), np.int64)
    for label in range(256):
        c, r, g, b = label, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[label] = (r, g, b)
    return (palette / 255.0).astype(np.float32)


def depth_colour_table() -> np.ndarray:
    """`(256, 3)` float32 in [0, 1]: the viridis-like ramp, entry 0 for the smallest depth."""
    position = np.linspace(0.0, len(_VIRIDIS_SAMPLES) - 1, 256)
    low = np.minimum(np.floor(position).astype(int), len(_VIRIDIS_SAMPLES) - 2)
    t = (position - low)[:, None]
    return ((1.0 - t) * _VIRIDIS_SAMPLES[low] + t * _VIRIDIS_SAMPLES[low + 1]).astype(np.float32)


SEGMENTATION_PALETTE = voc_palette()
DEPTH_TABLE = depth_colour_table()


def render_segmentation(labels: tf.Tensor) -> tf.Tensor:
    """`(H, W, 3)` colours of an `(H, W)` (or `(H, W, 1)`) map of class ids (any numeric dtype)."""
    ids = tf.clip_by_value(tf.cast(tf.round(tf.cast(tf.reshape(labels, tf.shape(labels)[:2]), tf.float32)),
                                   tf.int32), 0, 255)
    return tf.gather(tf.constant(SEGMENTATION_PALETTE), ids)


def render_depth(depth: tf.Tensor) -> tf.Tensor:
    """`(H, W, 3)` colours of an `(H, W)` (or `(H, W, 1)`) depth map, min-max normalised per image."""
    depth = tf.cast(tf.reshape(depth, tf.shape(depth)[:2]), tf.float32)
    low, high = tf.reduce_min(depth), tf.reduce_max(depth)
    unit = (depth - low) / tf.maximum(high - low, 1e-12)
    index = tf.clip_by_value(tf.cast(tf.round(unit * 255.0), tf.int32), 0, 255)
    return tf.gather(tf.constant(DEPTH_TABLE), index)
