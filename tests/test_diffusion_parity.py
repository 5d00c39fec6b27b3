"""Step-by-step parity of our samplers with diffusers' PyTorch schedulers driven by the same scripted model.

The scripted denoiser is a smooth nonlinear function of (z, t) built from + - * / only, so PyTorch and XLA
evaluate it to the same float32 values; every intermediate latent must agree within 1e-5. Each sampler runs
three configurations that together cover every beta schedule, prediction type and timestep spacing (and the
zero-terminal-SNR rescale, steps_offset and set_alpha_to_one), with 10 steps.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from editdiff.diffusion import samplers  # noqa: E402
from editdiff.diffusion.schedules import make_schedule  # noqa: E402

NUM_STEPS = 10
TOLERANCE = 1e-5

# (schedule config, spacing config): diffusers' key names, so both sides are built from the same dicts.
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CASES = {
    "linear-epsilon-leading": (
        dict(beta_schedule="linear", prediction_type="epsilon"),
        dict(timestep_spacing="leading", steps_offset=1),
    ),
    "scaled_linear-zero_snr-v-trailing": (
        dict(**SD_BETAS, rescale_betas_zero_snr=True, prediction_type="v_prediction"),
        dict(timestep_spacing="trailing", steps_offset=0),
    ),
    "cosine-sample-linspace": (
        dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample"),
        dict(timestep_spacing="linspace", steps_offset=0),
    ),
}
# DDIMInverseScheduler has no linspace spacing.
INVERSION_CASES = {
    "linear-epsilon-leading": CASES["linear-epsilon-leading"],
    "scaled_linear-zero_snr-v-trailing": CASES["scaled_linear-zero_snr-v-trailing"],
    "cosine-sample-leading": (CASES["cosine-sample-linspace"][0], dict(timestep_spacing="leading", steps_offset=0)),
}


def scripted_prediction(z, t):
    """A denoiser output that depends on both z and t, nonlinear in z, close to z at small t (a plausible x_0,
    epsilon or v there, so no parameterisation blows the latents up); works on torch and jax arrays."""
    c = 1.0 - t / 2000.0
    return c * z + (1.0 - c) * z * z / (1.0 + z * z)


def jax_model(z, t):
    return scripted_prediction(z, t.astype(jnp.float32).reshape((-1,) + (1,) * (z.ndim - 1)))


def torch_model(z, t):
    return scripted_prediction(z, torch.tensor(float(t), dtype=torch.float32))


@pytest.fixture(scope="module")
def x_T():
    return np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)


def torch_trajectory(scheduler, x, step_kwargs=lambda i: {}, first=0):
    """The latent after every scheduler step from step `first` on, stacked `(steps, ...)`."""
    x = torch.from_numpy(x.copy())
    trajectory = []
    for i, t in enumerate(scheduler.timesteps[first:]):
        x = scheduler.step(torch_model(x, t), t, x, **step_kwargs(i)).prev_sample
        trajectory.append(x.numpy())
    return np.stack(trajectory)


def step_noises(key, shape):
    """The per-step noise our stochastic samplers draw (documented in editdiff.diffusion.samplers)."""
    return np.stack([np.asarray(jax.random.normal(k, shape)) for k in jax.random.split(key, NUM_STEPS)])


def assert_trajectories_match(ours, theirs):
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape
    assert np.all(np.isfinite(theirs))
    error_per_step = np.abs(ours - theirs).reshape(len(ours), -1).max(axis=1)
    assert error_per_step.max() < TOLERANCE, f"max |ours - diffusers| per step: {error_per_step}"


def run_ours(sampler, schedule_config, spacing_config, x_T, **kwargs):
    schedule = make_schedule(**schedule_config)
    fn = jax.jit(
        lambda x: sampler(
            jax_model,
            schedule,
            x,
            num_steps=NUM_STEPS,
            spacing=spacing_config["timestep_spacing"],
            steps_offset=spacing_config["steps_offset"],
            return_trajectory=True,
            **kwargs,
        )[1]
    )
    return fn(jnp.asarray(x_T))


@pytest.mark.parametrize("case", CASES)
def test_ddpm_matches_diffusers(case, x_T, monkeypatch):
    schedule_config, spacing_config = CASES[case]
    key = jax.random.key(7)
    noises = iter(torch.from_numpy(n) for n in step_noises(key, x_T.shape))
    monkeypatch.setattr(diffusers.schedulers.scheduling_ddpm, "randn_tensor", lambda *a, **k: next(noises))
    scheduler = diffusers.DDPMScheduler(**schedule_config, **spacing_config, clip_sample=False)
    scheduler.set_timesteps(NUM_STEPS)
    theirs = torch_trajectory(scheduler, x_T)
    ours = run_ours(lambda *a, **k: samplers.ddpm_sample(*a, key, **k), schedule_config, spacing_config, x_T)
    assert_trajectories_match(ours, theirs)


@pytest.mark.parametrize(
    "case, eta, set_alpha_to_one",
    [("linear-epsilon-leading", 0.0, False), ("scaled_linear-zero_snr-v-trailing", 0.0, True),
     ("cosine-sample-linspace", 0.6, True)],
)
def test_ddim_matches_diffusers(case, eta, set_alpha_to_one, x_T):
    schedule_config, spacing_config = CASES[case]
    key = jax.random.key(3)
    noises = step_noises(key, x_T.shape)
    scheduler = diffusers.DDIMScheduler(
        **schedule_config, **spacing_config, clip_sample=False, set_alpha_to_one=set_alpha_to_one
    )
    scheduler.set_timesteps(NUM_STEPS)
    step_kwargs = (lambda i: dict(eta=eta, variance_noise=torch.from_numpy(noises[i]))) if eta else (lambda i: {})
    theirs = torch_trajectory(scheduler, x_T, step_kwargs)
    ours = run_ours(
        lambda *a, **k: samplers.ddim_sample(*a, key, **k),
        schedule_config,
        spacing_config,
        x_T,
        eta=eta,
        set_alpha_to_one=set_alpha_to_one,
    )
    assert_trajectories_match(ours, theirs)


@pytest.mark.parametrize("case, set_alpha_to_one", [
    ("linear-epsilon-leading", False), ("scaled_linear-zero_snr-v-trailing", True), ("cosine-sample-leading", False)
])
def test_ddim_inversion_matches_diffusers(case, set_alpha_to_one, x_T):
    schedule_config, spacing_config = INVERSION_CASES[case]
    scheduler = diffusers.DDIMInverseScheduler(
        **schedule_config, **spacing_config, clip_sample=False, set_alpha_to_one=set_alpha_to_one
    )
    scheduler.set_timesteps(NUM_STEPS)
    theirs = torch_trajectory(scheduler, x_T)
    ours = run_ours(samplers.ddim_invert, schedule_config, spacing_config, x_T, set_alpha_to_one=set_alpha_to_one)
    assert_trajectories_match(ours, theirs)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    "sampler, scheduler_class",
    [(samplers.unipc_sample, "UniPCMultistepScheduler"), (samplers.dpm_solver_sample, "DPMSolverMultistepScheduler")],
    ids=["unipc", "dpm_solver"],
)
def test_multistep_solver_matches_diffusers(sampler, scheduler_class, case, x_T):
    schedule_config, spacing_config = CASES[case]
    scheduler = getattr(diffusers, scheduler_class)(**schedule_config, **spacing_config)
    scheduler.set_timesteps(NUM_STEPS)
    theirs = torch_trajectory(scheduler, x_T)
    ours = run_ours(sampler, schedule_config, spacing_config, x_T)
    assert_trajectories_match(ours, theirs)


@pytest.mark.parametrize(
    "sampler, scheduler_class",
    [(samplers.ddim_sample, "DDIMScheduler"), (samplers.unipc_sample, "UniPCMultistepScheduler")],
    ids=["ddim", "unipc"],
)
def test_img2img_start_matches_diffusers(sampler, scheduler_class, x_T):
    """A clean latent re-noised to strength 0.55 and denoised over the last steps, as diffusers' img2img
    pipelines do (add_noise at the first kept timestep, then set_begin_index)."""
    schedule_config, spacing_config = CASES["linear-epsilon-leading"]
    init_latent = np.tanh(x_T[::-1].copy())
    extra = dict(clip_sample=False) if scheduler_class == "DDIMScheduler" else {}
    scheduler = getattr(diffusers, scheduler_class)(**schedule_config, **spacing_config, **extra)
    scheduler.set_timesteps(NUM_STEPS)
    first = NUM_STEPS - int(NUM_STEPS * 0.55)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first)
    start = scheduler.add_noise(
        torch.from_numpy(init_latent), torch.from_numpy(x_T), scheduler.timesteps[first : first + 1]
    ).numpy()
    theirs = torch_trajectory(scheduler, start, first=first)
    ours = run_ours(sampler, schedule_config, spacing_config, x_T, init_latent=jnp.asarray(init_latent), strength=0.55)
    assert_trajectories_match(ours, theirs)
