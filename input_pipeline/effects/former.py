"""The effects' former formulations (before issue 14's speed-up), kept as references.

Each computes the same function as the current effect, only slower: tests/test_effects.py checks the current
implementations equal these (to float rounding; the mask bit for bit), and `benchmarks/input_pipeline.py
--effects` times both side by side. Not used by the pipeline.

    motion_blur      the whole kernel_size^2 kernel through conv2d on one-channel planes (`convolve_reflect`)
    gaussian_blur    `convolve_reflect` with k x 1, then 1 x k taps, each axis padded separately
    unsharp_mask     that blur and the threshold as tf.where
    colour_transfer  tf.einsum per colour matrix, log10 as log / ln 10, 10^x as tf.pow, the match in l-alpha-beta
    film_grain       channel-major planes, the margin by two gathers, weighted sums of shifted slices
    free_form_mask   every pixel centre tested against every segment, `(size^2, S)` at once
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from input_pipeline.effects.colour_transfer import EPS, LAB_TO_LOG_LMS, LMS_TO_RGB, LOG_LMS_TO_LAB, RGB_TO_LMS
from input_pipeline.effects.convolution import convolve_reflect
from input_pipeline.effects.film_grain import _amplitude_table, pixel_integrated_taps
from input_pipeline.effects.inpainting_masks import _segment_distance_sq, finish_mask, stroke_segments
from input_pipeline.effects.motion_blur import kernel_size, motion_blur_kernel
from input_pipeline.effects.unsharp import gaussian_kernel_1d


def motion_blur(image: tf.Tensor, beta: tf.Tensor, angle: tf.Tensor, max_length: float) -> tf.Tensor:
    length = 1.0 + tf.cast(beta, tf.float32) * (max_length - 1.0)
    return convolve_reflect(image, motion_blur_kernel(length, angle, kernel_size(max_length)))


def gaussian_blur(image: tf.Tensor, sigma: float) -> tf.Tensor:
    taps = gaussian_kernel_1d(sigma)
    return convolve_reflect(convolve_reflect(image, taps[:, None]), taps[None, :])


def unsharp_mask(image: tf.Tensor, amount: tf.Tensor, threshold: tf.Tensor, blur_sigma: float) -> tf.Tensor:
    detail = image - gaussian_blur(image, blur_sigma)
    sharpened = image + tf.cast(amount, tf.float32) * detail
    return tf.clip_by_value(tf.where(tf.abs(detail) > threshold, sharpened, image), 0.0, 1.0)


def _apply_matrix(matrix: np.ndarray, pixels: tf.Tensor) -> tf.Tensor:
    return tf.einsum("ij,...j->...i", tf.constant(matrix), pixels)


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    return _apply_matrix(LOG_LMS_TO_LAB, tf.math.log(tf.maximum(_apply_matrix(RGB_TO_LMS, rgb), EPS)) / np.log(10.0))


def colour_transfer(source: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    source_lab, reference_lab = rgb_to_lab(source), rgb_to_lab(reference)
    src_mean, src_var = tf.nn.moments(source_lab, axes=[0, 1])
    ref_mean, ref_var = tf.nn.moments(reference_lab, axes=[0, 1])
    src_std, ref_std = tf.sqrt(src_var), tf.sqrt(ref_var)
    scale = tf.where(src_std > 0, ref_std / tf.maximum(src_std, 1e-12), 0.0)
    lab = (source_lab - src_mean) * scale + ref_mean
    return tf.clip_by_value(_apply_matrix(LMS_TO_RGB, tf.pow(10.0, _apply_matrix(LAB_TO_LOG_LMS, lab))), 0.0, 1.0)


def _separable_valid(planes: tf.Tensor, taps: tf.Tensor) -> tf.Tensor:
    size = int(taps.shape[0])
    height, width = planes.shape[1] - size + 1, planes.shape[2] - size + 1
    rows = tf.add_n([taps[i] * planes[:, i:i + height] for i in range(size)])
    return tf.add_n([taps[i] * rows[:, :, i:i + width] for i in range(size)])


def film_grain(image: tf.Tensor, radius: tf.Tensor, seed: tf.Tensor, *, filter_sigma: float = 0.8,
               monte_carlo_samples: int = 0) -> tf.Tensor:
    height, width, channels = image.shape
    margin = math.ceil(3.0 * filter_sigma)
    mean_taps = pixel_integrated_taps(filter_sigma, margin)
    noise_taps = gaussian_kernel_1d(filter_sigma)
    amplitude = tf.constant(_amplitude_table())
    radius = tf.cast(radius, tf.float32)

    def render():
        levels = tf.cast(tf.round(tf.clip_by_value(tf.transpose(image, [2, 0, 1]), 0.0, 1.0) * 255.0), tf.int32)
        rows = tf.clip_by_value(tf.range(-margin, height + margin), 0, height - 1)
        cols = tf.clip_by_value(tf.range(-margin, width + margin), 0, width - 1)
        padded = tf.gather(tf.gather(levels, rows, axis=1), cols, axis=2)  # (C, H + 2m, W + 2m)
        white = tf.random.stateless_normal(tf.shape(padded), seed)
        mean = _separable_valid(tf.cast(padded, tf.float32) / 255.0, mean_taps)
        out = mean + _separable_valid(radius * tf.gather(amplitude, padded) * white, noise_taps)
        if monte_carlo_samples:
            grain_var = tf.square(radius * tf.gather(amplitude, padded[:, margin:-margin, margin:-margin])) * \
                tf.reduce_sum(tf.square(noise_taps)) ** 2
            render_var = tf.nn.relu(mean * (1.0 - mean) - grain_var) / monte_carlo_samples
            out += tf.sqrt(render_var) * tf.random.stateless_normal(
                tf.shape(mean), tf.random.experimental.stateless_fold_in(seed, 1))
        return tf.clip_by_value(tf.transpose(out, [1, 2, 0]), 0.0, 1.0)

    return tf.cond(radius > 0, render, lambda: image)


def dense_hole(starts: tf.Tensor, ends: tf.Tensor, half_width: tf.Tensor, active: tf.Tensor,
               size: int) -> tf.Tensor:
    """`inpainting_masks.rasterise_segments` by testing every pixel centre against every segment."""
    coords = tf.range(size, dtype=tf.float32) + 0.5
    ys, xs = tf.meshgrid(coords, coords, indexing="ij")
    distance_sq = _segment_distance_sq(tf.reshape(xs, [-1, 1]), tf.reshape(ys, [-1, 1]), starts, ends)
    hit = (distance_sq <= (half_width * half_width)[None]) & active[None]
    return tf.reshape(tf.reduce_any(hit, axis=-1), [size, size])


def free_form_mask(seed: tf.Tensor, size: int, *, min_vertices: int = 4, max_vertices: int = 11,
                   min_width: float = 12.0, max_width: float = 40.0, max_strokes: int = 3,
                   box_probability: float = 0.5) -> tf.Tensor:
    segments = stroke_segments(seed, size, min_vertices=min_vertices, max_vertices=max_vertices,
                               min_width=min_width, max_width=max_width, max_strokes=max_strokes)
    return finish_mask(dense_hole(*segments, size), seed, size, box_probability=box_probability)
