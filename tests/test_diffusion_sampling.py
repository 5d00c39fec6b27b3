"""Behaviour of the samplers beyond scheduler parity: the closed-form Gaussian check, the inversion round trip,
one trace per sampling loop, SDEdit starts, known-region blending, guidance, keys and argument errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from editdiff.diffusion import samplers
from editdiff.diffusion.schedules import make_schedule
from editdiff.diffusion.timesteps import denoising_timesteps, first_step_for_strength, multistep_timesteps

# Data x_0 ~ N(MU, S^2) per element: then z_t ~ N(a MU, a^2 S^2 + s^2) and the exact (MMSE) denoiser is
# E[eps | z_t] = s (z_t - a MU) / (a^2 S^2 + s^2), E[x_0 | z_t] = MU + a S^2 (z_t - a MU) / (a^2 S^2 + s^2),
# with a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t), and E[v | z_t] = a E[eps | z_t] - s E[x_0 | z_t].
MU, S = 0.5, 0.6
NUM_SAMPLES = 4096
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
SCHEDULE = make_schedule(**SD_BETAS)
PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]


def exact_denoiser(schedule):
    """The exact denoiser of the Gaussian data, in the schedule's prediction type."""

    def denoise(z, t):
        alpha_bar = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (z.ndim - 1))
        a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
        eps = s * (z - a * MU) / (a * a * S * S + s * s)
        x0 = MU + a * S * S * (z - a * MU) / (a * a * S * S + s * s)
        return {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[schedule.prediction_type]

    return denoise


exact_eps = exact_denoiser(SCHEDULE)


def marginal_sample(t: int) -> jax.Array:
    """NUM_SAMPLES draws of z_t exactly (standardised noise, so sample moments are the population's)."""
    noise = jax.random.normal(jax.random.key(0), (NUM_SAMPLES, 1))
    noise = (noise - noise.mean()) / noise.std()
    alpha_bar = SCHEDULE.alphas_cumprod[t]
    return jnp.sqrt(alpha_bar) * MU + jnp.sqrt(alpha_bar * S * S + 1.0 - alpha_bar) * noise


def last_jump_std(t: int) -> float:
    """The std of E[x_0 | z_t]: the last step of every sampler here returns the posterior mean from its last
    timestep t, which shrinks the spread by sqrt(a^2 S^2 / (a^2 S^2 + s^2)) (0.1% at t = 0, 7% at t = 50)."""
    alpha_bar = float(SCHEDULE.alphas_cumprod[t])
    return S * np.sqrt(alpha_bar * S * S / (alpha_bar * S * S + 1.0 - alpha_bar))


DDIM_50 = denoising_timesteps(1000, 50, "leading")
DDPM_1000 = denoising_timesteps(1000, 1000, "leading")
SOLVER_20 = multistep_timesteps(1000, 20, "linspace")
# (sampler, its timesteps, std tolerance). DDIM's Euler steps shrink the spread by 4% at 50 steps (it
# converges as 1 / num_steps: 1.5% at 200); the others are within 1% of the closed form.
GAUSSIAN_CASES = {
    "ddim_50": (lambda x: samplers.ddim_sample(exact_eps, SCHEDULE, x, num_steps=50), DDIM_50, 0.05),
    "ddpm_1000": (
        lambda x: samplers.ddpm_sample(exact_eps, SCHEDULE, x, jax.random.key(1), num_steps=1000),
        DDPM_1000,
        0.02,
    ),
    "unipc_20": (lambda x: samplers.unipc_sample(exact_eps, SCHEDULE, x, num_steps=20), SOLVER_20, 0.02),
    "dpm_solver_20": (lambda x: samplers.dpm_solver_sample(exact_eps, SCHEDULE, x, num_steps=20), SOLVER_20, 0.02),
}


@pytest.mark.parametrize("case", GAUSSIAN_CASES)
def test_exact_denoiser_reproduces_data_distribution(case):
    sample, timesteps, std_tolerance = GAUSSIAN_CASES[case]
    x0 = np.asarray(jax.jit(sample)(marginal_sample(int(timesteps[0]))))
    assert abs(x0.mean() - MU) < 0.02, x0.mean()
    assert abs(x0.std() / last_jump_std(int(timesteps[-1])) - 1.0) < std_tolerance, x0.std()


@pytest.fixture(scope="module")
def data_batch():
    return MU + S * jax.random.normal(jax.random.key(3), (NUM_SAMPLES, 1))


def round_trip_error(x0, num_steps, fixed_point_iterations, schedule=SCHEDULE, **grid):
    """max |DDIM sampling(DDIM inversion(x0)) - x0| with the exact denoiser, both on the same grid."""
    model = exact_denoiser(schedule)

    @jax.jit
    def round_trip(x0):
        x_T = samplers.ddim_invert(
            model, schedule, x0, num_steps=num_steps, fixed_point_iterations=fixed_point_iterations, **grid
        )
        return samplers.ddim_sample(model, schedule, x_T, num_steps=num_steps, **grid)

    return float(jnp.max(jnp.abs(round_trip(x0) - x0)))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_fixed_point_ddim_inversion_then_sampling_returns_x0(prediction_type, set_alpha_to_one, spacing, data_batch):
    """Exact for every prediction type, from either first level; x_0 prediction with set_alpha_to_one starts
    at sigma = 0, where diffusers' inversion divides by zero. Measured over these 12 cases with 3 iterations:
    at most 2.3e-5 (7e-2 .. 3.4e-1 with none)."""
    schedule = make_schedule(**SD_BETAS, prediction_type=prediction_type)
    grid = dict(set_alpha_to_one=set_alpha_to_one, spacing=spacing)
    error = round_trip_error(data_batch, 50, 3, schedule, **grid)
    assert error < 1e-4, error
    assert np.isfinite(round_trip_error(data_batch, 50, 0, schedule, **grid))


def test_plain_ddim_inversion_round_trip_error_is_first_order(data_batch):
    """diffusers' inversion evaluates the denoiser one level too low: its round-trip error falls as 1/steps."""
    coarse = round_trip_error(data_batch, num_steps=50, fixed_point_iterations=0)
    fine = round_trip_error(data_batch, num_steps=500, fixed_point_iterations=0)
    assert 6.0 < coarse / fine < 14.0, (coarse, fine)


TRACED_SAMPLERS = {
    "ddpm": lambda f, schedule, x, key: samplers.ddpm_sample(f, schedule, x, key, num_steps=12),
    "ddim_eta": lambda f, schedule, x, key: samplers.ddim_sample(f, schedule, x, key, num_steps=12, eta=1.0),
    "ddim_invert_fixed_point": lambda f, schedule, x, key: samplers.ddim_invert(
        f, schedule, x, num_steps=12, fixed_point_iterations=2
    ),
    "unipc": lambda f, schedule, x, key: samplers.unipc_sample(f, schedule, x, num_steps=12),
    "dpm_solver": lambda f, schedule, x, key: samplers.dpm_solver_sample(f, schedule, x, num_steps=12),
}


@pytest.mark.parametrize("name", TRACED_SAMPLERS)
def test_sampling_loop_traces_once(name):
    loop_traces, model_traces = [], []

    def counting_model(z, t):
        model_traces.append(t.shape)
        return 0.9 * z

    @jax.jit
    def sample(schedule, x, key):
        loop_traces.append(x.shape)
        return TRACED_SAMPLERS[name](counting_model, schedule, x, key)

    x = jnp.ones((2, 4, 4, 3))
    sample(SCHEDULE, x, jax.random.key(0))
    other_schedule = make_schedule(beta_schedule="linear", prediction_type="epsilon")  # same statics
    sample(other_schedule, 2.0 * x, jax.random.key(1))
    assert loop_traces == [x.shape], "new values (latents, key, schedule arrays) must not retrace"
    assert model_traces == [(2,)], "the denoiser must be traced once, not once per step"


def constant_model(z, t):
    return 0.1 * z


def mixing_model(z, t):
    """Each pixel's prediction depends on the whole latent, so a known region steers the rest."""
    return 0.1 * z + 0.5 * jnp.mean(z, axis=(1, 2), keepdims=True)


def test_known_region_is_kept_and_the_rest_is_sampled():
    x_T = jax.random.normal(jax.random.key(0), (1, 4, 4, 2))
    known = jnp.full((1, 4, 4, 2), 0.3)
    mask = jnp.zeros((1, 4, 4, 1)).at[:, :2].set(1.0)
    for sample in (
        lambda **kw: samplers.ddim_sample(mixing_model, SCHEDULE, x_T, num_steps=8, **kw),
        lambda **kw: samplers.unipc_sample(mixing_model, SCHEDULE, x_T, num_steps=8, **kw),
    ):
        free = sample()
        blended = sample(known_latent=known, known_mask=mask)
        np.testing.assert_allclose(blended[:, :2], known[:, :2], atol=1e-6)
        assert not np.allclose(blended[:, 2:], known[:, 2:], atol=1e-2)
        assert not np.allclose(blended[:, 2:], free[:, 2:], atol=1e-4), "the known region must steer the rest"


def landed_alpha_bars(sampler: str, num_steps: int, spacing: str, set_alpha_to_one: bool = True) -> np.ndarray:
    """The alpha_bar each step's update lands on, from the schedulers' definitions: DDIM moves to
    t - T // num_steps (diffusers' prev_timestep), the others to the next timestep of their grid; below
    timestep 0 lies the clean level (DDIM without set_alpha_to_one: alpha_bar[0])."""
    T = SCHEDULE.num_train_timesteps
    alphas_cumprod = np.asarray(SCHEDULE.alphas_cumprod, np.float64)
    if sampler == "ddim":
        landed = denoising_timesteps(T, num_steps, spacing) - T // num_steps
        final = 1.0 if set_alpha_to_one else alphas_cumprod[0]
    else:
        grid = (denoising_timesteps if sampler == "ddpm" else multistep_timesteps)(T, num_steps, spacing)
        landed, final = np.append(grid[1:], -1), 1.0
    return np.where(landed >= 0, alphas_cumprod[np.maximum(landed, 0)], final)


KNOWN_REGION_CASES = {
    "ddpm": ("ddpm", {}),
    "ddim": ("ddim", {}),
    "ddim_eta": ("ddim", dict(eta=1.0)),
    "ddim_alpha_bar_0": ("ddim", dict(set_alpha_to_one=False)),
    "ddim_strength": ("ddim", dict(strength=0.6)),
    "unipc": ("unipc", {}),
    "unipc_strength": ("unipc", dict(strength=0.6)),
    "dpm_solver": ("dpm_solver", {}),
}


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("case", KNOWN_REGION_CASES)
def test_known_region_after_each_step_is_the_known_latent_at_the_level_landed_on(case, spacing):
    """After every step, the kept region is exactly q(known, the level the update landed on) with noise x_T:
    7 of 1000 steps, so DDIM's t - 142 and the next grid timestep differ under trailing and linspace."""
    name, settings = KNOWN_REGION_CASES[case]
    num_steps = 7
    x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 2))
    known = jax.random.uniform(jax.random.key(1), (2, 4, 4, 2), minval=-1.0, maxval=1.0)
    mask = jnp.zeros((2, 4, 4, 1)).at[:, :2].set(1.0)
    if "strength" in settings:
        settings = settings | dict(init_latent=jnp.full_like(x_T, 0.25))

    @jax.jit
    def trajectory(x_T):
        return samplers.sampler_by_name(name)(
            mixing_model, SCHEDULE, x_T, jax.random.key(2), num_steps=num_steps, spacing=spacing,
            known_latent=known, known_mask=mask, return_trajectory=True, **settings,
        )[1]

    first = first_step_for_strength(num_steps, settings.get("strength", 1.0))
    alpha_bar = landed_alpha_bars(name, num_steps, spacing, settings.get("set_alpha_to_one", True))[first:]
    alpha_bar = alpha_bar.reshape(-1, 1, 1, 1, 1)
    expected = np.sqrt(alpha_bar) * np.asarray(known) + np.sqrt(1.0 - alpha_bar) * np.asarray(x_T)
    ours = np.asarray(trajectory(x_T))
    assert ours.shape == (num_steps - first,) + x_T.shape
    np.testing.assert_allclose(ours[:, :, :2], expected[:, :, :2], atol=2e-6)
    assert not np.allclose(ours[:, :, 2:], expected[:, :, 2:], atol=1e-2), "only the masked region is replaced"


def test_strength_runs_only_the_last_steps_from_the_renoised_latent():
    x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 2))
    init = jnp.full_like(x_T, 0.25)
    _, trajectory = samplers.ddim_sample(
        constant_model, SCHEDULE, x_T, num_steps=10, init_latent=init, strength=0.3, return_trajectory=True
    )
    assert trajectory.shape == (3,) + x_T.shape
    # Strength near 0 keeps one low-noise step: the output stays near the clean latent.
    nearly_clean = samplers.ddim_sample(exact_eps, SCHEDULE, x_T, num_steps=10, init_latent=init, strength=0.1)
    assert float(jnp.max(jnp.abs(nearly_clean - init))) < 0.1


def test_classifier_free_guidance_combines_the_two_branches():
    def both(z, t):
        return z + 1.0, z - 1.0

    z, t = jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32)
    np.testing.assert_allclose(samplers.classifier_free_guidance(both, 1.0)(z, t), z + 1.0)
    np.testing.assert_allclose(samplers.classifier_free_guidance(both, 0.0)(z, t), z - 1.0)
    np.testing.assert_allclose(samplers.classifier_free_guidance(both, 7.5)(z, t), z - 1.0 + 7.5 * 2.0)


def test_stochastic_samplers_are_deterministic_given_the_key():
    x_T = jnp.ones((2, 3))
    run = jax.jit(lambda key: samplers.ddpm_sample(constant_model, SCHEDULE, x_T, key, num_steps=5))
    np.testing.assert_array_equal(run(jax.random.key(0)), run(jax.random.key(0)))
    assert not np.allclose(run(jax.random.key(0)), run(jax.random.key(1)))


def test_samplers_share_one_call_signature_and_are_found_by_name():
    x_T, key = jnp.ones((2, 3)), jax.random.key(0)
    for name in ("ddpm", "ddim", "unipc", "dpm_solver"):
        x0 = samplers.sampler_by_name(name)(constant_model, SCHEDULE, x_T, key, num_steps=4)
        assert x0.shape == x_T.shape and bool(jnp.all(jnp.isfinite(x0)))
    with pytest.raises(ValueError, match="sampler='euler'.*ddpm, ddim, unipc, dpm_solver"):
        samplers.sampler_by_name("euler")


def test_argument_errors_name_the_value():
    x = jnp.ones((1, 2))
    with pytest.raises(ValueError, match="spacing='even'"):
        samplers.ddim_sample(constant_model, SCHEDULE, x, num_steps=5, spacing="even")
    with pytest.raises(ValueError, match="PRNG key"):
        samplers.ddim_sample(constant_model, SCHEDULE, x, num_steps=5, eta=0.5)
    with pytest.raises(ValueError, match="known_mask"):
        samplers.unipc_sample(constant_model, SCHEDULE, x, num_steps=5, known_latent=x)
    with pytest.raises(ValueError, match="strength=0.5 needs init_latent"):
        samplers.dpm_solver_sample(constant_model, SCHEDULE, x, num_steps=5, strength=0.5)
    with pytest.raises(ValueError, match="strength=0.05 keeps no step"):
        samplers.ddim_sample(constant_model, SCHEDULE, x, num_steps=5, init_latent=x, strength=0.05)
