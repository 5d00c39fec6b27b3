"""Samplers: each one `lax.scan` over its steps around a denoiser, so the whole loop is one XLA program and the
denoiser is traced once, whatever the number of steps. Each matches the diffusers scheduler named below step by
step: same timesteps, same update, every intermediate latent within 1e-5 (tests/test_diffusion_parity.py).

The denoiser is `model_fn(z, t) -> prediction`: z `(B, ...)` float32 latents (NHWC for images), t `(B,)` int32,
the prediction of the schedule's `prediction_type`. Call the samplers inside `jax.jit`.

    ddpm_sample(model_fn, schedule, x_T, key, *, num_steps=1000, spacing="leading", ...)
        diffusers' DDPMScheduler (fixed_small variance)
    ddim_sample(model_fn, schedule, x_T, key=None, *, num_steps, eta=0.0, spacing="leading",
                set_alpha_to_one=True, ...)
        diffusers' DDIMScheduler
    ddim_invert(model_fn, schedule, x_0, *, num_steps, spacing="leading", set_alpha_to_one=True,
                fixed_point_iterations=0, ...)
        diffusers' DDIMInverseScheduler (0 iterations), or exact fixed-point inversion
    unipc_sample(model_fn, schedule, x_T, key=None, *, num_steps, spacing="linspace", ...)
        diffusers' UniPCMultistepScheduler (solver_order 2, bh2, predict_x0, lower_order_final)
    dpm_solver_sample(model_fn, schedule, x_T, key=None, *, num_steps, spacing="linspace", ...)
        diffusers' DPMSolverMultistepScheduler (dpmsolver++, solver_order 2, midpoint)

Arguments shared by the samplers that denoise:
    x_T: `(B, ...)` standard Gaussian noise: the starting latent, or the noise that re-noises `init_latent`.
    key: PRNG key of the stochastic samplers (DDPM, DDIM with eta > 0); step i draws
        `jax.random.normal(jax.random.split(key, steps_run)[i], x.shape)`. The deterministic solvers take it
        too, unused, so that every sampler is called `sampler(model_fn, schedule, x_T, key, **settings)`.
    spacing, steps_offset: the timestep grid (`editdiff.diffusion.timesteps`), as the scheduler's config.
    init_latent, strength: SDEdit / img2img: start from `init_latent` `(B, ...)` re-noised with x_T to the
        first of the last int(num_steps * strength) steps, and run only those.
    known_latent, known_mask: inpainting by blending: after every step the latent becomes
        `mask * q(known_latent at the noise level the step landed on, noise x_T) + (1 - mask) * latent`;
        mask `(B, ..., 1)` or full shape, 1 where the known latent is kept. The level landed on is the next
        grid timestep's for DDPM and the multistep solvers, but t - T // num_steps for DDIM (which differs
        from the next grid timestep under trailing and linspace spacing); after the last step it is the
        clean level (the known latent itself), or alpha_bar[0] for DDIM with set_alpha_to_one=False. UniPC
        also blends its corrected latent (at the level of the step's own timestep), which its corrector
        would otherwise recompute without the known region.
    return_trajectory: also return the latent after every step, stacked `(steps_run, B, ...)`.

`sampler_by_name` picks one from a config string (`editdiff.diffusion.config.sampler_settings` gives its
keyword arguments, `TIMESTEP_GRIDS` its timestep grid); `classifier_free_guidance` turns a conditional /
unconditional denoiser pair into a `model_fn`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from editdiff.diffusion.parameterisation import x0_and_eps_at
from editdiff.diffusion.schedules import NoiseSchedule
from editdiff.diffusion.timesteps import (
    denoising_timesteps,
    first_step_for_strength,
    inversion_timesteps,
    multistep_timesteps,
)

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
Result = jax.Array | tuple[jax.Array, jax.Array]


def classifier_free_guidance(
    conditional_and_unconditional_fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
    guidance_scale: float,
) -> ModelFn:
    """A `model_fn` returning `uncond + guidance_scale * (cond - uncond)` (Ho & Salimans 2022).

    `conditional_and_unconditional_fn(z, t) -> (cond, uncond)` may run both branches as one doubled batch.
    """

    def guided(z: jax.Array, t: jax.Array) -> jax.Array:
        conditional, unconditional = conditional_and_unconditional_fn(z, t)
        return unconditional + guidance_scale * (conditional - unconditional)

    return guided


# ---------------------------------------------------------------------------------------------------------
# What every sampler shares: the starting latent, the known-region blend, the per-step noise, the scan.


class _KnownRegion(NamedTuple):
    latent: jax.Array
    mask: jax.Array
    noise: jax.Array


def _known_region(known_latent, known_mask, noise) -> _KnownRegion | None:
    if (known_latent is None) != (known_mask is None):
        raise ValueError("known_latent and known_mask go together: pass both or neither")
    if known_latent is None:
        return None
    return _KnownRegion(known_latent.astype(noise.dtype), known_mask.astype(noise.dtype), noise)


def _blend_known(x: jax.Array, known: _KnownRegion | None, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """Replaces the known region of x by the known latent noised to the scales (alpha, sigma) of x's level."""
    if known is None:
        return x
    noisy_known = alpha * known.latent + sigma * known.noise
    return known.mask * noisy_known + (1.0 - known.mask) * x


def _start_latent(x_T: jax.Array, init_latent: jax.Array | None, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """Pure noise x_T, or init_latent re-noised with x_T to the first step's scales (SDEdit / img2img)."""
    x_T = x_T.astype(jnp.float32)
    if init_latent is None:
        return x_T
    return alpha * init_latent.astype(jnp.float32) + sigma * x_T


def _first_step(num_steps: int, init_latent: jax.Array | None, strength: float) -> int:
    if init_latent is None:
        if strength != 1.0:
            raise ValueError(f"strength={strength} needs init_latent (the clean latent to re-noise)")
        return 0
    return first_step_for_strength(num_steps, strength)


def _step_keys(key: jax.Array | None, steps_run: int, sampler: str) -> jax.Array:
    if key is None:
        raise ValueError(f"{sampler} draws noise at every step: pass a PRNG key")
    return jax.random.split(key, steps_run)


def _model_prediction(model_fn: ModelFn, z: jax.Array, t: jax.Array) -> jax.Array:
    """The denoiser at (z, every example at timestep t), as float32 whatever its compute dtype."""
    return model_fn(z, jnp.full((z.shape[0],), t, dtype=jnp.int32)).astype(jnp.float32)


def _scan(body, init, xs, return_trajectory: bool):
    """lax.scan of `body(carry, step_inputs) -> (carry, latent)`; the latents stacked if asked for."""

    def scan_body(carry, step_inputs):
        carry, latent = body(carry, step_inputs)
        return carry, (latent if return_trajectory else None)

    return jax.lax.scan(scan_body, init, xs)


def _result(x: jax.Array, trajectory, return_trajectory: bool) -> Result:
    return (x, trajectory) if return_trajectory else x


# ---------------------------------------------------------------------------------------------------------
# DDPM and DDIM: one model call per step, closed-form update between two alpha_bar levels.


def _ddpm_ddim_levels(schedule: NoiseSchedule, timesteps: np.ndarray, previous: np.ndarray, final_alpha_bar):
    """alpha_bar at each step's timestep and at its previous timestep (`final_alpha_bar` where it is < 0)."""
    alpha_bar = schedule.alphas_cumprod[timesteps]
    alpha_bar_prev = jnp.where(previous >= 0, schedule.alphas_cumprod[np.maximum(previous, 0)], final_alpha_bar)
    return alpha_bar, alpha_bar_prev


def ddim_update(
    x0: jax.Array, eps: jax.Array, alpha_bar_next: jax.Array, std: jax.Array | float = 0.0, noise=None
) -> jax.Array:
    """DDIM's move to the level alpha_bar_next (Song et al. 2021, eq. 12): sqrt(alpha_bar_next) x_0 +
    sqrt(1 - alpha_bar_next - std^2) eps (+ std * noise). Also DDIM inversion's step, with std 0."""
    x = alpha_bar_next**0.5 * x0 + (1.0 - alpha_bar_next - std**2) ** 0.5 * eps
    return x if noise is None else x + std * noise


def ddim_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,
    key: jax.Array | None = None,
    *,
    num_steps: int,
    eta: float = 0.0,
    spacing: str = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    init_latent: jax.Array | None = None,
    strength: float = 1.0,
    known_latent: jax.Array | None = None,
    known_mask: jax.Array | None = None,
    return_trajectory: bool = False,
) -> Result:
    """DDIM sampling (diffusers' DDIMScheduler, clip_sample off) from x_T `(B, ...)` to x_0 `(B, ...)`.

    eta: 0 for the deterministic ODE sampler, 1 for DDPM-like variance (needs `key`).
    set_alpha_to_one: the level after the last step is alpha_bar = 1 (True) or alpha_bar[0] (False, SD).
    As diffusers does, each step goes down by num_train_timesteps // num_steps whatever the spacing.
    """
    T = schedule.num_train_timesteps
    timesteps = denoising_timesteps(T, num_steps, spacing, steps_offset)
    final_alpha_bar = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
    alpha_bar, alpha_bar_prev = _ddpm_ddim_levels(schedule, timesteps, timesteps - T // num_steps, final_alpha_bar)
    first = _first_step(num_steps, init_latent, strength)
    alpha, sigma = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    std = eta * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
    steps_run = num_steps - first
    keys = _step_keys(key, steps_run, "ddim_sample with eta > 0") if eta > 0 else None
    known = _known_region(known_latent, known_mask, x_T.astype(jnp.float32))

    def step(x, inputs):
        t, a, s, a_bar_prev, std_t, step_key = inputs
        x0, eps = x0_and_eps_at(schedule.prediction_type, a, s, x, _model_prediction(model_fn, x, t))
        noise = None if step_key is None else jax.random.normal(step_key, x.shape, x.dtype)
        x = ddim_update(x0, eps, a_bar_prev, std_t, noise)
        x = _blend_known(x, known, a_bar_prev**0.5, (1.0 - a_bar_prev) ** 0.5)  # the level x landed on
        return x, x

    xs = (timesteps[first:], alpha[first:], sigma[first:], alpha_bar_prev[first:], std[first:], keys)
    x, trajectory = _scan(step, _start_latent(x_T, init_latent, alpha[first], sigma[first]), xs, return_trajectory)
    return _result(x, trajectory, return_trajectory)


def ddim_invert(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x_0: jax.Array,
    *,
    num_steps: int,
    spacing: str = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    fixed_point_iterations: int = 0,
    return_trajectory: bool = False,
) -> Result:
    """DDIM inversion: x_0 `(B, ...)` to the x_T `(B, ...)` from which DDIM sampling with the same num_steps,
    spacing, steps_offset and set_alpha_to_one (and eta 0) returns to x_0.

    Step i moves from the level of timesteps[i] - T // num_steps (alpha_bar = 1 or alpha_bar[0] below 0, per
    set_alpha_to_one) up to the level of timesteps[i], with the denoiser evaluated at timesteps[i]. With
    fixed_point_iterations = 0 this is diffusers' DDIMInverseScheduler (clip_sample off): the denoiser sees the
    latent of the lower level and its output is read with that level's scales, so the round trip is only
    first-order exact (error ~ 1 / num_steps). One exception keeps it finite where diffusers returns NaN: from
    the clean level (sigma = 0, set_alpha_to_one) an x_0 prediction says nothing about eps there, so that
    first pass reads the output with the upper level's scales, as the later passes do. Each further iteration
    re-evaluates the denoiser at the current estimate of the upper latent, reads eps there and takes x_0 from
    the known lower latent (fixed-point inversion, Pan et al. 2023); this converges to the exact inverse of
    the DDIM sampling step for every prediction type, at one more denoiser call per step and iteration.
    """
    if fixed_point_iterations < 0:
        raise ValueError(f"fixed_point_iterations={fixed_point_iterations} must be >= 0")
    T = schedule.num_train_timesteps
    timesteps = inversion_timesteps(T, num_steps, spacing, steps_offset)
    initial_alpha_bar = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
    source = np.minimum(timesteps - T // num_steps, T - 1)
    alpha_bar_next, alpha_bar = _ddpm_ddim_levels(schedule, timesteps, source, initial_alpha_bar)
    prediction_type = schedule.prediction_type

    def step(x, inputs):
        t, a_bar, a_bar_next = inputs
        a, s, a_next, s_next = a_bar**0.5, (1.0 - a_bar) ** 0.5, a_bar_next**0.5, (1.0 - a_bar_next) ** 0.5
        # Reading an x_0 prediction at the lower level divides by its sigma.
        first_pass_reads_lower = s > 0 if prediction_type == "sample" else True

        def refine(iteration, estimate):
            prediction = _model_prediction(model_fn, estimate, t)

            def read_at_lower_level():  # diffusers' reading; the estimate is still x
                return x0_and_eps_at(prediction_type, a, s, x, prediction)

            def read_at_upper_level():
                eps = x0_and_eps_at(prediction_type, a_next, s_next, estimate, prediction)[1]
                return (x - s * eps) / a, eps

            x0, eps = jax.lax.cond((iteration == 0) & first_pass_reads_lower, read_at_lower_level,
                                   read_at_upper_level)
            return ddim_update(x0, eps, a_bar_next)

        x = jax.lax.fori_loop(0, fixed_point_iterations + 1, refine, x)
        return x, x

    x, trajectory = _scan(step, x_0.astype(jnp.float32), (timesteps, alpha_bar, alpha_bar_next), return_trajectory)
    return _result(x, trajectory, return_trajectory)


def ddpm_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,
    key: jax.Array,
    *,
    num_steps: int = 1000,
    spacing: str = "leading",
    steps_offset: int = 0,
    init_latent: jax.Array | None = None,
    strength: float = 1.0,
    known_latent: jax.Array | None = None,
    known_mask: jax.Array | None = None,
    return_trajectory: bool = False,
) -> Result:
    """Ancestral DDPM sampling (diffusers' DDPMScheduler: fixed_small variance, clip_sample off) from x_T
    `(B, ...)` to x_0 `(B, ...)`; with num_steps < T each step jumps to the next timestep of the grid."""
    timesteps = denoising_timesteps(schedule.num_train_timesteps, num_steps, spacing, steps_offset)
    previous = np.append(timesteps[1:], -1)
    alpha_bar, alpha_bar_prev = _ddpm_ddim_levels(schedule, timesteps, previous, 1.0)
    first = _first_step(num_steps, init_latent, strength)
    alpha, sigma = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    known = _known_region(known_latent, known_mask, x_T.astype(jnp.float32))

    def step(x, inputs):
        t, a_bar, a_bar_prev, step_key = inputs
        x0, _ = x0_and_eps_at(
            schedule.prediction_type, a_bar**0.5, (1.0 - a_bar) ** 0.5, x, _model_prediction(model_fn, x, t)
        )
        # The posterior q(x_prev | x_t, x_0) (Ho et al. 2020, eqs. 6-7) between the two grid levels.
        alpha_t = a_bar / a_bar_prev
        beta_t = 1.0 - alpha_t
        mean = (a_bar_prev**0.5 * beta_t / (1.0 - a_bar)) * x0 + (alpha_t**0.5 * (1.0 - a_bar_prev) / (1.0 - a_bar)) * x
        variance = jnp.maximum((1.0 - a_bar_prev) / (1.0 - a_bar) * beta_t, 1e-20)
        noise = jax.random.normal(step_key, x.shape, x.dtype)
        x = mean + jnp.where(t > 0, variance**0.5, 0.0) * noise
        x = _blend_known(x, known, a_bar_prev**0.5, (1.0 - a_bar_prev) ** 0.5)
        return x, x

    keys = _step_keys(key, num_steps - first, "ddpm_sample")
    xs = (timesteps[first:], alpha_bar[first:], alpha_bar_prev[first:], keys)
    x, trajectory = _scan(step, _start_latent(x_T, init_latent, alpha[first], sigma[first]), xs, return_trajectory)
    return _result(x, trajectory, return_trajectory)


# ---------------------------------------------------------------------------------------------------------
# Multistep solvers in log-SNR time: lambda = log(alpha / sigma), data prediction (x_0) history of order 2.


class _SolverGrid(NamedTuple):
    """The solver's N + 1 grid points (the N timesteps, then the clean level sigma = 0) as per-point float32
    `(N + 1,)` arrays: signal scale alpha, noise scale sigma and log-SNR lam = log(alpha / sigma)."""

    alpha: jax.Array
    sigma: jax.Array
    lam: jax.Array


def _solver_grid(schedule: NoiseSchedule, timesteps: np.ndarray) -> _SolverGrid:
    """The grid as diffusers' multistep schedulers hold it: through sigma_VE = sqrt((1 - alpha_bar) / alpha_bar),
    with final_sigmas_type "zero", and a zero-SNR last level nudged to alpha_bar = 2^-24 (finite sigma_VE)."""
    alphas_cumprod = jnp.where(schedule.alphas_cumprod == 0, 2.0**-24, schedule.alphas_cumprod)
    sigma_ve = jnp.append(jnp.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)[timesteps], 0.0)
    alpha = 1.0 / jnp.sqrt(sigma_ve**2 + 1.0)
    sigma = sigma_ve * alpha
    return _SolverGrid(alpha, sigma, jnp.log(alpha) - jnp.log(sigma))


class _SolverStep(NamedTuple):
    """Per-step inputs `(steps_run,)` of a multistep solver at step i (grid point i to grid point i + 1)."""

    t: np.ndarray  # the timestep of grid point i
    alpha: jax.Array  # scales of grid point i
    sigma: jax.Array
    alpha_next: jax.Array  # scales of grid point i + 1
    sigma_next: jax.Array
    sigma_ratio: jax.Array  # sigma_{i+1} / sigma_i
    h: jax.Array  # lam_{i+1} - lam_i
    r: jax.Array  # (lam_{i-1} - lam_i) / h; -1 (any finite value but 1) where the step is first order
    second_order: np.ndarray  # bool: the step uses the previous model output (not the first or last step)


def _solver_steps(grid: _SolverGrid, timesteps: np.ndarray, first: int) -> _SolverStep:
    """Steps first .. N-1; the first step run and the last step are first order (warm-up; final sigma 0)."""
    n = len(timesteps)
    i = np.arange(first, n)
    second_order = (i > first) & (i < n - 1)
    h = grid.lam[i + 1] - grid.lam[i]
    r = jnp.where(second_order, (grid.lam[np.maximum(i - 1, 0)] - grid.lam[i]) / h, -1.0)
    return _SolverStep(
        t=timesteps[i],
        alpha=grid.alpha[i],
        sigma=grid.sigma[i],
        alpha_next=grid.alpha[i + 1],
        sigma_next=grid.sigma[i + 1],
        sigma_ratio=grid.sigma[i + 1] / grid.sigma[i],
        h=h,
        r=r,
        second_order=second_order,
    )


def _prepare_solver(schedule, x_T, num_steps, spacing, steps_offset, init_latent, strength, known_latent, known_mask):
    """The per-step inputs of the steps run, the starting latent and the known region (or None)."""
    timesteps = multistep_timesteps(schedule.num_train_timesteps, num_steps, spacing, steps_offset)
    grid = _solver_grid(schedule, timesteps)
    first = _first_step(num_steps, init_latent, strength)
    known = _known_region(known_latent, known_mask, x_T.astype(jnp.float32))
    x = _start_latent(x_T, init_latent, grid.alpha[first], grid.sigma[first])
    return _solver_steps(grid, timesteps, first), x, known


def _unipc_bh2_coefficients(h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """UniPC's (h phi_1(h), B(h), b_1, b_2) for the data-prediction form with B(h) = expm1(-h) (bh2)
    (Zhao et al. 2023, Algorithms 1-2, as diffusers computes them)."""
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    h_phi_2 = h_phi_1 / hh - 1.0
    b_h = jnp.expm1(hh)
    b_1 = h_phi_2 / b_h
    b_2 = (h_phi_2 / hh - 0.5) * 2.0 / b_h
    return h_phi_1, b_h, b_1, b_2


def unipc_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,
    key: jax.Array | None = None,
    *,
    num_steps: int,
    spacing: str = "linspace",
    steps_offset: int = 0,
    init_latent: jax.Array | None = None,
    strength: float = 1.0,
    known_latent: jax.Array | None = None,
    known_mask: jax.Array | None = None,
    return_trajectory: bool = False,
) -> Result:
    """UniPC (Zhao et al. 2023) as diffusers' UniPCMultistepScheduler with its defaults (solver_order 2, bh2,
    predict_x0, lower_order_final, final sigma 0): x_T `(B, ...)` to x_0 `(B, ...)`, one model call per step.

    Step i first corrects the latent at grid point i with the new model output (UniC; not at the first step),
    then predicts grid point i + 1 (UniP). The trajectory holds the predicted latents, as the scheduler returns.
    """
    steps, x, known = _prepare_solver(
        schedule, x_T, num_steps, spacing, steps_offset, init_latent, strength, known_latent, known_mask
    )
    # The corrector at step i redoes step i - 1 (grid i-1 -> i) with that step's order and history.
    steps_run = len(steps.t)
    previous = np.maximum(np.arange(steps_run) - 1, 0)
    corrector = _SolverStep(*(field[previous] for field in steps))
    use_corrector = np.arange(steps_run) > 0

    def step(carry, inputs):
        x, last_sample, m_prev, m_prev2 = carry
        p, c, correct = inputs
        m = x0_and_eps_at(schedule.prediction_type, p.alpha, p.sigma, x, _model_prediction(model_fn, x, p.t))[0]

        h_phi_1, b_h, b_1, b_2 = _unipc_bh2_coefficients(c.h)
        rho_0 = (b_1 - b_2) / (1.0 - c.r)  # [[1, 1], [r, 1]] rho = [b_1, b_2], solved in closed form
        rho_last = jnp.where(c.second_order, b_1 - rho_0, 0.5)
        history = jnp.where(c.second_order, rho_0 * (m_prev2 - m_prev) / c.r, 0.0)
        corrected = c.sigma_ratio * last_sample - c.alpha_next * h_phi_1 * m_prev
        corrected = corrected - c.alpha_next * b_h * (history + rho_last * (m - m_prev))
        x = jnp.where(correct, _blend_known(corrected, known, p.alpha, p.sigma), x)

        h_phi_1, b_h, _, _ = _unipc_bh2_coefficients(p.h)
        predicted = p.sigma_ratio * x - p.alpha_next * h_phi_1 * m
        predicted = predicted - jnp.where(p.second_order, p.alpha_next * b_h * 0.5 * (m_prev - m) / p.r, 0.0)
        predicted = _blend_known(predicted, known, p.alpha_next, p.sigma_next)
        return (predicted, x, m, m_prev), predicted

    zeros = jnp.zeros_like(x)
    xs = (steps, corrector, use_corrector)
    (x, *_), trajectory = _scan(step, (x, zeros, zeros, zeros), xs, return_trajectory)
    return _result(x, trajectory, return_trajectory)


def dpm_solver_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,
    key: jax.Array | None = None,
    *,
    num_steps: int,
    spacing: str = "linspace",
    steps_offset: int = 0,
    init_latent: jax.Array | None = None,
    strength: float = 1.0,
    known_latent: jax.Array | None = None,
    known_mask: jax.Array | None = None,
    return_trajectory: bool = False,
) -> Result:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) as diffusers' DPMSolverMultistepScheduler with its
    defaults (dpmsolver++, solver_order 2, midpoint, final sigma 0): x_T `(B, ...)` to x_0 `(B, ...)`."""
    steps, x, known = _prepare_solver(
        schedule, x_T, num_steps, spacing, steps_offset, init_latent, strength, known_latent, known_mask
    )

    def step(carry, p):
        x, m_prev = carry
        m = x0_and_eps_at(schedule.prediction_type, p.alpha, p.sigma, x, _model_prediction(model_fn, x, p.t))[0]
        # With r_0 = h_{i-1} / h_i = -p.r, D_1 = (m - m_prev) / r_0 (the paper's first difference).
        d1 = (m_prev - m) / p.r
        decay = jnp.exp(-p.h) - 1.0
        x = p.sigma_ratio * x - (p.alpha_next * decay) * m
        x = x - jnp.where(p.second_order, 0.5 * (p.alpha_next * decay) * d1, 0.0)
        x = _blend_known(x, known, p.alpha_next, p.sigma_next)
        return (x, m), x

    (x, _), trajectory = _scan(step, (x, jnp.zeros_like(x)), steps, return_trajectory)
    return _result(x, trajectory, return_trajectory)


SAMPLERS: dict[str, Callable[..., Result]] = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "unipc": unipc_sample,
    "dpm_solver": dpm_solver_sample,
}

# The timestep grid each sampler runs (its first timestep is the first the denoiser sees), for config checks.
TIMESTEP_GRIDS: dict[str, Callable[..., np.ndarray]] = {
    "ddpm": denoising_timesteps,
    "ddim": denoising_timesteps,
    "unipc": multistep_timesteps,
    "dpm_solver": multistep_timesteps,
}


def sampler_by_name(name: str) -> Callable[..., Result]:
    """The sampler a config names, called `sampler(model_fn, schedule, x_T, key, **settings)`."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not supported; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
