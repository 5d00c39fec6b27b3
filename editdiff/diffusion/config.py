"""The `config.diffusion` and `config.sampler` sections every latent-diffusion method shares: their defaults,
their validation (`editdiff.config_checks.Section`s) and the keyword arguments they give the library.

    config.diffusion                 the noise schedule (diffusers' scheduler config keys, which
                                     `schedule_from_config` reads) and the training loss (`loss_settings`)
      num_train_timesteps            T: the training timesteps are 0 .. T - 1
      beta_schedule                  "linear" | "scaled_linear" (Stable Diffusion's) | "squaredcos_cap_v2"
      beta_start, beta_end           in (0, 1) (a beta of 0 or >= 1 gives a zero noise or zero signal level)
      rescale_betas_zero_snr         rescale so that alpha_bar[T - 1] = 0 exactly (Lin et al. 2023)
      prediction_type                "epsilon" | "v_prediction" | "sample" (x_0)
      loss                           "l1" | "l2": the norm of the noise loss
      loss_space                     "prediction" (the error of the prediction type's own target) | "x0" (the
                                     error of the x_0 the prediction implies; `losses.diffusion_loss`)
      min_snr_gamma                  the gamma of min-SNR weighting; 0 = uniform weighting
    config.sampler                   how a method denoises at sampling time (`sampler_settings`)
      name                           "ddim" | "ddpm" | "unipc" | "dpm_solver"
      num_steps                      denoiser calls, at most T
      eta                            DDIM's noise scale in [0, 1]; 0 for the other samplers (they have none)
      spacing                        the timestep grid: "leading" | "trailing" | "linspace"
      steps_offset                   added to the leading grid (1 in Stable Diffusion's scheduler config)
      set_alpha_to_one               DDIM: the last step lands on alpha_bar = 1 (True) or alpha_bar[0] (False, SD)
      blend_known_region             read by the method: whether it passes a known latent and mask to the sampler
      fixed_point_iterations         only in a section made with inversion=True: `ddim_invert`'s (>= 0)

The defaults are configs/multitask.py's: Stable Diffusion's schedule, epsilon prediction, DDIM with 50 leading
steps, and the multitask paper's L1 loss (the other methods' papers train with "l2": their configs set it).

DDIM inversion (`inversion_settings`) has no step count of its own: it runs the sampler section's num_steps,
spacing, steps_offset and set_alpha_to_one, the grid on which DDIM sampling with eta = 0 returns to the input.

The cross-key rules refuse the valid-looking combinations that the samplers cannot run: more steps than
training timesteps; a steps_offset that pushes the grid past T - 1 (JAX would silently clamp the index); a
multistep-solver grid that repeats a timestep (num_steps = T with leading or linspace spacing: a zero log-SNR
step, divided by); and epsilon prediction with a zero-terminal-SNR schedule on a grid containing T - 1, where
x_0 = (z - sigma eps) / alpha is 0/0 (DDIM and DDPM return NaN; UniPC and DPM-Solver nudge alpha_bar to 2^-24,
as diffusers does, and multiply the denoiser's error by 1 / alpha = 4096 instead).
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from editdiff import config_checks as checks
from editdiff.diffusion.losses import LOSS_NORMS, LOSS_SPACES
from editdiff.diffusion.samplers import SAMPLERS, TIMESTEP_GRIDS
from editdiff.diffusion.schedules import BETA_SCHEDULES, PREDICTION_TYPES
from editdiff.diffusion.timesteps import INVERSION_SPACINGS, SPACINGS, first_step_for_strength, inversion_timesteps


def default_diffusion_config() -> ml_collections.ConfigDict:
    """`config.diffusion` with its defaults (see the module docstring)."""
    return ml_collections.ConfigDict(dict(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        rescale_betas_zero_snr=False, prediction_type="epsilon", loss="l1", loss_space="prediction",
        min_snr_gamma=0.0,
    ))


def default_sampler_config(*, inversion: bool = False) -> ml_collections.ConfigDict:
    """`config.sampler` with its defaults; with `inversion`, also `fixed_point_iterations` (0: diffusers')."""
    config = ml_collections.ConfigDict(dict(
        name="ddim", num_steps=50, eta=0.0, spacing="leading", steps_offset=0, set_alpha_to_one=True,
        blend_known_region=False,
    ))
    if inversion:
        config.fixed_point_iterations = 0
    return config


_OPEN_UNIT_INTERVAL: checks.Check = ((lambda v: checks.is_number(v) and 0 < v < 1), "a number in (0, 1)")

_DIFFUSION_CHECKS: dict[str, checks.Check] = {
    "num_train_timesteps": checks.int_at_least(2),
    "beta_schedule": checks.one_of(BETA_SCHEDULES),
    "beta_start": _OPEN_UNIT_INTERVAL,
    "beta_end": _OPEN_UNIT_INTERVAL,
    "rescale_betas_zero_snr": checks.BOOLEAN,
    "prediction_type": checks.one_of(PREDICTION_TYPES),
    "loss": checks.one_of(LOSS_NORMS),
    "loss_space": checks.one_of(LOSS_SPACES),
    "min_snr_gamma": checks.number_at_least(0),
}

_SAMPLER_CHECKS: dict[str, checks.Check] = {
    "name": checks.one_of(tuple(SAMPLERS)),
    "num_steps": checks.int_at_least(1),
    "eta": checks.number_in(0, 1),
    "spacing": checks.one_of(SPACINGS),
    "steps_offset": checks.int_at_least(0),
    "set_alpha_to_one": checks.BOOLEAN,
    "blend_known_region": checks.BOOLEAN,
}


def diffusion_section(prefix: str = "diffusion") -> checks.Section:
    """The checks of `config.PREFIX` (closed: an unknown key is an error), and the rule that an epsilon
    denoiser's x_0-space loss needs a nonzero terminal SNR (its x_0 error scale s / a is infinite where a = 0)."""
    def rule(config: ml_collections.ConfigDict) -> list[str]:
        diffusion = checks.lookup(config, prefix)
        if diffusion.loss_space == "x0" and diffusion.prediction_type == "epsilon" and diffusion.rescale_betas_zero_snr:
            return [f"config.{prefix}.loss_space = 'x0' is invalid; allowed: 'prediction' with "
                    f"config.{prefix}.prediction_type = 'epsilon' and rescale_betas_zero_snr = True (x_0 = "
                    f"(z - sigma eps) / alpha is 0/0 at the last training timestep, where alpha = 0)"]
        return []

    return checks.Section(prefix, _DIFFUSION_CHECKS, rules=(rule,))


def sampler_section(
    prefix: str = "sampler", diffusion_prefix: str = "diffusion", *, inversion: bool = False,
    start_strength: str | None = None,
) -> checks.Section:
    """The checks of `config.PREFIX` (closed), with the cross-key rules against the schedule at
    `config.DIFFUSION_PREFIX` (run once both sections' own checks pass). With `inversion`, the section also
    holds `fixed_point_iterations` and its spacing must be one DDIM inversion has (leading, trailing). With
    `start_strength`, the section also holds that key: a method's SDEdit start, in (0, 1] — the sampler starts
    from a clean latent the method chooses, re-noised so that the last int(num_steps * strength) steps run
    (1: from pure noise) — and it must keep at least one step."""
    table = dict(_SAMPLER_CHECKS)
    if inversion:
        table |= {"spacing": checks.one_of(INVERSION_SPACINGS), "fixed_point_iterations": checks.int_at_least(0)}
    if start_strength:
        table[start_strength] = ((lambda v: checks.is_number(v) and 0 < v <= 1), "a number in (0, 1]")

    def rule(config: ml_collections.ConfigDict) -> list[str]:
        if diffusion_section(diffusion_prefix).problems(config):
            return []  # the diffusion section reports those; the rules need its values valid
        return _grid_problems(checks.lookup(config, prefix), checks.lookup(config, diffusion_prefix),
                              f"config.{prefix}", f"config.{diffusion_prefix}", inversion)

    def kept_steps(config: ml_collections.ConfigDict) -> list[str]:
        sampler = checks.lookup(config, prefix)
        strength = sampler[start_strength]
        try:
            first_step_for_strength(sampler.num_steps, strength)
        except ValueError:  # the strength keeps no step of the grid
            return [f"config.{prefix}.{start_strength} = {strength!r} is invalid; allowed: at least 1 / "
                    f"config.{prefix}.num_steps = {1 / sampler.num_steps:g} (it would run no step of "
                    f"{sampler.num_steps})"]
        return []

    return checks.Section(prefix, table, rules=(rule, kept_steps) if start_strength else (rule,))


def _grid_problems(sampler, diffusion, s: str, d: str, inversion: bool) -> list[str]:
    """The cross-key rules of the module docstring; `s`, `d`: the two sections' names in messages."""
    problems = []
    T, n, name, spacing, offset = (diffusion.num_train_timesteps, sampler.num_steps, sampler.name,
                                   sampler.spacing, sampler.steps_offset)
    if sampler.eta != 0 and name != "ddim":
        problems.append(f"{s}.eta = {sampler.eta!r} is invalid; allowed: 0 with {s}.name = {name!r} "
                        f"(only DDIM has an eta)")
    if n > T:
        return problems + [f"{s}.num_steps = {n} is invalid; allowed: at most {d}.num_train_timesteps = {T}"]

    grid_of = TIMESTEP_GRIDS[name]
    grid = grid_of(T, n, spacing, offset)
    last = max(int(grid.max()), int(inversion_timesteps(T, n, spacing, offset).max()) if inversion else 0)
    if last > T - 1:
        problems.append(f"{s}.steps_offset = {offset} is invalid; allowed: at most {offset - (last - (T - 1))} "
                        f"with {s}.num_steps = {n} and spacing {spacing!r} (the grid would reach timestep {last}, "
                        f"past {d}.num_train_timesteps - 1 = {T - 1})")
    if len(np.unique(grid)) < len(grid):
        fewer = next(m for m in range(n - 1, 0, -1) if len(np.unique(grid_of(T, m, spacing, offset))) == m)
        problems.append(f"{s}.num_steps = {n} is invalid; allowed: at most {fewer} with {s}.name = {name!r} and "
                        f"spacing {spacing!r} (its grid would repeat a timestep: a zero log-SNR step, divided by)")
    if diffusion.rescale_betas_zero_snr and diffusion.prediction_type == "epsilon" and T - 1 in grid:
        problems.append(
            f"{d}.prediction_type = 'epsilon' is invalid; allowed: 'v_prediction' or 'sample' with "
            f"{d}.rescale_betas_zero_snr = True and a grid containing the last training timestep ({s}.name = "
            f"{name!r}, spacing {spacing!r}, num_steps {n}): alpha_bar[{T - 1}] = 0 there, so x_0 = "
            f"(z - sigma eps) / alpha is 0/0; or keep 'epsilon' on a {s}.spacing = 'leading' grid that stops "
            f"short of timestep {T - 1}")
    return problems


def sampler_settings(sampler: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword arguments `samplers.sampler_by_name(sampler.name)` takes from a sampler section: num_steps,
    spacing and steps_offset, plus eta and set_alpha_to_one for DDIM. (`blend_known_region` is the method's:
    it decides whether to pass known_latent and known_mask.)"""
    settings = dict(num_steps=sampler.num_steps, spacing=sampler.spacing, steps_offset=sampler.steps_offset)
    if sampler.name == "ddim":
        settings |= dict(eta=sampler.eta, set_alpha_to_one=sampler.set_alpha_to_one)
    return settings


def inversion_settings(sampler: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword arguments of `samplers.ddim_invert` from a sampler section made with inversion=True: the
    sampler's grid (so DDIM sampling with eta = 0 returns to the input) and fixed_point_iterations."""
    return dict(num_steps=sampler.num_steps, spacing=sampler.spacing, steps_offset=sampler.steps_offset,
                set_alpha_to_one=sampler.set_alpha_to_one, fixed_point_iterations=sampler.fixed_point_iterations)


def loss_settings(diffusion: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword arguments of `losses.diffusion_loss` from a diffusion section: norm, space, and min_snr_gamma
    (None, uniform weighting, for the section's 0)."""
    return dict(norm=diffusion.loss, space=diffusion.loss_space, min_snr_gamma=diffusion.min_snr_gamma or None)


def diffusers_scheduler_config(diffusion: ml_collections.ConfigDict,
                               sampler: ml_collections.ConfigDict) -> dict[str, Any]:
    """A diffusers `scheduler/scheduler_config.json` (DDIMScheduler) holding the schedule and the sampler's
    grid, so that an exported model samples in diffusers as it does here."""
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "rescale_betas_zero_snr",
            "prediction_type")
    return {"_class_name": "DDIMScheduler", "clip_sample": False, "timestep_spacing": sampler.spacing,
            "steps_offset": sampler.steps_offset, "set_alpha_to_one": sampler.set_alpha_to_one,
            **{key: diffusion[key] for key in keys}}
