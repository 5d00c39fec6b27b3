"""The forward process and the three denoiser parameterisations (epsilon, v, x_0), for per-example timesteps.

With a = sqrt(alpha_bar_t) and s = sqrt(1 - alpha_bar_t) (so a^2 + s^2 = 1):

    z_t = a x_0 + s eps                 (q_sample)
    v   = a eps - s x_0                 (Salimans & Ho 2022)
    x_0 = (z_t - s eps) / a = a z_t - s v
    eps = (z_t - a x_0) / s = s z_t + a v

Every function takes `t` as an int array `(B,)` and latents `(B, ...)` of any rank; the per-timestep factors
are broadcast over the trailing axes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from editdiff.diffusion.schedules import NoiseSchedule


def _per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    """`values` `(B,)` reshaped to `(B, 1, ..., 1)` to broadcast against `like` `(B, ...)`, in its dtype."""
    return values.astype(like.dtype).reshape(values.shape + (1,) * (like.ndim - values.ndim))


def signal_and_noise_scales(schedule: NoiseSchedule, t: jax.Array, like: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)), each `(B, 1, ..., 1)` broadcastable against `like`."""
    alpha_bar = schedule.alphas_cumprod[t]
    return _per_example(jnp.sqrt(alpha_bar), like), _per_example(jnp.sqrt(1.0 - alpha_bar), like)


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Samples z_t ~ q(z_t | x_0) = N(a x_0, s^2 I) with the given noise; x0, noise `(B, ...)`, t `(B,)`."""
    a, s = signal_and_noise_scales(schedule, t, x0)
    return a * x0 + s * noise


def velocity(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """v = a eps - s x_0, the v-prediction target."""
    a, s = signal_and_noise_scales(schedule, t, x0)
    return a * noise - s * x0


def training_target(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """What a denoiser of the schedule's `prediction_type` must output for z_t = q_sample(x0, t, noise)."""
    if schedule.prediction_type == "epsilon":
        return noise
    if schedule.prediction_type == "v_prediction":
        return velocity(schedule, x0, noise, t)
    return x0


def x0_and_eps_at(
    prediction_type: str, alpha: jax.Array, sigma: jax.Array, z_t: jax.Array, prediction: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The (x_0, eps) pair implied by a denoiser output at z_t, given the signal and noise scales
    (alpha, sigma) of z_t's noise level (broadcastable against z_t; samplers pass per-step scalars)."""
    if prediction_type == "epsilon":
        return (z_t - sigma * prediction) / alpha, prediction
    if prediction_type == "v_prediction":
        return alpha * z_t - sigma * prediction, sigma * z_t + alpha * prediction
    return prediction, (z_t - alpha * prediction) / sigma


def x0_and_eps(
    schedule: NoiseSchedule, z_t: jax.Array, t: jax.Array, prediction: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The (x_0, eps) pair implied by a denoiser output of the schedule's `prediction_type` at (z_t, t `(B,)`)."""
    a, s = signal_and_noise_scales(schedule, t, z_t)
    return x0_and_eps_at(schedule.prediction_type, a, s, z_t, prediction)


def snr(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t), float32 `(B,)` (0 at a zero-SNR final step)."""
    alpha_bar = schedule.alphas_cumprod[t].astype(jnp.float32)
    return alpha_bar / (1.0 - alpha_bar)
