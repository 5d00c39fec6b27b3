"""The rectifier R (seed 001, METHODS.md §2): its Modulation fits the U-Nets' modulation_paths, it is zero at
initialisation (the modulated U-Net is bit-identical to the frozen one) yet learns (gradients reach b's head at
once and everything else after a step, never the frozen U-Net), BatchNorm trains and evaluates as in ResNet,
t matters once trained, bad configs are errors naming the field, and a short overfit beats the frozen U-Net.

Compilation dominates on CPU, so the U-Nets get numpy-drawn weights (no init program), checks run in numpy, and
four jitted programs serve every test: R's init, the frozen U-Net, the train step (which also returns the
modulated prediction and the modulation), and R's forward in eval mode.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from editdiff.heads.rectifier import Rectifier, RectifierConfig
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig, check_modulation, modulation_paths
from editdiff.nn.unet2d import UNet2DConfig, UNet2DModel
from editdiff.tracing import abstract_module

SIZE, BATCH = 4, 4
# Pixel model (the paper's backbones are UNet2DModels): no attention, two levels, 8 px.
UNET2D = UNet2DConfig(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                      add_attention=False, attention_head_dim=None, norm_num_groups=4)
# The frozen model the value tests run: one level (mid block and one up block: 8 modulated convs), as compiling
# the train step's backward through every modulated conv is what costs most here.
UNET2D_ONE_LEVEL = dataclasses.replace(UNET2D, block_out_channels=(8,), down_block_types=("DownBlock2D",),
                                       up_block_types=("UpBlock2D",))
# Latent model with cross-attention (SD-1.x layout, tiny).
UNET_COND = UNetConfig.from_diffusers(dict(
    in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4))
# One Adam for every optimiser: the transformation is static in the train step, another would recompile it.
ADAM = optax.adam(3e-3)
TINY = dict(image_size=SIZE, stage_blocks=(1, 1), base_channels=8, subnet_channels=12, code_dim=16,
            time_embedding_dim=8)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _max_abs(tree) -> float:
    return max(float(np.abs(leaf).max()) for leaf in _leaves(tree))


def _random_weights(model: nnx.Module, seed: int) -> nnx.Module:
    """Fills an abstract (eval_shape) model with numpy-drawn weights: kernels N(0, 1/fan_in), biases 0.1 N(0, 1),
    norm scales 1 + 0.1 N(0, 1)."""
    rng = np.random.default_rng(seed)
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Variable):
            shape = node.get_value().shape
            noise = rng.standard_normal(shape)
            value = (noise / math.sqrt(math.prod(shape[:-1])) if path[-1] == "kernel"
                     else 1 + 0.1 * noise if path[-1] == "scale" else 0.1 * noise)
            node.set_value(jnp.asarray(value, jnp.float32))
    return model


@pytest.fixture(scope="module")
def unet2d():
    return _random_weights(abstract_module(lambda: UNet2DModel(UNET2D_ONE_LEVEL, rngs=nnx.Rngs(0))), seed=0)


@pytest.fixture(scope="module")
def rectifier_template(unet2d):
    """R for `unet2d` as initialised (one compiled init); tests train `nnx.clone`s of it. The key uses XLA's
    RngBitGenerator ("unsafe_rbg"), whose init program compiles several times faster than threefry's."""
    config = RectifierConfig(in_channels=6, **TINY)
    key = jax.random.key(1, impl="unsafe_rbg")
    return nnx.jit(lambda: Rectifier(config, modulation_paths(unet2d), rngs=nnx.Rngs(key)))()


@nnx.jit
def _frozen(unet, x_t, t):
    return unet(x_t, t)


@nnx.jit
def _rectifier_forward(rectifier, x0, estimate, t):
    return rectifier(x0, estimate, t)


def _noise_loss(rectifier, unet, batch):
    """|| eps - eps_theta_hat(x_t) ||^2 (mean) with theta_hat = theta * (1 + a b^T), (a, b) = R(x0, P_t, t);
    also returns the prediction and the modulation."""
    modulation = rectifier(batch["x0"], batch["estimate"], batch["t"])
    prediction = unet(batch["x_t"], batch["t"], modulation=modulation)
    return jnp.mean((prediction - batch["eps"]) ** 2), (prediction, modulation)


@nnx.jit
def _train_step(rectifier, optimizer, unet, batch):
    """One Adam step on R only (nnx.grad differentiates its first argument). Returns, from before the update,
    the loss, the gradients, the modulated prediction and the modulation."""
    (loss, (prediction, modulation)), grads = nnx.value_and_grad(_noise_loss, has_aux=True)(rectifier, unet, batch)
    optimizer.update(rectifier, grads)
    return loss, grads, prediction, modulation


def _trainable(template):
    rectifier = nnx.clone(template)
    return rectifier, nnx.Optimizer(rectifier, ADAM, wrt=nnx.Param)


@pytest.fixture(scope="module")
def batch(unet2d):
    return _make_batch(unet2d)


def _make_batch(unet2d, seed=0):
    """A fixed batch: x0, eps, t, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (linear-beta DDPM schedule), and the
    frozen U-Net's x0 estimate P_t[eps_theta(x_t)] = (x_t - sqrt(1 - abar) eps_theta) / sqrt(abar)."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    eps = rng.standard_normal((BATCH, SIZE, SIZE, 3)).astype(np.float32)
    t = np.array([50, 300, 600, 900], np.int32)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t][:, None, None, None].astype(np.float32)
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    eps_frozen = np.asarray(_frozen(unet2d, x_t, t))
    estimate = (x_t - np.sqrt(1 - abar) * eps_frozen) / np.sqrt(abar)
    return dict(x0=x0, eps=eps, t=t, x_t=x_t, estimate=estimate.astype(np.float32), eps_frozen=eps_frozen)


def _inputs(batch):
    return {key: batch[key] for key in ("x0", "eps", "t", "x_t", "estimate")}


def test_paths_and_shapes_fit_both_unets():
    t = jnp.array([1, 500])
    for model, channels in ((lambda: UNet2DModel(UNET2D, rngs=nnx.Rngs(0)), 3),
                            (lambda: UNet2DConditionModel(UNET_COND, rngs=nnx.Rngs(0)), 4)):
        unet = abstract_module(model)
        # 16 px: a 4x4 feature map, so each subnet runs two stride-2 convs down to 1x1.
        config = RectifierConfig(in_channels=2 * channels, **{**TINY, "image_size": 16})
        assert config.subnet_downsamples == 2
        x = jnp.ones((2, 16, 16, channels))
        # Shapes only (eval_shape): check_modulation reads nothing but the offsets' shapes.
        modulation = abstract_module(lambda: Rectifier(config, modulation_paths(unet), rngs=nnx.Rngs(0))(x, x, t))
        assert list(modulation) == [path for path, _ in modulation_paths(unet)]
        assert len(modulation) == 2 * 2 + 2 * 2 * 2 + 1  # mid: 2 resnets; up: 2 blocks x 2 resnets + 1 upsampler
        check_modulation(unet, modulation, 2)  # raises on any misfit
        assert all(a.dtype == b.dtype == jnp.float32 for a, b in modulation.values())


@pytest.fixture(scope="module")
def first_steps(unet2d, rectifier_template, batch):
    """Two train steps from the initial R: [(loss, grads, prediction, modulation) before step 1, before step 2]."""
    rectifier, optimizer = _trainable(rectifier_template)
    unet_before = _leaves(nnx.state(unet2d))
    steps = [_train_step(rectifier, optimizer, unet2d, _inputs(batch)) for _ in range(2)]
    return steps, rectifier, unet_before


def test_zero_modulation_at_init_is_bit_identical(first_steps, batch):
    (_, _, prediction, modulation), _ = first_steps[0]
    assert all(not np.any(np.asarray(b)) for _, b in modulation.values())  # b = 0 exactly ...
    assert all(np.all(np.asarray(a) != 0) for a, _ in modulation.values())  # ... a random
    # b = 0 exactly makes every modulated conv conv(x) + 0: forward against forward, the outputs are bit-identical
    # (test_unet.py, test_unet2d.py). Here the train step's program (forward and backward) is compared with the
    # forward program, and XLA's unoptimised CPU code (conftest.py) may sum a conv in another order there.
    np.testing.assert_allclose(np.asarray(prediction), batch["eps_frozen"], rtol=0, atol=1e-6)


def test_gradients_reach_b_at_once_then_everything_and_never_the_unet(unet2d, first_steps):
    ((_, grads, _, _), (_, grads_after, _, _)), rectifier, unet_before = first_steps
    # Only R's parameters are differentiated: the gradient has exactly R's parameter leaves.
    assert jax.tree.structure(grads) == jax.tree.structure(nnx.state(rectifier, nnx.Param))
    for subnet in grads["subnets"].values():
        assert _max_abs(subnet["head_b"]) > 0  # a != 0: dL/db = a^T dL/dDelta
        assert _max_abs(subnet["head_a"]) == 0  # b = 0: dL/da = dL/dDelta b = 0, and so upstream of a and b
    assert _max_abs(grads["encoder"]) == 0 and _max_abs(grads["time_embedding"]) == 0
    # After one step b != 0 and every part of R gets a gradient.
    for subnet in grads_after["subnets"].values():
        for name in ("head_a", "head_b", "convs", "time_emb_proj"):
            assert _max_abs(subnet[name]) > 0, name
    for name in ("stem_conv", "stem_bn", "blocks"):
        assert _max_abs(grads_after["encoder"][name]) > 0, name
    assert _max_abs(grads_after["time_embedding"]) > 0
    # The frozen U-Net is untouched by the steps.
    assert all(np.array_equal(u, v) for u, v in zip(unet_before, _leaves(nnx.state(unet2d))))


def test_batch_norm_updates_statistics_in_train_mode_and_uses_them_in_eval_mode(unet2d, rectifier_template, batch,
                                                                                first_steps):
    (_, _, _, modulation), _ = first_steps[0]
    first_a = lambda modulation: np.asarray(next(iter(modulation.values()))[0])[0]
    initial_stats = _leaves(nnx.state(rectifier_template, nnx.BatchStat))
    assert len(initial_stats) == 2 * (1 + 2 + 3)  # mean and var of the stem's, block 1's two, block 2's three BNs
    stepped_stats = _leaves(nnx.state(first_steps[1], nnx.BatchStat))
    assert all(not np.array_equal(u, v) for u, v in zip(initial_stats, stepped_stats))  # every mean and var moved

    # Train mode normalises with the batch's statistics: another batch sharing sample 0 changes its output.
    other = lambda x: np.concatenate([x[:1], x[1:][::-1] * 0.5 + 0.3])
    other_batch = {key: other(value) if key != "t" else value for key, value in _inputs(batch).items()}
    rectifier, optimizer = _trainable(rectifier_template)
    other_modulation = _train_step(rectifier, optimizer, unet2d, other_batch)[3]
    assert not np.allclose(first_a(other_modulation), first_a(modulation), atol=1e-4)

    rectifier.eval()
    stats = lambda: _leaves(nnx.state(rectifier, nnx.BatchStat))
    frozen = stats()
    eval_a = first_a(_rectifier_forward(rectifier, batch["x0"], batch["estimate"], batch["t"]))
    # Eval mode: no updates, sample 0 independent of the others, and the running averages matter.
    assert all(np.array_equal(u, v) for u, v in zip(frozen, stats()))
    np.testing.assert_allclose(first_a(_rectifier_forward(rectifier, other_batch["x0"], other_batch["estimate"],
                                                          batch["t"])), eval_a, rtol=0, atol=1e-5)
    rectifier.encoder.stem_bn.mean.set_value(jnp.asarray(np.asarray(rectifier.encoder.stem_bn.mean[...]) + 1))
    assert not np.allclose(first_a(_rectifier_forward(rectifier, batch["x0"], batch["estimate"], batch["t"])),
                           eval_a, atol=1e-4)


@pytest.fixture(scope="module")
def overfit(unet2d, rectifier_template, batch):
    """Only R trains, with Adam (lr 3e-3), on one fixed (x_t, t, eps) batch; the U-Net stays frozen. losses[k] is
    the loss after k steps (train mode: the batch's BatchNorm statistics)."""
    rectifier, optimizer = _trainable(rectifier_template)
    losses = [float(_train_step(rectifier, optimizer, unet2d, _inputs(batch))[0]) for _ in range(51)]
    return rectifier, losses


def test_short_overfit_beats_the_frozen_unet(overfit, batch):
    _, losses = overfit
    frozen = float(np.mean((batch["eps_frozen"] - batch["eps"]) ** 2))
    zero = float(np.mean(batch["eps"] ** 2))
    print(f"noise-prediction L2: frozen {frozen:.4f}, modulated at init {losses[0]:.4f}, after 50 Adam steps "
          f"{losses[50]:.4f} (ratio {losses[50] / frozen:.3f}); predicting zero gives {zero:.4f}")
    assert losses[0] == pytest.approx(frozen, rel=1e-5)  # starts at the frozen model
    assert losses[50] < 0.7 * frozen
    assert losses[50] < 0.7 * zero  # not merely shrinking the frozen model's output


def test_t_changes_the_output_once_trained(overfit, batch):
    rectifier = nnx.clone(overfit[0])
    rectifier.eval()
    early, late = (_rectifier_forward(rectifier, batch["x0"], batch["estimate"], np.full(BATCH, t, np.int32))
                   for t in (10, 900))
    for path in early:
        b_early, b_late = np.asarray(early[path][1]), np.asarray(late[path][1])
        assert np.any(b_early)  # a nonzero b: the code reaches the output
        assert not np.allclose(b_early, b_late, atol=1e-6), path


@pytest.mark.parametrize("change, message", [
    (dict(in_channels=0), r"in_channels=0 must be an int >= 1"),
    (dict(stage_blocks=()), r"stage_blocks=\(\) must be a non-empty"),
    (dict(stage_blocks=(3, 0)), r"stage_blocks=\(3, 0\) must be"),
    (dict(base_channels=2.5), r"base_channels=2.5 must be an int"),
    (dict(code_dim=-1), r"code_dim=-1 must be"),
    (dict(subnet_channels=0), r"subnet_channels=0 must be an int >= 1"),
    (dict(time_embedding_dim=1), r"time_embedding_dim=1 must be an int >= 2"),
    (dict(image_size=(8,)), r"image_size=\(8,\) must be"),
    (dict(stem_stride=4), r"stem_stride=4 must be 1 or 2"),
    (dict(batch_norm_momentum=1.0), r"batch_norm_momentum=1.0 must be in \[0, 1\)"),
    (dict(a_init_scale=0.0), r"a_init_scale=0.0 must be > 0"),
    (dict(leaky_relu_slope=-0.1), r"leaky_relu_slope=-0.1 must be >= 0"),
])
def test_bad_config_value_is_an_error_naming_it(change, message):
    with pytest.raises(ValueError, match=r"RectifierConfig: " + message):
        RectifierConfig(**change)


def test_bad_layers_and_inputs_are_errors(rectifier_template):
    config = RectifierConfig(in_channels=6, **TINY)
    with pytest.raises(ValueError, match="layers is empty"):
        Rectifier(config, [], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"kernel shape \(3, 3, 8\)"):
        Rectifier(config, [(("mid_block",), (3, 3, 8))], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="more than once"):
        Rectifier(config, [(("a",), (3, 3, 8, 8))] * 2, rngs=nnx.Rngs(0))
    x = jnp.ones((2, SIZE, SIZE, 3))
    with pytest.raises(ValueError, match=r"config.in_channels=6"):
        rectifier_template(x[..., :2], x[..., :2], jnp.zeros(2))
    with pytest.raises(ValueError, match=r"t has shape \(3,\)"):
        rectifier_template(x, x, jnp.zeros(3))


def test_config_sizes_follow_the_resnet_layout():
    resnet34 = RectifierConfig()  # the paper's: 6 channels at 256 px -> HyperStyle's 16x16x512 map
    assert (resnet34.feature_size, resnet34.feature_channels, resnet34.subnet_downsamples) == ((16, 16), 512, 4)
    assert RectifierConfig(**TINY).feature_size == (1, 1) and RectifierConfig(**TINY).subnet_downsamples == 0
    assert RectifierConfig(image_size=(32, 20), stem_stride=1).feature_size == (4, 3)
    assert RectifierConfig(stage_blocks=[1, 1]).stage_blocks == (1, 1)  # frozen, hashable: static under jit
    hash(RectifierConfig(**TINY))


def test_resnet34_layout_and_hyperstyle_subnets():
    rectifier = abstract_module(lambda: Rectifier(RectifierConfig(), [(("conv",), (3, 3, 32, 64))], rngs=nnx.Rngs(0)))
    blocks = rectifier.encoder.blocks
    assert len(blocks) == 3 + 4 + 6 + 3 and rectifier.encoder.stem_conv.kernel.shape == (7, 7, 6, 64)
    assert [block.conv1.strides for block in blocks if block.shortcut_conv is not None] == [2, 2, 2]
    subnet = rectifier.subnets[0]
    assert [conv.kernel.shape for conv in subnet.convs] == [(3, 3, 512, 256)] + [(3, 3, 256, 256)] * 3 + [
        (3, 3, 256, 512)]
    assert subnet.head_a.kernel.shape == (512, 3 * 3 * 32) and subnet.head_b.kernel.shape == (512, 3 * 3 * 64)
