"""The shared config.diffusion / config.sampler sections: defaults, every problem reported at once, unknown keys,
the cross-key rules (and that what they refuse really breaks the samplers), and the settings helpers."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from editdiff import config_checks as checks
from editdiff.diffusion import config as diffusion_config
from editdiff.diffusion import losses, samplers
from editdiff.diffusion.schedules import make_schedule, schedule_from_config


def experiment(inversion=False, **overrides):
    """A config holding the two default sections, with `section__key=value` overrides (of any type)."""
    sections = dict(diffusion=diffusion_config.default_diffusion_config().to_dict(),
                    sampler=diffusion_config.default_sampler_config(inversion=inversion).to_dict())
    for name, value in overrides.items():
        section, key = name.split("__")
        sections[section][key] = value
    return ml_collections.ConfigDict(sections)


def problems(config, inversion=False):
    sections = [diffusion_config.diffusion_section(), diffusion_config.sampler_section(inversion=inversion)]
    return [line for section in sections for line in section.problems(config)]


def test_defaults_are_the_multitask_configs_and_pass():
    """configs/multitask.py's values (when this section was split out of it), plus the sampler's steps_offset
    and set_alpha_to_one at the samplers' own defaults."""
    assert diffusion_config.default_diffusion_config().to_dict() == dict(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        rescale_betas_zero_snr=False, prediction_type="epsilon", loss="l1", loss_space="prediction",
        min_snr_gamma=0.0)
    assert diffusion_config.default_sampler_config().to_dict() == dict(
        name="ddim", num_steps=50, eta=0.0, spacing="leading", steps_offset=0, set_alpha_to_one=True,
        blend_known_region=False)
    assert diffusion_config.default_sampler_config(inversion=True).fixed_point_iterations == 0
    assert problems(experiment()) == []
    assert problems(experiment(inversion=True), inversion=True) == []
    checks.validate(experiment(), [diffusion_config.diffusion_section(), diffusion_config.sampler_section()])
    schedule_from_config(experiment().diffusion)  # the schedule reads the section as it is


def test_every_problem_of_a_bad_section_is_listed_at_once():
    config = experiment(diffusion__beta_end=1.0, diffusion__loss="l3", diffusion__min_snr_gamma=-1,
                        sampler__name="euler", sampler__eta=2, sampler__num_steps=0, sampler__set_alpha_to_one=1)
    with pytest.raises(ValueError) as error:
        checks.validate(config, [diffusion_config.diffusion_section(), diffusion_config.sampler_section()])
    message = str(error.value)
    for line in ("config.diffusion.beta_end = 1.0 is invalid; allowed: a number in (0, 1)",
                 "config.diffusion.loss = 'l3' is invalid; allowed: one of 'l2', 'l1'",
                 "config.diffusion.min_snr_gamma = -1 is invalid; allowed: a number >= 0",
                 "config.sampler.name = 'euler' is invalid; allowed: one of 'ddpm', 'ddim', 'unipc', 'dpm_solver'",
                 "config.sampler.eta = 2 is invalid; allowed: a number in [0, 1]",
                 "config.sampler.num_steps = 0 is invalid; allowed: an integer >= 1",
                 "config.sampler.set_alpha_to_one = 1 is invalid; allowed: True or False"):
        assert line in message
    assert len(message.splitlines()) == 1 + 7


def test_unknown_and_missing_keys_are_refused():
    config = experiment()
    config.diffusion.beta_schedul = "linear"
    config.sampler.fixed_point_iterations = 3  # an inversion key, in a section made without inversion
    del config.sampler.spacing
    found = problems(config)
    assert "config.diffusion.beta_schedul is not a known key; known: beta_end, beta_schedule, beta_start, loss, " \
           "loss_space, min_snr_gamma, num_train_timesteps, prediction_type, rescale_betas_zero_snr" in found
    assert any(line.startswith("config.sampler.fixed_point_iterations is not a known key") for line in found)
    assert any(line.startswith("config.sampler.spacing is missing") for line in found)


def test_sections_under_other_prefixes():
    config = ml_collections.ConfigDict(dict(teacher=dict(schedule=diffusion_config.default_diffusion_config().to_dict(),
                                                         sampling=diffusion_config.default_sampler_config().to_dict())))
    config.teacher.sampling.num_steps = 2000
    section = diffusion_config.sampler_section("teacher.sampling", "teacher.schedule")
    assert section.problems(config) == ["config.teacher.sampling.num_steps = 2000 is invalid; allowed: at most "
                                        "config.teacher.schedule.num_train_timesteps = 1000"]


ZERO_SNR = dict(diffusion__rescale_betas_zero_snr=True)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "unipc", "dpm_solver"])
@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_zero_terminal_snr_with_epsilon_on_a_grid_with_the_last_timestep_is_refused(name, spacing):
    found = problems(experiment(**ZERO_SNR, sampler__name=name, sampler__spacing=spacing))
    assert len(found) == 1
    assert found[0].startswith("config.diffusion.prediction_type = 'epsilon' is invalid; allowed: 'v_prediction' "
                               "or 'sample' with config.diffusion.rescale_betas_zero_snr = True")
    assert "alpha_bar[999] = 0 there, so x_0 = (z - sigma eps) / alpha is 0/0" in found[0]
    assert "keep 'epsilon' on a config.sampler.spacing = 'leading' grid" in found[0]
    for allowed in (dict(diffusion__prediction_type="v_prediction"), dict(diffusion__prediction_type="sample")):
        assert problems(experiment(**ZERO_SNR, **allowed, sampler__name=name, sampler__spacing=spacing)) == []
    assert problems(experiment(**ZERO_SNR, sampler__name=name, sampler__spacing="leading")) == []


def test_zero_terminal_snr_rule_follows_the_grid_not_the_spacing_name():
    """A leading grid reaches timestep 999 with num_steps = T, or with a steps_offset that lifts its top to it."""
    assert problems(experiment(**ZERO_SNR, sampler__num_steps=1000))
    assert problems(experiment(**ZERO_SNR, sampler__num_steps=10, sampler__steps_offset=99))
    assert problems(experiment(**ZERO_SNR, sampler__num_steps=10, sampler__steps_offset=98)) == []


def test_x0_space_loss_of_an_epsilon_denoiser_needs_a_nonzero_terminal_snr():
    """Training draws t = T - 1, where an epsilon denoiser's x_0 error scale s / a is infinite under zero SNR."""
    x0_space = dict(diffusion__loss_space="x0")
    found = problems(experiment(**ZERO_SNR, **x0_space, sampler__spacing="leading"))
    assert found == ["config.diffusion.loss_space = 'x0' is invalid; allowed: 'prediction' with "
                     "config.diffusion.prediction_type = 'epsilon' and rescale_betas_zero_snr = True (x_0 = "
                     "(z - sigma eps) / alpha is 0/0 at the last training timestep, where alpha = 0)"]
    assert problems(experiment(**ZERO_SNR, **x0_space, diffusion__prediction_type="v_prediction")) == []
    assert problems(experiment(**x0_space)) == []


# The point-mass data x_0 = 0 has the exact denoiser eps = z / sigma_t at every timestep; at alpha_bar = 0 it
# is the true noise, and x_0 = (z - sigma eps) / alpha = 0 / 0 there.
ZERO_SNR_SCHEDULE = make_schedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  rescale_betas_zero_snr=True)


def point_mass_eps(z, t, error=0.0):
    sigma = jnp.sqrt(1.0 - ZERO_SNR_SCHEDULE.alphas_cumprod[t]).reshape((-1,) + (1,) * (z.ndim - 1))
    return z / sigma + error


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_the_refused_zero_snr_combination_gives_nan_in_ddim_and_ddpm(name):
    x_T = jax.random.normal(jax.random.key(0), (8, 2))
    sample = samplers.sampler_by_name(name)
    for spacing in ("trailing", "linspace"):
        assert bool(jnp.all(jnp.isnan(sample(point_mass_eps, ZERO_SNR_SCHEDULE, x_T, jax.random.key(1),
                                             num_steps=20, spacing=spacing))))
    allowed = sample(point_mass_eps, ZERO_SNR_SCHEDULE, x_T, jax.random.key(1), num_steps=20, spacing="leading")
    assert float(jnp.max(jnp.abs(allowed))) < 1e-6  # the point mass, recovered


@pytest.mark.parametrize("name", ["unipc", "dpm_solver"])
def test_the_refused_zero_snr_combination_amplifies_the_denoiser_error_4096_fold_in_the_solvers(name):
    """The solvers nudge alpha_bar = 0 to 2^-24 (finite, as diffusers does): one step from timestep 999 returns
    x_0 = (z - sigma eps) / alpha, so an eps error of 1e-3 becomes an x_0 error of sigma / alpha * 1e-3 = 4.1."""
    x_T = jax.random.normal(jax.random.key(0), (8, 2))
    sample = samplers.sampler_by_name(name)
    exact, wrong = (sample(lambda z, t: point_mass_eps(z, t, error), ZERO_SNR_SCHEDULE, x_T, num_steps=1,
                           spacing="trailing") for error in (0.0, 1e-3))
    np.testing.assert_allclose(wrong - exact, -np.sqrt(2.0**24 - 1) * 1e-3, rtol=1e-3)


def test_betas_outside_the_open_unit_interval_are_refused_and_do_give_nan():
    """beta_start = 0 leaves timestep 0 noiseless (an x_0 prediction's eps divides by sigma = 0); beta_end > 1
    makes alpha negative (sqrt of a negative alpha_bar)."""
    assert problems(experiment(diffusion__beta_start=0.0, diffusion__beta_end=1.5)) == [
        "config.diffusion.beta_start = 0.0 is invalid; allowed: a number in (0, 1)",
        "config.diffusion.beta_end = 1.5 is invalid; allowed: a number in (0, 1)"]
    x_T = jnp.ones((2, 1))
    noiseless_start = make_schedule(beta_start=0.0, prediction_type="sample")
    assert bool(jnp.all(jnp.isnan(samplers.ddim_sample(lambda z, t: 0.5 * z, noiseless_start, x_T, num_steps=10))))
    negative_alpha = make_schedule(beta_end=1.5)
    assert bool(jnp.all(jnp.isnan(samplers.ddim_sample(lambda z, t: 0.5 * z, negative_alpha, x_T, num_steps=10,
                                                       spacing="trailing"))))


def test_solver_grids_that_repeat_a_timestep_are_refused():
    for spacing in ("leading", "linspace"):
        assert problems(experiment(sampler__name="unipc", sampler__spacing=spacing, sampler__num_steps=1000)) == [
            f"config.sampler.num_steps = 1000 is invalid; allowed: at most 999 with config.sampler.name = 'unipc' "
            f"and spacing '{spacing}' (its grid would repeat a timestep: a zero log-SNR step, divided by)"]
        x_T = jnp.ones((2, 1))
        short = make_schedule(num_train_timesteps=10)
        repeated = samplers.unipc_sample(lambda z, t: 0.5 * z, short, x_T, num_steps=10, spacing=spacing)
        assert not bool(jnp.all(jnp.isfinite(repeated))), "the refused grid must really break the solver"
    assert problems(experiment(sampler__name="unipc", sampler__spacing="trailing", sampler__num_steps=1000)) == []
    assert problems(experiment(sampler__name="ddim", sampler__spacing="linspace", sampler__num_steps=1000)) == []


def test_other_cross_key_rules():
    assert problems(experiment(sampler__num_steps=1001)) == [
        "config.sampler.num_steps = 1001 is invalid; allowed: at most config.diffusion.num_train_timesteps = 1000"]
    assert problems(experiment(sampler__num_steps=10, sampler__steps_offset=150)) == [
        "config.sampler.steps_offset = 150 is invalid; allowed: at most 99 with config.sampler.num_steps = 10 and "
        "spacing 'leading' (the grid would reach timestep 1050, past config.diffusion.num_train_timesteps - 1 = 999)"]
    assert problems(experiment(sampler__name="ddpm", sampler__eta=0.5)) == [
        "config.sampler.eta = 0.5 is invalid; allowed: 0 with config.sampler.name = 'ddpm' (only DDIM has an eta)"]
    # Invalid diffusion values are reported once, by their own section, and the rules wait for them.
    assert problems(experiment(diffusion__num_train_timesteps="1000", sampler__num_steps=2000)) == [
        "config.diffusion.num_train_timesteps = '1000' is invalid; allowed: an integer >= 2"]


def test_an_inversion_section():
    assert problems(experiment(inversion=True, sampler__spacing="linspace"), inversion=True) == [
        "config.sampler.spacing = 'linspace' is invalid; allowed: one of 'leading', 'trailing'"]
    assert problems(experiment(inversion=True, sampler__fixed_point_iterations=-1), inversion=True) == [
        "config.sampler.fixed_point_iterations = -1 is invalid; allowed: an integer >= 0"]
    sampler = experiment(inversion=True, sampler__fixed_point_iterations=3, sampler__set_alpha_to_one=False).sampler
    assert diffusion_config.inversion_settings(sampler) == dict(
        num_steps=50, spacing="leading", steps_offset=0, set_alpha_to_one=False, fixed_point_iterations=3)
    schedule = schedule_from_config(experiment().diffusion)
    x_T = samplers.ddim_invert(lambda z, t: 0.1 * z, schedule, jnp.ones((1, 2)),
                               **diffusion_config.inversion_settings(sampler))
    assert bool(jnp.all(jnp.isfinite(x_T)))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "unipc", "dpm_solver"])
def test_sampler_settings_are_what_each_sampler_takes(name):
    sampler = experiment(sampler__name=name, sampler__num_steps=4, sampler__spacing="trailing",
                         sampler__set_alpha_to_one=False).sampler
    settings = diffusion_config.sampler_settings(sampler)
    expected = dict(num_steps=4, spacing="trailing", steps_offset=0)
    assert settings == (expected | dict(eta=0.0, set_alpha_to_one=False) if name == "ddim" else expected)
    x_T = jnp.ones((2, 3))
    schedule = schedule_from_config(experiment().diffusion)
    x0 = samplers.sampler_by_name(name)(lambda z, t: 0.1 * z, schedule, x_T, jax.random.key(0), **settings)
    assert x0.shape == x_T.shape and bool(jnp.all(jnp.isfinite(x0)))


def test_loss_settings():
    assert diffusion_config.loss_settings(experiment().diffusion) == dict(norm="l1", space="prediction",
                                                                          min_snr_gamma=None)
    diffusion = experiment(diffusion__loss="l2", diffusion__loss_space="x0", diffusion__min_snr_gamma=5.0).diffusion
    assert diffusion_config.loss_settings(diffusion) == dict(norm="l2", space="x0", min_snr_gamma=5.0)
    schedule = schedule_from_config(diffusion)
    x = jnp.ones((2, 3))
    t = jnp.array([3, 700])
    loss = losses.diffusion_loss(schedule, x, x, 0.5 * x, t, **diffusion_config.loss_settings(diffusion))
    assert loss.shape == () and float(loss) > 0
