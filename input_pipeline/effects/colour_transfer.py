"""Global colour transfer of Reinhard et al. 2001 in l-alpha-beta (decorrelated log-LMS) space.

    LMS = M_rgb2lms @ RGB;  L = log10(max(LMS, eps))
    [l, alpha, beta] = diag(1/sqrt3, 1/sqrt6, 1/sqrt2) @ [[1, 1, 1], [1, 1, -2], [1, -1, 0]] @ L
    out_c = (src_c - mean(src_c)) * std(ref_c) / std(src_c) + mean(ref_c)      for c in (l, alpha, beta)

then back through the inverse transforms; RGB is clipped to [0, 1] only at the very end, so before that clip
the output's per-channel l-alpha-beta mean and std equal the reference's exactly. `eps` guards the log of
pure black; a flat source channel (std 0) is shifted to the reference mean and keeps no spread. The inverse
matrices are computed, not copied: the paper's printed LMS -> RGB matrix is off by up to 7e-3 in its last row.

Cost (256 px): every 3 x 3 colour matrix is one `(pixels, 3) @ (3, 3)` matmul (tf.einsum's broadcast form of the
same product was the slow part of the former formulation); log10 and 10^x are ln and exp with the 1 / ln 10 and ln 10
folded into the adjacent matrices; `colour_transfer` folds the per-channel statistics match (an affine map in
l-alpha-beta) into the inverse matrix, so the source's l-alpha-beta goes through one matmul and one add on its
way back; the statistics centre by BiasAdd. These change only the rounding (~1e-6; tests/test_effects.py compares
with the former einsum / pow form, `effects.former.colour_transfer`).
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

# The matrices as applied: transposed (pixels are rows), with log10 = ln / ln 10 and 10^x = exp(x ln 10) folded in.
_LN10 = np.log(10.0)
_RGB_TO_LMS_T = RGB_TO_LMS.T.copy()
_LMS_TO_RGB_T = LMS_TO_RGB.T.copy()
_LN_LMS_TO_LAB_T = (LOG_LMS_TO_LAB.astype(np.float64) / _LN10).T.astype(np.float32)
_LAB_TO_LN_LMS = (LAB_TO_LOG_LMS.astype(np.float64) * _LN10).astype(np.float32)


def _apply_matrix_t(matrix_t: np.ndarray, pixels: tf.Tensor) -> tf.Tensor:
    """`matrix @ p` for every pixel p of `(..., 3)`, given `matrix_t` = matrix transposed: one matmul."""
    flat = tf.matmul(tf.reshape(pixels, [-1, 3]), tf.constant(matrix_t))
    return tf.reshape(flat, tf.shape(pixels))


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    """`(..., 3)` RGB in [0, 1] -> l-alpha-beta."""
    return _apply_matrix_t(_LN_LMS_TO_LAB_T, tf.math.log(tf.maximum(_apply_matrix_t(_RGB_TO_LMS_T, rgb), EPS)))


def _ln_lms_to_rgb(ln_lms: tf.Tensor) -> tf.Tensor:
    return _apply_matrix_t(_LMS_TO_RGB_T, tf.exp(ln_lms))


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    """l-alpha-beta -> unclipped RGB (the exact inverse of `rgb_to_lab` above the eps floor)."""
    return _ln_lms_to_rgb(_apply_matrix_t(_LAB_TO_LN_LMS.T.copy(), lab))


def _moments(lab: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-channel mean and variance of `(..., 3)`: tf.nn.moments' two passes, the centring as a BiasAdd (the
    channels-last broadcast kernel; tf.nn.moments' SquaredDifference broadcasts slowly)."""
    flat = tf.reshape(lab, [-1, 3])
    mean = tf.reduce_mean(flat, axis=0)
    return mean, tf.reduce_mean(tf.square(tf.nn.bias_add(flat, -mean)), axis=0)


def _matching_affine(source_lab: tf.Tensor, reference_lab: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-channel (scale, shift) with `source * scale + shift` = the source matched to the reference."""
    src_mean, src_var = _moments(source_lab)
    ref_mean, ref_var = _moments(reference_lab)
    src_std, ref_std = tf.sqrt(src_var), tf.sqrt(ref_var)
    scale = tf.where(src_std > 0, ref_std / tf.maximum(src_std, 1e-12), 0.0)
    return scale, ref_mean - src_mean * scale


def match_statistics(source_lab: tf.Tensor, reference_lab: tf.Tensor) -> tf.Tensor:
    """`(H, W, 3)` source with each channel's mean and std replaced by the reference's."""
    scale, shift = _matching_affine(source_lab, reference_lab)
    return source_lab * scale + shift


def colour_transfer(source: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    """`(H, W, 3)` source in [0, 1] recoloured after `(H', W', 3)` reference in [0, 1]; clipped to [0, 1].

    `lab_to_rgb(match_statistics(...))` with the match folded into the matrix: ln LMS = (C diag(scale)) lab
    + C shift, C = the l-alpha-beta -> ln LMS matrix.
    """
    source_lab = rgb_to_lab(source)
    scale, shift = _matching_affine(source_lab, rgb_to_lab(reference))
    to_ln_lms = tf.constant(_LAB_TO_LN_LMS)
    matrix_t = tf.transpose(to_ln_lms * scale[None, :])
    offset = tf.linalg.matvec(to_ln_lms, shift)
    ln_lms = tf.reshape(tf.matmul(tf.reshape(source_lab, [-1, 3]), matrix_t) + offset, tf.shape(source_lab))
    return tf.clip_by_value(_ln_lms_to_rgb(ln_lms), 0.0, 1.0)
