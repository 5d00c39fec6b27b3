"""Inference timestep grids, exactly as diffusers' `set_timesteps` builds them (host-side numpy, static).

The spacings are those of Lin et al. 2023, Table 2: "leading" (multiples of T // n, plus `steps_offset`),
"trailing" (counting down from T - 1, so the first step sees the last training timestep) and "linspace"
(rounded evenly spaced). The one-step samplers (DDPM, DDIM) and the multistep solvers (UniPC, DPM-Solver)
space differently in diffusers (the solvers lay n + 1 points and drop the last), so both grids are here.
"""
from __future__ import annotations

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")
INVERSION_SPACINGS = ("leading", "trailing")  # DDIMInverseScheduler has no linspace


def _check(num_train_timesteps: int, num_steps: int, spacing: str, allowed: tuple[str, ...] = SPACINGS) -> None:
    if spacing not in allowed:
        raise ValueError(f"spacing={spacing!r} is not supported here; allowed: {', '.join(allowed)}")
    if not 0 < num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps={num_steps} must be in [1, num_train_timesteps={num_train_timesteps}]")


def denoising_timesteps(num_train_timesteps: int, num_steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """Descending int64 timesteps `(num_steps,)` of DDPMScheduler / DDIMScheduler.set_timesteps."""
    _check(num_train_timesteps, num_steps, spacing)
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_steps).round()[::-1].astype(np.int64)
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        return (np.arange(num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
    ratio = num_train_timesteps / num_steps
    return np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64) - 1


def multistep_timesteps(num_train_timesteps: int, num_steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """Descending int64 timesteps `(num_steps,)` of UniPCMultistepScheduler / DPMSolverMultistepScheduler."""
    _check(num_train_timesteps, num_steps, spacing)
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = num_train_timesteps // (num_steps + 1)
        return (np.arange(num_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + steps_offset
    ratio = num_train_timesteps / num_steps
    return np.arange(num_train_timesteps, 0, -ratio).round().astype(np.int64) - 1


def inversion_timesteps(num_train_timesteps: int, num_steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """Ascending int64 timesteps `(num_steps,)` of DDIMInverseScheduler.set_timesteps (leading / trailing)."""
    _check(num_train_timesteps, num_steps, spacing, allowed=INVERSION_SPACINGS)
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        return (np.arange(num_steps) * ratio).round().astype(np.int64) + steps_offset
    ratio = num_train_timesteps / num_steps
    return np.round(np.arange(num_train_timesteps, 0, -ratio)[::-1]).astype(np.int64) - 1


def first_step_for_strength(num_steps: int, strength: float) -> int:
    """Index of the first step run when starting from a clean latent re-noised to `strength` in (0, 1]
    (SDEdit / img2img), as diffusers' img2img pipelines compute it: the last int(num_steps * strength) steps."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength={strength} must be in (0, 1]")
    kept = min(int(num_steps * strength), num_steps)
    if kept == 0:
        raise ValueError(f"strength={strength} keeps no step of num_steps={num_steps}; raise one of them")
    return num_steps - kept
