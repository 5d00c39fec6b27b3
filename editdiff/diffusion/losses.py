"""Denoising training losses: timestep sampling, L1 / L2 noise loss, the loss measured on x_0, min-SNR-gamma
weighting.

Everything is computed in float32 whatever the compute dtype of the prediction (bfloat16 U-Net outputs are
upcast first), so a loss value means the same thing on every device.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from editdiff.diffusion.parameterisation import snr, training_target
from editdiff.diffusion.schedules import NoiseSchedule

LOSS_NORMS = ("l2", "l1")
# Where the loss is measured: on the denoiser's own target (epsilon, v or x_0: the prediction type's loss), or on
# the x_0 its output implies (x0_and_eps), whatever the prediction type.
LOSS_SPACES = ("prediction", "x0")


def sample_timesteps(key: jax.Array, batch_size: int, num_train_timesteps: int) -> jax.Array:
    """Training timesteps drawn uniformly from {0, ..., num_train_timesteps - 1}, int32 `(batch_size,)`."""
    return jax.random.randint(key, (batch_size,), 0, num_train_timesteps, dtype=jnp.int32)


def min_snr_weights(schedule: NoiseSchedule, t: jax.Array, gamma: float) -> jax.Array:
    """Min-SNR-gamma loss weights (Hang et al. 2023) `(B,)` for the schedule's prediction type.

    The weight of the x_0 loss is min(SNR, gamma); expressed on the epsilon loss it is min(SNR, gamma) / SNR
    and on the v loss min(SNR, gamma) / (SNR + 1). At SNR = 0 (a zero-terminal-SNR last step) the epsilon
    weight takes its limit 1 instead of 0/0.
    """
    ratio = snr(schedule, t)
    clipped = jnp.minimum(ratio, gamma)
    if schedule.prediction_type == "epsilon":
        return jnp.where(ratio > 0, clipped / jnp.where(ratio > 0, ratio, 1.0), 1.0)
    if schedule.prediction_type == "v_prediction":
        return clipped / (ratio + 1.0)
    return clipped


def x0_error_scale(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
    """|x_0's error| / |the prediction's error|, float32 `(B,)`: the implied x_0 (parameterisation.x0_and_eps) is
    affine in the denoiser's output, with slope -s / a for epsilon (x_0 = (z_t - s eps) / a), -s for v
    (x_0 = a z_t - s v) and 1 for x_0 itself (a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t))."""
    alpha_bar = schedule.alphas_cumprod[t].astype(jnp.float32)
    if schedule.prediction_type == "epsilon":
        return jnp.sqrt((1.0 - alpha_bar) / alpha_bar)
    if schedule.prediction_type == "v_prediction":
        return jnp.sqrt(1.0 - alpha_bar)
    return jnp.ones_like(alpha_bar)


def noise_loss(
    prediction: jax.Array, target: jax.Array, *, norm: str = "l2", weights: jax.Array | None = None
) -> jax.Array:
    """Scalar float32 loss: per example the mean |prediction - target| ("l1") or squared error ("l2") over all
    non-batch axes, times `weights` `(B,)` if given, averaged over the batch. prediction, target `(B, ...)`."""
    if norm not in LOSS_NORMS:
        raise ValueError(f"loss norm={norm!r} is not supported; allowed: {', '.join(LOSS_NORMS)}")
    error = prediction.astype(jnp.float32) - target.astype(jnp.float32)
    error = jnp.abs(error) if norm == "l1" else jnp.square(error)
    per_example = jnp.mean(error.reshape(error.shape[0], -1), axis=1)
    if weights is not None:
        per_example = per_example * weights.astype(jnp.float32)
    return jnp.mean(per_example)


def diffusion_loss(
    schedule: NoiseSchedule,
    prediction: jax.Array,
    x0: jax.Array,
    noise: jax.Array,
    t: jax.Array,
    *,
    norm: str = "l2",
    space: str = "prediction",
    min_snr_gamma: float | None = None,
) -> jax.Array:
    """The denoiser's loss against the training target of the schedule's prediction type.

    prediction: the denoiser's output at z_t = q_sample(schedule, x0, t, noise), `(B, ...)`; t `(B,)`.
    space: "prediction" measures the error of the prediction itself; "x0" the error of the x_0 it implies, so
    that every noise level counts in the data's units (with v prediction: the x_0 denoiser
    a z_t - s F(z_t), which copies its input at low noise, trained with x_0's loss). Since the implied x_0 is
    affine in the prediction, this is the prediction's loss weighted by `x0_error_scale` (squared for L2).
    min_snr_gamma: None for uniform weighting, else the gamma of min-SNR weighting (5 in the paper): the x_0
    loss weighted by min(SNR, gamma), in whichever space it is measured.
    """
    if space not in LOSS_SPACES:
        raise ValueError(f"loss space={space!r} is not supported; allowed: {', '.join(LOSS_SPACES)}")
    target = training_target(schedule, x0.astype(jnp.float32), noise.astype(jnp.float32), t)
    weights = None
    if space == "x0":
        weights = x0_error_scale(schedule, t) ** (1 if norm == "l1" else 2)
        if min_snr_gamma is not None:
            weights = weights * jnp.minimum(snr(schedule, t), min_snr_gamma)
    elif min_snr_gamma is not None:
        weights = min_snr_weights(schedule, t, min_snr_gamma)
    return noise_loss(prediction, target, norm=norm, weights=weights)
