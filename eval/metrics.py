"""Full-reference image metrics: L1, MSE, RMSE, PSNR, SSIM, each per image on (B, H, W, C) arrays.

Conventions (the ones published restoration / editing tables use, and the ones public code often misses):
  * the data range is an argument, never estimated from the images;
  * every metric is computed per image and returns shape (B,); average the rows yourself (or use
    `eval.streaming.MetricTable`), so the dataset mean is the mean of per-image values;
  * SSIM is Wang et al. (2004) as in scikit-image with `gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False`: an 11x11 Gaussian window, K1 = 0.01, K2 = 0.03, population moments,
    the mean over the valid region (no padded borders), then the mean over channels;
  * `y_channel=True` scores the ITU-R BT.601 luma (as restoration papers do) instead of RGB.

All functions are pure and jit-able; they compute in the inputs' float dtype (float32 unless x64 is enabled).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# ITU-R BT.601 luma for RGB in [0, 1], giving Y in [16, 235] / 255 (MATLAB rgb2ycbcr, BasicSR, scikit-image).
_BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
_BT601_Y_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_float(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _check_pair(pred: jax.Array, target: jax.Array) -> None:
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"pred and target must both be (B, H, W, C); got {pred.shape} and {target.shape}")


def rgb_to_y(images: jax.Array, data_range: float) -> jax.Array:
    """BT.601 luma of RGB images (B, H, W, 3) in [0, data_range], as (B, H, W, 1) on the same scale."""
    images = _as_float(images)
    if images.shape[-1] != 3:
        raise ValueError(f"y_channel needs RGB images (B, H, W, 3); got {images.shape}")
    weights = jnp.asarray(_BT601_Y_WEIGHTS, images.dtype)
    y_255 = _BT601_Y_OFFSET + (images / data_range) @ weights
    return (y_255 * (data_range / 255.0))[..., None]


def _prepare(pred, target, data_range, y_channel):
    pred, target = _as_float(pred), _as_float(target)
    _check_pair(pred, target)
    if y_channel:
        pred, target = rgb_to_y(pred, data_range), rgb_to_y(target, data_range)
    return pred, target


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute error per image: (B, H, W, C) x 2 -> (B,)."""
    pred, target = _prepare(pred, target, None, False)
    return jnp.mean(jnp.abs(pred - target), axis=(1, 2, 3))


def mse(pred: jax.Array, target: jax.Array, *, y_channel: bool = False, data_range: float = 1.0) -> jax.Array:
    """Mean squared error per image: (B, H, W, C) x 2 -> (B,). `data_range` only matters with y_channel."""
    pred, target = _prepare(pred, target, data_range, y_channel)
    return jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))


def rmse(pred: jax.Array, target: jax.Array, *, y_channel: bool = False, data_range: float = 1.0) -> jax.Array:
    """Root mean squared error per image (the root of each image's MSE): -> (B,)."""
    return jnp.sqrt(mse(pred, target, y_channel=y_channel, data_range=data_range))


def psnr(pred: jax.Array, target: jax.Array, data_range: float, *, y_channel: bool = False) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image, 10 log10(data_range^2 / MSE): -> (B,).

    `data_range` is the span of valid values (1.0 for [0, 1], 255 for uint8, 2.0 for [-1, 1]). Identical
    images give +inf, as scikit-image does.
    """
    err = mse(pred, target, y_channel=y_channel, data_range=data_range)
    return 10.0 * jnp.log10(jnp.square(jnp.asarray(data_range, err.dtype)) / err)


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=jnp.float32) -> jax.Array:
    """The normalised 1-D Gaussian taps (size,) whose outer product is SSIM's 2-D window."""
    offsets = jnp.arange(size, dtype=dtype) - (size - 1) / 2
    taps = jnp.exp(-0.5 * jnp.square(offsets / sigma))
    return taps / jnp.sum(taps)


def _gaussian_filter_valid(maps: jax.Array, taps: jax.Array) -> jax.Array:
    """Separable Gaussian blur of every channel of (N, H, W, C) without padding: -> (N, H-k+1, W-k+1, C).

    A weighted sum of k shifted slices per axis: XLA fuses it into one pass, where a grouped (depthwise)
    convolution runs ~20x slower on CPU.
    """
    k = taps.shape[0]
    height, width = maps.shape[1] - k + 1, maps.shape[2] - k + 1
    rows = sum(taps[i] * maps[:, i:i + height] for i in range(k))
    return sum(taps[i] * rows[:, :, i:i + width] for i in range(k))


def ssim_map(pred: jax.Array, target: jax.Array, data_range: float, *, y_channel: bool = False) -> jax.Array:
    """The local SSIM index over the valid region: (B, H, W, C) x 2 -> (B, H-10, W-10, C).

    Images are divided by `data_range` first: SSIM is unchanged by scaling both images and the constants
    together, and values of order 1 keep float32's cancellation in E[x^2] - E[x]^2 small.
    """
    pred, target = _prepare(pred, target, data_range, y_channel)
    if min(pred.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}; got {pred.shape[1:3]}")
    x, y = pred / data_range, target / data_range
    taps = gaussian_window_1d(dtype=x.dtype)
    moments = _gaussian_filter_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), taps)
    mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(moments, 5, axis=-1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # the data range is 1 after the division above
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


@functools.partial(jax.jit, static_argnames=("y_channel",))
def ssim(pred: jax.Array, target: jax.Array, data_range: float, *, y_channel: bool = False) -> jax.Array:
    """Mean SSIM per image (valid region, then channels), scikit-image's paper settings: -> (B,).

    Jitted here (one compile per shape) because eagerly its 44 slice-and-add steps dispatch one by one."""
    return jnp.mean(ssim_map(pred, target, data_range, y_channel=y_channel), axis=(1, 2, 3))
