"""Noise schedules, parameterisations, training losses and samplers for latent diffusion."""
from editdiff.diffusion.losses import diffusion_loss, min_snr_weights, noise_loss, sample_timesteps
from editdiff.diffusion.parameterisation import (
    q_sample,
    snr,
    training_target,
    velocity,
    x0_and_eps,
    x0_and_eps_at,
)
from editdiff.diffusion.samplers import (
    classifier_free_guidance,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    sampler_by_name,
    unipc_sample,
)
from editdiff.diffusion.schedules import NoiseSchedule, make_schedule, schedule_from_config
from editdiff.diffusion.timesteps import (
    denoising_timesteps,
    first_step_for_strength,
    inversion_timesteps,
    multistep_timesteps,
)
