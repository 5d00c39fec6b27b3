"""The visual-prompting tasks as (input, output) pair makers, TF ops runnable inside tf.data.Dataset.map.

Every `make_<task>(image, seed) -> (x, y)` takes a float32 `(H, W, 3)` image in [0, 1] (the range of
input_pipeline's effects; the example function maps to [-1, 1] afterwards) and a (2,) stateless seed, and
returns two `(H, W, 3)` float32 images; the same (image, seed) always gives the same pair. Outputs stay in
[0, 1] except denoising's input, which is not clipped (clipping would shrink the noise near black and white,
so the residual would no longer be Gaussian of the drawn sigma).

In-distribution tasks (y = image unless stated):
- inpainting:        x = image with a free-form hole (effects.free_form_mask, widths scaled from 256 px as in
                     input_pipeline.tasks) filled with grey 0.5 (0 on the [-1, 1] scale, as the masked source
                     of the multitask pipeline reads).
- colourisation:     x = ITU-R 601 luma (tf.image.rgb_to_grayscale) replicated to three channels.
- edges:             x = image, y = Canny edges (visual_tasks.canny on the luma, sigma 2 px at 256 px scaled
                     with the image) white on black, three channels, values in {0, 1}.
- super_resolution:  x = image downsampled x4 by area averaging (4 x 4 block means), then upsampled x4 bicubic
                     (Keys a = -0.5, tf.image.resize), clipped to [0, 1]. H and W must be multiples of 4.
- deblurring:        x = effects.motion_blur with degree beta ~ U(0.4, 1) and angle ~ U(0, pi), maximum length
                     21 px at 256 px scaled with the image.
- denoising:         x = image + N(0, sigma^2) per pixel and channel, sigma ~ U(0.02, 0.2), not clipped.
Labelled tasks, `make_<task>(image, label_map, seed)` with a `(H, W)` map of the same photo:
- segmentation:      x = image, y = the class ids rendered with the VOC palette (render.render_segmentation).
- depth:             x = image, y = depth rendered with the viridis-like ramp (render.render_depth).
Out-of-distribution tasks (evaluation only):
- deraining:         x = image under screen-blended rain streaks: input_pipeline.degradations.rain.degrade_derain
                     (Diff-Plugin's deraining degradation) with its default density, angle and opacity ranges
                     and its streak lengths 10-30 px taken at 256 px and scaled with the image (>= 2-3 px).
- contrast:          x = mean + f (image - mean), per channel mean over the image, f ~ U(0.3, 0.6): the same
                     mean, std scaled by f.
Random strengths come from `seed` alone; `inpainting_mask`, `noise_sigma` and `contrast_factor` expose them,
so tests (and the reference and query of one example, which share a seed) see the same values.
"""
from __future__ import annotations

import math

import tensorflow as tf

from input_pipeline.degradations.rain import degrade_derain
from input_pipeline.effects.inpainting_masks import free_form_mask
from input_pipeline.effects.motion_blur import motion_blur
from input_pipeline.visual_tasks.canny import canny
from input_pipeline.visual_tasks.render import render_depth, render_segmentation

INPAINT_FILL = 0.5
SR_FACTOR = 4
BLUR_BETA_RANGE = (0.4, 1.0)
BLUR_MAX_LENGTH_AT_256 = 21.0
NOISE_SIGMA_RANGE = (0.02, 0.2)
CONTRAST_FACTOR_RANGE = (0.3, 0.6)
EDGE_SIGMA_AT_256 = 2.0
RAIN_LENGTH_AT_256 = (10.0, 30.0)  # degradations.rain's default lengths (sized there for 256-512 px), read at 256 px


def _uniform(seed: tf.Tensor, salt: int, bounds: tuple[float, float], shape=()) -> tf.Tensor:
    """Uniform draws in `bounds` from the independent stream `salt` of the task seed."""
    return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, salt),
                                       minval=bounds[0], maxval=bounds[1])


def _at_crop(pixels_at_256: float, size: int) -> float:
    return pixels_at_256 * size / 256.0


def grey3(image: tf.Tensor) -> tf.Tensor:
    """`(H, W, 3)`: the luma of the `(H, W, 3)` image in all three channels."""
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def inpainting_mask(seed: tf.Tensor, size: int) -> tf.Tensor:
    """`(size, size, 1)` mask, 1 keep, 0 hole: the free-form mask with the multitask pipeline's default widths."""
    return free_form_mask(seed, size, min_width=_at_crop(12.0, size), max_width=_at_crop(40.0, size))


def make_inpainting(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    height, width = image.shape[:2]
    if height != width:
        raise ValueError(f"inpainting needs a square image (the free-form mask is square), got {height}x{width}")
    mask = inpainting_mask(seed, height)
    return image * mask + INPAINT_FILL * (1.0 - mask), image


def make_colourisation(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    del seed  # deterministic task
    return grey3(image), image


def make_edges(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    del seed
    edges = canny(tf.image.rgb_to_grayscale(image)[..., 0], sigma=_at_crop(EDGE_SIGMA_AT_256, image.shape[0]))
    return image, tf.tile(tf.cast(edges, tf.float32)[..., None], [1, 1, 3])


def down_up_sample(image: tf.Tensor, factor: int = SR_FACTOR) -> tf.Tensor:
    """`(H, W, 3)`: area-downsampled by `factor` (block means), then bicubic-upsampled back, clipped to [0, 1]."""
    height, width = image.shape[:2]
    if height % factor or width % factor:
        raise ValueError(f"super-resolution x{factor} needs H and W divisible by {factor}, got {height}x{width}")
    small = tf.nn.avg_pool2d(image[None], factor, factor, "VALID")
    return tf.clip_by_value(tf.image.resize(small, [height, width], method="bicubic")[0], 0.0, 1.0)


def make_super_resolution(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    del seed
    return down_up_sample(image), image


def make_deblurring(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    beta = _uniform(seed, 0, BLUR_BETA_RANGE)
    angle = _uniform(seed, 1, (0.0, math.pi))
    return motion_blur(image, beta, angle, max(3.0, _at_crop(BLUR_MAX_LENGTH_AT_256, image.shape[0]))), image


def noise_sigma(seed: tf.Tensor) -> tf.Tensor:
    """The denoising task's noise std drawn from `seed`."""
    return _uniform(seed, 0, NOISE_SIGMA_RANGE)


def make_denoising(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    noise = tf.random.stateless_normal(tf.shape(image), tf.random.experimental.stateless_fold_in(seed, 1))
    return image + noise_sigma(seed) * noise, image


def make_segmentation(image: tf.Tensor, label_map: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    del seed
    return image, render_segmentation(label_map)


def make_depth(image: tf.Tensor, label_map: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    del seed
    return image, render_depth(label_map)


def make_deraining(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    low, high = RAIN_LENGTH_AT_256
    lengths = (max(2.0, _at_crop(low, image.shape[0])), max(3.0, _at_crop(high, image.shape[0])))
    return degrade_derain(image, seed, length_range=lengths), image


def contrast_factor(seed: tf.Tensor) -> tf.Tensor:
    """The contrast task's factor f (the input's std is f times the image's) drawn from `seed`."""
    return _uniform(seed, 0, CONTRAST_FACTOR_RANGE)


def make_contrast(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
    return mean + contrast_factor(seed) * (image - mean), image
