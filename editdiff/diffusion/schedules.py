"""Discrete-time noise schedules (variance preserving), built from diffusers' scheduler config names.

`z_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps` for integer t in [0, num_train_timesteps). The
betas are computed on the host, in numpy, exactly as diffusers' schedulers compute them with torch (linspace,
squared linspace, the GLIDE cosine with beta capped at 0.999, and the zero-terminal-SNR rescale of Lin et al.
2023), so a schedule here and a diffusers scheduler with the same config hold bit-identical float32 arrays.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@struct.dataclass
class NoiseSchedule:
    """A noise schedule: per-timestep float32 arrays `(T,)` (pytree leaves) plus static settings.

    `prediction_type` says what the denoiser predicts: "epsilon" (the noise), "v_prediction"
    (`v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0`) or "sample" (x_0 itself).
    """

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    num_train_timesteps: int = struct.field(pytree_node=False)
    prediction_type: str = struct.field(pytree_node=False)


def _linspace_float32(start: float, end: float, num: int) -> np.ndarray:
    """torch.linspace(start, end, num, dtype=float32) bit for bit: a float32 step, the first half counted up
    from start and the second half down from end, each element rounded once (torch's CPU kernel uses a fused
    multiply-add, which the exact float64 product of two float32 values reproduces)."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(num - 1))
    index = np.arange(num, dtype=np.float64)
    up = np.float64(start32) + step * index
    down = np.float64(end32) - step * (num - 1 - index)
    return np.where(index < num // 2, up, down).astype(np.float32)


def _glide_cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The squaredcos_cap_v2 betas (Nichol & Dhariwal 2021, eq. 17), computed in float64 then cast."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = np.arange(num_train_timesteps)
    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in steps
    ]
    return np.asarray(betas, dtype=np.float32)


def _cumprod_float32(values: np.ndarray) -> np.ndarray:
    """torch.cumprod of a float32 array bit for bit: torch's CPU kernel accumulates in float64."""
    return np.cumprod(values.astype(np.float64)).astype(np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shifts and scales sqrt(alpha_bar) so that alpha_bar[-1] == 0 exactly and alpha_bar[0] is unchanged
    (Lin et al. 2023, Algorithm 1): the last training timestep then carries no signal."""
    alphas_bar_sqrt = np.sqrt(_cumprod_float32(1.0 - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1.0 - alphas).astype(np.float32)


def make_schedule(
    *,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    rescale_betas_zero_snr: bool = False,
    prediction_type: str = "epsilon",
) -> NoiseSchedule:
    """Builds a schedule; argument names, defaults and meanings are diffusers' scheduler config keys."""
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule={beta_schedule!r} is not supported; allowed: {', '.join(BETA_SCHEDULES)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; allowed: {', '.join(PREDICTION_TYPES)}"
        )
    if not (isinstance(num_train_timesteps, int) and num_train_timesteps > 1):
        raise ValueError(f"num_train_timesteps={num_train_timesteps!r} must be an integer > 1")

    if beta_schedule == "linear":
        betas = _linspace_float32(beta_start, beta_end, num_train_timesteps)
    elif beta_schedule == "scaled_linear":
        # Stable Diffusion's schedule: linear in sqrt(beta).
        betas = _linspace_float32(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    else:
        betas = _glide_cosine_betas(num_train_timesteps)
    if rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)

    alphas = (1.0 - betas).astype(np.float32)
    alphas_cumprod = _cumprod_float32(alphas)
    return NoiseSchedule(
        betas=jnp.asarray(betas),
        alphas=jnp.asarray(alphas),
        alphas_cumprod=jnp.asarray(alphas_cumprod),
        num_train_timesteps=num_train_timesteps,
        prediction_type=prediction_type,
    )


_SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "rescale_betas_zero_snr",
    "prediction_type",
)


def schedule_from_config(config: Mapping[str, Any]) -> NoiseSchedule:
    """A schedule from a diffusers `scheduler_config.json` dict or an ml_collections ConfigDict.

    Only the schedule keys are read (sampler settings such as `timestep_spacing` or `steps_offset` are the
    sampler's arguments); `trained_betas` is refused rather than silently ignored.
    """
    if config.get("trained_betas") is not None:
        raise ValueError("trained_betas is set; only the named beta_schedule values are supported")
    return make_schedule(**{key: config[key] for key in _SCHEDULE_KEYS if key in config})
