"""Multitask examples: task labels, effect strengths, the editing vector, and the compositing of the effects.

Batch fields (every training batch and evaluation set; B = per-host batch, H = W = crop_size):

    source        (B, H, W, 3) float32 in [-1, 1]  I_A, the original photo; multiplied by `mask` (in [-1, 1],
                                                   so holes read 0) when inpainting is on.
    target        (B, H, W, 3) float32 in [-1, 1]  I_B, the photo with the active effects applied (for
                                                   inpainting the target is the full, unmasked photo).
    reference     (B, H, W, 3) float32 in [-1, 1]  I_ref, a crop of another training photo when colour
                                                   transfer is on; zeros when it is off.
    mask          (B, H, W, 1) float32 in {0, 1}   M, 1 = keep, 0 = hole; ones when inpainting is off.
    edit_vector   (B, 9) float32                   C = [beta, sigma, lambda, mu, e1, e2, e3, e4, e5]; the
                                                   scalars of inactive tasks are 0.
    task_labels   (B, 5) float32 in {0, 1}         [e1..e5] = [blur, grain, colour, inpaint, sharpen].

Direction (the paper's reading, Sec. 3.2 / 4.1): the model learns to APPLY an effect of the requested strength:
the sharp photo is the source and the composited photo the target; for inpainting the masked photo is the
source and the full photo the target.

Order of the effects when several are active (fixed): motion blur, colour transfer, sharpening, film grain;
the inpainting mask only touches the source. Blur first because it happens in the camera (and real blurred
pairs arrive blurred); the colour grade and sharpening are post-production; grain last, as film emulation is
added at the end of a grade and sharpening it would exaggerate it.

Strengths: beta ~ U(beta_range); sigma uniform over film_grain.radii; lambda ~ U(amount_range);
mu ~ U(threshold_range); with a paired source the real blurred frame is used and beta = paired_beta.
"""
from __future__ import annotations

import itertools
import math

import ml_collections
import numpy as np
import tensorflow as tf

from input_pipeline import effects
from input_pipeline.config import TASKS
from input_pipeline.effects.motion_blur import kernel_size
from input_pipeline.randomness import purpose_seed

EVAL_COMBINATIONS = ("blur+grain", "blur+grain+colour", "grain+colour", "grain+colour+sharpen")
EDIT_VECTOR_SIZE = 4 + len(TASKS)


def label_table(label_set: str, tasks: tuple[str, ...] = TASKS) -> np.ndarray:
    """The label vectors training draws uniformly from: `(L, 5)` float32, only `tasks` ever on.

    'single': all-off and each single task (the paper, Sec. 4.1); 'combinations': every subset of `tasks`.
    """
    enabled = np.array([t in tasks for t in TASKS], np.float32)
    if label_set == "single":
        rows = np.concatenate([np.zeros((1, len(TASKS))), np.eye(len(TASKS))[enabled > 0]])
    else:
        subsets = np.array(list(itertools.product([0.0, 1.0], repeat=len(TASKS))))
        rows = subsets[np.all(subsets <= enabled, axis=1)]
    return rows.astype(np.float32)


def labels_of(name: str) -> np.ndarray:
    """`(5,)` labels of an evaluation-set name such as 'grain+colour' (task names joined by '+')."""
    parts = name.split("+")
    unknown = [p for p in parts if p not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in {name!r}; tasks are {TASKS}")
    return np.array([float(t in parts) for t in TASKS], np.float32)


def scale_with_crop(pixels_at_256: float, crop_size: int) -> float:
    return pixels_at_256 * crop_size / 256.0


def draw_strengths(seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
    """beta, sigma, lambda, mu for one example (all drawn; the inactive ones are zeroed by `edit_vector`)."""
    draws = tf.random.stateless_uniform([4], purpose_seed(seed, "strengths"))
    radii = tf.constant(cfg.film_grain.radii, tf.float32)

    def in_range(u, bounds):
        return bounds[0] + u * (bounds[1] - bounds[0])

    return {
        "beta": in_range(draws[0], cfg.motion_blur.beta_range),
        "sigma": tf.gather(radii, tf.minimum(tf.cast(draws[1] * len(cfg.film_grain.radii), tf.int32),
                                             len(cfg.film_grain.radii) - 1)),
        "lambda": in_range(draws[2], cfg.sharpen.amount_range),
        "mu": in_range(draws[3], cfg.sharpen.threshold_range),
    }


def edit_vector(labels: tf.Tensor, strengths: dict[str, tf.Tensor]) -> tf.Tensor:
    """C = [beta e1, sigma e2, lambda e5, mu e5, e1..e5]: `(9,)` float32."""
    scalars = tf.stack([strengths["beta"] * labels[0], strengths["sigma"] * labels[1],
                        strengths["lambda"] * labels[4], strengths["mu"] * labels[4]])
    return tf.concat([scalars, labels], axis=0)


def composite(photo: tf.Tensor, reference: tf.Tensor, real_blurred: tf.Tensor | None, labels: tf.Tensor,
              strengths: dict[str, tf.Tensor], seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> dict:
    """One example's batch fields (see the module docstring) from `(H, W, 3)` crops in [0, 1].

    `real_blurred` (paired sources) replaces the synthetic blur; `seed` is the example's (2,) seed.
    """
    crop = photo.shape[0]
    on = {task: labels[i] > 0.5 for i, task in enumerate(TASKS)}
    image = photo

    if real_blurred is not None:
        image = tf.cond(on["blur"], lambda: real_blurred, lambda: image)
    else:
        max_length = max(1.0, scale_with_crop(cfg.motion_blur.max_length_at_256, crop))
        if cfg.motion_blur.angle_mode == "fixed":
            angle = tf.constant(math.radians(cfg.motion_blur.angle_degrees), tf.float32)
        else:
            angle = tf.random.stateless_uniform([], purpose_seed(seed, "motion_angle"), maxval=math.pi)
        if kernel_size(max_length) > 1:
            image = tf.cond(on["blur"], lambda: effects.motion_blur(image, strengths["beta"], angle, max_length),
                            lambda: image)
    image = tf.cond(on["colour"], lambda: effects.colour_transfer(image, reference), lambda: image)
    image = tf.cond(on["sharpen"], lambda: effects.unsharp_mask(image, strengths["lambda"], strengths["mu"],
                                                                cfg.sharpen.blur_sigma), lambda: image)
    image = tf.cond(on["grain"], lambda: effects.film_grain(
        image, strengths["sigma"], purpose_seed(seed, "grain"), filter_sigma=cfg.film_grain.filter_sigma,
        monte_carlo_samples=cfg.film_grain.monte_carlo_samples), lambda: image)

    ip = cfg.inpainting
    mask = tf.cond(on["inpaint"], lambda: effects.free_form_mask(
        purpose_seed(seed, "mask"), crop, min_vertices=ip.min_vertices, max_vertices=ip.max_vertices,
        min_width=scale_with_crop(ip.min_width_at_256, crop), max_width=scale_with_crop(ip.max_width_at_256, crop),
        max_strokes=ip.max_strokes, box_probability=ip.box_probability), lambda: tf.ones([crop, crop, 1]))

    if real_blurred is not None:
        strengths = dict(strengths, beta=tf.constant(cfg.motion_blur.paired_beta, tf.float32))
    return {
        "source": (photo * 2.0 - 1.0) * mask,
        "target": image * 2.0 - 1.0,
        "reference": tf.where(on["colour"], reference * 2.0 - 1.0, tf.zeros_like(reference)),
        "mask": mask,
        "edit_vector": edit_vector(labels, strengths),
        "task_labels": labels,
    }
