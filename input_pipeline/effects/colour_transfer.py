"""Global colour transfer of Reinhard et al. 2001 in l-alpha-beta (decorrelated log-LMS) space.

    LMS = M_rgb2lms @ RGB;  L = log10(max(LMS, eps))
    [l, alpha, beta] = diag(1/sqrt3, 1/sqrt6, 1/sqrt2) @ [[1, 1, 1], [1, 1, -2], [1, -1, 0]] @ L
    out_c = (src_c - mean(src_c)) * std(ref_c) / std(src_c) + mean(ref_c)      for c in (l, alpha, beta)

then back through the inverse transforms; RGB is clipped to [0, 1] only at the very end, so before that clip
the output's per-channel l-alpha-beta mean and std equal the reference's exactly. `eps` guards the log of
pure black; a flat source channel (std 0) is shifted to the reference mean and keeps no spread. The inverse
matrices are computed, not copied: the paper's printed LMS -> RGB matrix is off by up to 7e-3 in its last row.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

EPS = 1e-4

RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402],
                       [0.1967, 0.7244, 0.0782],
                       [0.0241, 0.1288, 0.8444]], np.float32)
LMS_TO_RGB = np.linalg.inv(RGB_TO_LMS.astype(np.float64)).astype(np.float32)
LOG_LMS_TO_LAB = (np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)])
                  @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])).astype(np.float32)
LAB_TO_LOG_LMS = np.linalg.inv(LOG_LMS_TO_LAB.astype(np.float64)).astype(np.float32)


def _apply_matrix(matrix: np.ndarray, pixels: tf.Tensor) -> tf.Tensor:
    """`matrix @ p` for every pixel p of `(..., 3)`."""
    return tf.einsum("ij,...j->...i", tf.constant(matrix), pixels)


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    """`(..., 3)` RGB in [0, 1] -> l-alpha-beta."""
    return _apply_matrix(LOG_LMS_TO_LAB, tf.math.log(tf.maximum(_apply_matrix(RGB_TO_LMS, rgb), EPS)) / np.log(10.0))


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    """l-alpha-beta -> unclipped RGB (the exact inverse of `rgb_to_lab` above the eps floor)."""
    return _apply_matrix(LMS_TO_RGB, tf.pow(10.0, _apply_matrix(LAB_TO_LOG_LMS, lab)))


def match_statistics(source_lab: tf.Tensor, reference_lab: tf.Tensor) -> tf.Tensor:
    """`(H, W, 3)` source with each channel's mean and std replaced by the reference's."""
    src_mean, src_var = tf.nn.moments(source_lab, axes=[0, 1])
    ref_mean, ref_var = tf.nn.moments(reference_lab, axes=[0, 1])
    src_std, ref_std = tf.sqrt(src_var), tf.sqrt(ref_var)
    scale = tf.where(src_std > 0, ref_std / tf.maximum(src_std, 1e-12), 0.0)
    return (source_lab - src_mean) * scale + ref_mean


def colour_transfer(source: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    """`(H, W, 3)` source in [0, 1] recoloured after `(H', W', 3)` reference in [0, 1]; clipped to [0, 1]."""
    lab = match_statistics(rgb_to_lab(source), rgb_to_lab(reference))
    return tf.clip_by_value(lab_to_rgb(lab), 0.0, 1.0)
