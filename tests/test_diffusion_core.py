"""Schedules, timestep grids, parameterisations and losses, checked against diffusers' schedulers and formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from editdiff.diffusion import losses, parameterisation  # noqa: E402
from editdiff.diffusion.schedules import make_schedule, schedule_from_config  # noqa: E402
from editdiff.diffusion.timesteps import (  # noqa: E402
    denoising_timesteps,
    first_step_for_strength,
    inversion_timesteps,
    multistep_timesteps,
)

BETAS = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
}


@pytest.mark.parametrize("betas", BETAS)
def test_schedule_is_bit_identical_to_diffusers(betas):
    ours = make_schedule(**BETAS[betas])
    theirs = diffusers.DDPMScheduler(**BETAS[betas])
    np.testing.assert_array_equal(np.asarray(ours.betas), theirs.betas.numpy())
    np.testing.assert_array_equal(np.asarray(ours.alphas_cumprod), theirs.alphas_cumprod.numpy())


@pytest.mark.parametrize("betas", BETAS)
def test_zero_terminal_snr_rescale_matches_diffusers(betas):
    ours = np.asarray(make_schedule(**BETAS[betas], rescale_betas_zero_snr=True).alphas_cumprod)
    theirs = diffusers.DDPMScheduler(**BETAS[betas], rescale_betas_zero_snr=True).alphas_cumprod.numpy()
    assert ours[-1] == 0.0 and theirs[-1] == 0.0
    # torch's float32 sqrt is not correctly rounded on every CPU: agree to rounding, relative to alpha_bar.
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-9)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-6)


def test_schedule_from_a_diffusers_scheduler_config():
    config = dict(diffusers.DDIMScheduler(**BETAS["scaled_linear"], prediction_type="v_prediction").config)
    schedule = schedule_from_config(config)
    assert schedule.prediction_type == "v_prediction"
    assert schedule.num_train_timesteps == 1000
    np.testing.assert_array_equal(np.asarray(schedule.betas), np.asarray(make_schedule(**BETAS["scaled_linear"]).betas))


def test_schedule_errors_name_key_and_value():
    with pytest.raises(ValueError, match="beta_schedule='sigmoid'.*linear, scaled_linear, squaredcos_cap_v2"):
        make_schedule(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="prediction_type='flow_prediction'"):
        make_schedule(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="trained_betas"):
        schedule_from_config({"trained_betas": [0.1, 0.2]})


def test_schedule_is_a_pytree_with_static_settings():
    schedule = make_schedule(prediction_type="v_prediction")
    leaves, treedef = jax.tree_util.tree_flatten(schedule)
    assert len(leaves) == 3
    rebuilt = jax.jit(lambda s: s)(schedule)
    assert rebuilt.prediction_type == "v_prediction" and rebuilt.num_train_timesteps == 1000


SPACINGS = ["leading", "trailing", "linspace"]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("num_steps", [7, 20, 50])
def test_timestep_grids_match_diffusers(spacing, num_steps):
    for scheduler_class, ours in (
        (diffusers.DDIMScheduler, denoising_timesteps),
        (diffusers.DDPMScheduler, denoising_timesteps),
        (diffusers.UniPCMultistepScheduler, multistep_timesteps),
        (diffusers.DPMSolverMultistepScheduler, multistep_timesteps),
        (diffusers.DDIMInverseScheduler, inversion_timesteps),
    ):
        if scheduler_class is diffusers.DDIMInverseScheduler and spacing == "linspace":
            continue
        scheduler = scheduler_class(timestep_spacing=spacing, steps_offset=1)
        scheduler.set_timesteps(num_steps)
        np.testing.assert_array_equal(ours(1000, num_steps, spacing, steps_offset=1), scheduler.timesteps.numpy())


def test_strength_keeps_the_last_steps_as_img2img_pipelines_do():
    assert first_step_for_strength(50, 1.0) == 0
    assert first_step_for_strength(50, 0.75) == 13  # int(37.5) = 37 steps kept
    assert first_step_for_strength(20, 0.3) == 14
    with pytest.raises(ValueError, match="strength=1.5"):
        first_step_for_strength(20, 1.5)


@pytest.fixture(scope="module")
def batch():
    keys = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(keys[0], (4, 3, 3, 2))
    noise = jax.random.normal(keys[1], (4, 3, 3, 2))
    t = jnp.array([0, 250, 999, 600], jnp.int32)
    return x0, noise, t


def test_q_sample_and_velocity_match_diffusers(batch):
    x0, noise, t = batch
    schedule = make_schedule(**BETAS["scaled_linear"])
    theirs = diffusers.DDPMScheduler(**BETAS["scaled_linear"])
    to_torch = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    np.testing.assert_allclose(
        parameterisation.q_sample(schedule, x0, t, noise),
        theirs.add_noise(to_torch(x0), to_torch(noise), to_torch(t).long()).numpy(),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        parameterisation.velocity(schedule, x0, noise, t),
        theirs.get_velocity(to_torch(x0), to_torch(noise), to_torch(t).long()).numpy(),
        atol=1e-6,
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_training_target_determines_x0_and_eps(prediction_type, batch):
    """A denoiser that outputs its training target exactly recovers the clean latent and the noise."""
    x0, noise, t = batch
    schedule = make_schedule(prediction_type=prediction_type)
    z_t = parameterisation.q_sample(schedule, x0, t, noise)
    target = parameterisation.training_target(schedule, x0, noise, t)
    x0_hat, eps_hat = parameterisation.x0_and_eps(schedule, z_t, t, target)
    # At t = 999 recovering x_0 from epsilon divides by sqrt(alpha_bar) = 0.006: compare on the scale of z_t.
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    np.testing.assert_allclose(eps_hat, noise, atol=2e-4)


def test_l2_and_l1_noise_losses(batch):
    prediction, target, _ = batch
    np.testing.assert_allclose(losses.noise_loss(prediction, target), np.mean((prediction - target) ** 2), rtol=1e-6)
    np.testing.assert_allclose(
        losses.noise_loss(prediction, target, norm="l1"), np.mean(np.abs(prediction - target)), rtol=1e-6
    )
    weights = jnp.array([1.0, 0.0, 2.0, 0.5])
    per_example = np.mean((prediction - target) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(
        losses.noise_loss(prediction, target, weights=weights), np.mean(per_example * weights), rtol=1e-6
    )
    with pytest.raises(ValueError, match="norm='l3'"):
        losses.noise_loss(prediction, target, norm="l3")


def test_losses_are_float32_for_bfloat16_predictions(batch):
    prediction, target, t = batch
    schedule = make_schedule()
    loss = losses.diffusion_loss(schedule, prediction.astype(jnp.bfloat16), target, target, t, min_snr_gamma=5.0)
    assert loss.dtype == jnp.float32


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_diffusers_training_recipe(prediction_type):
    """diffusers' train_text_to_image: min(snr, gamma) / snr for epsilon, / (snr + 1) for v-prediction."""
    from diffusers.training_utils import compute_snr

    theirs_scheduler = diffusers.DDPMScheduler(**BETAS["scaled_linear"])
    t = torch.tensor([0, 10, 500, 999])
    snr = compute_snr(theirs_scheduler, t)
    expected = torch.minimum(snr, torch.tensor(5.0)) / (snr if prediction_type == "epsilon" else snr + 1)
    schedule = make_schedule(**BETAS["scaled_linear"], prediction_type=prediction_type)
    ours = losses.min_snr_weights(schedule, jnp.asarray(t.numpy()), 5.0)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5)


def test_min_snr_epsilon_weight_is_finite_at_zero_terminal_snr():
    schedule = make_schedule(rescale_betas_zero_snr=True)
    weights = losses.min_snr_weights(schedule, jnp.array([999, 0]), 5.0)
    assert float(weights[0]) == 1.0 and np.isfinite(np.asarray(weights)).all()


# Two training timesteps with betas 0.36 and 0.4375: alpha_bar = (0.64, 0.36), so at t = 0 (a, s) = (0.8, 0.6)
# and at t = 1 (a, s) = (0.6, 0.8); SNR = a^2 / s^2 = (16/9, 9/16). Two examples of two elements each.
HAND_X0 = [[1.0, -1.0], [2.0, 0.0]]
HAND_NOISE = [[0.5, 1.0], [-1.0, 1.0]]
HAND_PREDICTION = [[1.0, 0.0], [0.0, 2.0]]
HAND_T = [0, 1]
# Per prediction type, the target and the per-example (L2, L1) means of prediction - target:
#   epsilon: target = noise;         errors [0.5, -1], [1, 1]          -> L2 (0.625, 1),  L1 (0.75, 1)
#   v:       target = a eps - s x_0  = [0.4 - 0.6, 0.8 + 0.6] = [-0.2, 1.4] and [-0.6 - 1.6, 0.6] = [-2.2, 0.6];
#            errors [1.2, -1.4], [2.2, 1.4]                          -> L2 (1.7, 3.4),  L1 (1.3, 1.8)
#   sample:  target = x_0;           errors [0, 1], [-2, 2]            -> L2 (0.5, 4),    L1 (0.5, 2)
# Min-SNR weights with gamma = 1: min(SNR, 1) = (1, 9/16), on the epsilon loss divided by SNR -> (9/16, 1),
# on the v loss by SNR + 1 = (25/9, 25/16) -> (0.36, 0.36), on the x_0 loss as is -> (1, 9/16).
HAND_LOSSES = {  # prediction_type: (L2, L1, L2 min-SNR, L1 min-SNR), each the mean over the two examples
    "epsilon": ((0.625 + 1) / 2, (0.75 + 1) / 2, (9 / 16 * 0.625 + 1) / 2, (9 / 16 * 0.75 + 1) / 2),
    "v_prediction": ((1.7 + 3.4) / 2, (1.3 + 1.8) / 2, 0.36 * (1.7 + 3.4) / 2, 0.36 * (1.3 + 1.8) / 2),
    "sample": ((0.5 + 4) / 2, (0.5 + 2) / 2, (0.5 + 9 / 16 * 4) / 2, (0.5 + 9 / 16 * 2) / 2),
}


@pytest.mark.parametrize("prediction_type", HAND_LOSSES)
def test_diffusion_loss_matches_hand_computed_values(prediction_type):
    schedule = make_schedule(num_train_timesteps=2, beta_start=0.36, beta_end=0.4375, prediction_type=prediction_type)
    np.testing.assert_allclose(schedule.alphas_cumprod, [0.64, 0.36], rtol=1e-6)
    x0, noise, prediction, t = (jnp.array(a) for a in (HAND_X0, HAND_NOISE, HAND_PREDICTION, HAND_T))
    ours = [
        losses.diffusion_loss(schedule, prediction, x0, noise, t, norm=norm, min_snr_gamma=gamma)
        for gamma in (None, 1.0)
        for norm in ("l2", "l1")
    ]
    np.testing.assert_allclose(ours, HAND_LOSSES[prediction_type], rtol=1e-5)


@pytest.mark.parametrize("prediction_type", HAND_LOSSES)
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_x0_space_loss_is_the_error_of_the_implied_x0(prediction_type, norm):
    """space="x0": the loss of x_0 = x0_and_eps(z_t, prediction) against the true x_0, for every prediction type;
    with min-SNR (gamma = 1) that error weighted by min(SNR, 1) = (1, 9/16) on the two examples."""
    schedule = make_schedule(num_train_timesteps=2, beta_start=0.36, beta_end=0.4375, prediction_type=prediction_type)
    x0, noise, prediction, t = (jnp.array(a) for a in (HAND_X0, HAND_NOISE, HAND_PREDICTION, HAND_T))
    implied_x0, _ = parameterisation.x0_and_eps(schedule, parameterisation.q_sample(schedule, x0, t, noise), t,
                                                prediction)
    error = np.abs(np.asarray(implied_x0 - x0)) ** (1 if norm == "l1" else 2)
    per_example = error.mean(axis=1)
    ours = losses.diffusion_loss(schedule, prediction, x0, noise, t, norm=norm, space="x0")
    np.testing.assert_allclose(ours, per_example.mean(), rtol=1e-5)
    weighted = losses.diffusion_loss(schedule, prediction, x0, noise, t, norm=norm, space="x0", min_snr_gamma=1.0)
    np.testing.assert_allclose(weighted, np.mean(per_example * [1.0, 9 / 16]), rtol=1e-5)
    with pytest.raises(ValueError, match="space='pixels'"):
        losses.diffusion_loss(schedule, prediction, x0, noise, t, space="pixels")


def test_sampled_timesteps_cover_the_training_range():
    t = losses.sample_timesteps(jax.random.key(0), 4096, 1000)
    assert t.dtype == jnp.int32 and t.shape == (4096,)
    assert int(t.min()) >= 0 and int(t.max()) <= 999 and len(np.unique(np.asarray(t))) > 900
