"""Metrics for a stochastic effect (film grain): compare statistics, not one realisation pixel for pixel.

Two grain renderings of one photo with different seeds differ pixel for pixel by ~sqrt(2) x the grain's std,
so L1 / SSIM / LPIPS penalise a model for drawing different grain as much as for drawing the wrong grain. These
split an image into a Gaussian low-pass and the high-pass residual, image - blur:

    highpass_std_error(pred, target, *, sigma=1.5, y_channel=False, data_range=1.0) -> (B,)
        |std(hp(pred)) - std(hp(target))| per channel, averaged over channels: is the grain's amplitude right?
        A realisation-independent statistic: two renderings of one grain have nearly equal high-pass stds.
    lowpass_l1(pred, target, *, sigma=1.5, y_channel=False, data_range=1.0) -> (B,)
        mean |blur(pred) - blur(target)|: is the underlying picture (content, colour) right, grain aside?

Conventions as in `eval.metrics`: (B, H, W, C) arrays in [0, data_range], (pred, target) order, one value per
image, shape (B,). The blur is the normalised Gaussian of `sigma` pixels on 2 ceil(3 sigma) + 1 taps, over the
valid region only (no padded borders), so images need H, W >= 2 ceil(3 sigma) + 1; the std is the population
std over that region. Per channel by default: the grain is drawn independently per channel (colour grain, as
Newson et al. render colour), so luminance alone would average part of it away (the BT.601 luma of independent
equal-std channels has ~0.6x their std) and miss chroma grain; `y_channel=True` scores BT.601 luma instead, as
`eval.metrics` does. `data_range` only matters with `y_channel` (the luma offset). Both are in the images' units.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from eval.metrics import _gaussian_filter_valid, _prepare, gaussian_window_1d

DEFAULT_SIGMA = 1.5  # pixels: passes the 0.8 px-filtered grain (Newson et al.'s filter), keeps the content below


def _split(images: jax.Array, sigma: float) -> tuple[jax.Array, jax.Array]:
    """Low-pass and high-pass of (B, H, W, C) over the valid region: two (B, H - 2m, W - 2m, C), m = ceil(3 sigma)."""
    margin = math.ceil(3.0 * sigma)
    size = 2 * margin + 1
    if min(images.shape[1:3]) < size:
        raise ValueError(f"a Gaussian of sigma {sigma} needs images of at least {size}x{size}; got {images.shape}")
    low = _gaussian_filter_valid(images, gaussian_window_1d(size, sigma, images.dtype))
    return low, images[:, margin:-margin, margin:-margin] - low


@functools.partial(jax.jit, static_argnames=("sigma", "y_channel"))
def highpass_std_error(pred: jax.Array, target: jax.Array, *, sigma: float = DEFAULT_SIGMA, y_channel: bool = False,
                       data_range: float = 1.0) -> jax.Array:
    """|std_hp(pred) - std_hp(target)| per channel, mean over channels: (B, H, W, C) x 2 -> (B,)."""
    pred, target = _prepare(pred, target, data_range, y_channel)
    std_pred = jnp.std(_split(pred, sigma)[1], axis=(1, 2))
    std_target = jnp.std(_split(target, sigma)[1], axis=(1, 2))
    return jnp.mean(jnp.abs(std_pred - std_target), axis=-1)


@functools.partial(jax.jit, static_argnames=("sigma", "y_channel"))
def lowpass_l1(pred: jax.Array, target: jax.Array, *, sigma: float = DEFAULT_SIGMA, y_channel: bool = False,
               data_range: float = 1.0) -> jax.Array:
    """Mean absolute difference of the Gaussian low-passes: (B, H, W, C) x 2 -> (B,)."""
    pred, target = _prepare(pred, target, data_range, y_channel)
    return jnp.mean(jnp.abs(_split(pred, sigma)[0] - _split(target, sigma)[0]), axis=(1, 2, 3))
