"""UNet2DConditionModel: parity with diffusers (float32, random weights), config checks, bf16, jit + grad."""
import dataclasses

import diffusers
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from editdiff.interop.diffusers_unet import load_unet
from editdiff.nn.controlnet import ControlNetConfig, ControlNetModel
from editdiff.nn.layers import Attention
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig, embed_timesteps, modulation_paths
from editdiff.tracing import abstract_module
from unet_testing import SD1_TINY, apply, randomize, random_modulation, to_nchw, to_nhwc, with_modulated_kernels

PARITY_CONFIGS = {
    # batch 2, non-square latent
    "sd1_conv_proj": (SD1_TINY, (2, 8, 12), 7),
    "sd2_linear_proj_per_block_heads_upcast": (dict(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=40,
        attention_head_dim=(2, 4), transformer_layers_per_block=(2, 1), use_linear_projection=True,
        upcast_attention=True, norm_num_groups=8), (2, 8, 16), 5),
    # first block without attention; odd latent size (upsampling to the skip's size); per-block layer counts
    "first_block_down_block_odd_latent": (dict(
        sample_size=8, block_out_channels=(16, 32), layers_per_block=(1, 2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=12,
        attention_head_dim=2, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
        mid_block_scale_factor=1.5, norm_num_groups=8, norm_eps=1e-6), (2, 9, 6), 3),
    # a per-example vector through the class embedding into every ResNet, which it scales and shifts
    "class_projection_scale_shift": (dict(
        SD1_TINY, class_embed_type="projection", projection_class_embeddings_input_dim=9,
        resnet_time_scale_shift="scale_shift"), (2, 8, 8), 7),
    # the Palette++ baseline: no cross-attention anywhere, concatenated inputs
    "no_cross_attention": (dict(
        sample_size=8, in_channels=9, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D", norm_num_groups=8), (2, 8, 8), None),
}


def _reference_and_ours(tmp_path_factory, diffusers_config, seed=0):
    reference = randomize(diffusers.UNet2DConditionModel(**diffusers_config), seed)
    directory = tmp_path_factory.mktemp("unet")
    reference.save_pretrained(directory)
    return reference, load_unet(directory), directory


def _inputs(config, shape, context_len, seed=0):
    """(sample, timesteps, context or None, class labels or None) for a diffusers `config`."""
    rng = np.random.default_rng(seed)
    batch, h, w = shape
    sample = rng.standard_normal((batch, h, w, config.get("in_channels", 4))).astype(np.float32)
    timesteps = np.array([3, 817][:batch], np.int64)
    context = (None if context_len is None else
               rng.standard_normal((batch, context_len, config["cross_attention_dim"])).astype(np.float32))
    labels_dim = config.get("projection_class_embeddings_input_dim")
    labels = None if labels_dim is None else rng.standard_normal((batch, labels_dim)).astype(np.float32)
    return sample, timesteps, context, labels


def _optional(array, convert):
    return None if array is None else convert(array)


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_matches_diffusers(name, tmp_path_factory):
    diffusers_config, shape, context_len = PARITY_CONFIGS[name]
    reference, ours, _ = _reference_and_ours(tmp_path_factory, diffusers_config)
    sample, timesteps, context, labels = _inputs(diffusers_config, shape, context_len)
    with torch.no_grad():
        expected = to_nhwc(reference(to_nchw(sample), torch.from_numpy(timesteps),
                                     _optional(context, torch.from_numpy),
                                     class_labels=_optional(labels, torch.from_numpy)).sample)
    got = np.asarray(apply(ours, jnp.asarray(sample), jnp.asarray(timesteps), _optional(context, jnp.asarray),
                           class_labels=_optional(labels, jnp.asarray)))
    error = float(np.abs(got - expected).max())
    print(f"{name}: max abs error vs diffusers {error:.3g} (output scale {np.abs(expected).max():.3g})")
    assert got.shape == expected.shape
    assert error <= 1e-4


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return _reference_and_ours(tmp_path_factory, SD1_TINY, seed=1)


def test_scalar_timestep_broadcasts_over_batch(sd1):
    _, ours, _ = sd1
    scalar = embed_timesteps(ours.time_embedding, ours.config, 250, 2, jnp.float32)
    per_example = embed_timesteps(ours.time_embedding, ours.config, jnp.array([250, 250]), 2, jnp.float32)
    assert scalar.shape == (2, ours.config.time_embed_dim)
    np.testing.assert_array_equal(np.asarray(scalar), np.asarray(per_example))


def test_bfloat16_compute_keeps_float32_params(sd1):
    _, ours, directory = sd1
    ours_bf16 = load_unet(directory, dtype=jnp.bfloat16)
    assert {p[...].dtype for _, p in nnx.to_flat_state(nnx.state(ours_bf16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    # The shapes of the sd1 parity case: the float32 forward is already compiled.
    sample, timesteps, context = _inputs(SD1_TINY, (2, 8, 12), 7)[:3]
    args = jnp.asarray(sample), jnp.asarray(timesteps), jnp.asarray(context)
    reference, got = np.asarray(apply(ours, *args)), apply(ours_bf16, *args)
    assert got.dtype == jnp.bfloat16
    relative = np.abs(np.asarray(got, np.float32) - reference).max() / np.abs(reference).max()
    print(f"bfloat16 vs float32: max abs error / output scale {relative:.3g}")
    assert relative < 0.05


def test_remat_keeps_the_prediction_and_the_gradients(sd1):
    """Activation checkpointing recomputes the blocks in the backward pass: the same numbers, less memory."""
    import jax

    _, ours, directory = sd1
    remat = load_unet(directory)
    remat.remat = True
    sample, timesteps, context = (jnp.asarray(x) for x in _inputs(SD1_TINY, (2, 8, 12), 7)[:3])

    def loss_and_grads(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p, rest)(sample, timesteps, context) ** 2)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(params)

    (plain_loss, plain_grads), (remat_loss, remat_grads) = loss_and_grads(ours), loss_and_grads(remat)
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), remat_grads, plain_grads)


def test_attention_implementation_reaches_every_attention():
    config = UNetConfig.from_diffusers(SD1_TINY)
    model = abstract_module(lambda: UNet2DConditionModel(config, rngs=nnx.Rngs(0), attention_implementation="cudnn"))
    controlnet = abstract_module(lambda: ControlNetModel(ControlNetConfig.from_unet(config), rngs=nnx.Rngs(0),
                                                        attention_implementation="cudnn"))
    for module in (model, controlnet):
        attentions = [m for _, m in nnx.iter_graph(module) if isinstance(m, Attention)]
        assert attentions and {a.implementation for a in attentions} == {"cudnn"}


def test_missing_context_is_an_error_when_cross_attention_exists(sd1):
    _, ours, _ = sd1
    with pytest.raises(ValueError, match="encoder_hidden_states is None"):
        ours(jnp.zeros((1, 8, 8, 4)), 1, None)


def test_wrong_number_of_down_residuals_is_an_error(sd1):
    _, ours, _ = sd1
    with pytest.raises(ValueError, match="2 down_residuals given, the U-Net has 4 skip connections"):
        ours(jnp.zeros((1, 8, 8, 4)), 1, jnp.zeros((1, 3, 24)), down_residuals=(None, None))


def test_modulation_paths_are_the_mid_and_up_block_convs(sd1):
    _, ours, _ = sd1
    paths = dict(modulation_paths(ours))
    # mid: 2 resnets; up: 2 blocks x 2 resnets, one upsampler; two convs per resnet
    assert len(paths) == 2 * 2 + 2 * 2 * 2 + 1
    assert paths[("up_blocks", 1, "resnets", 0, "conv1")] == (3, 3, 96, 32)
    assert paths[("up_blocks", 0, "upsample", "conv")] == (3, 3, 64, 64)
    assert all(path[0] in ("mid_block", "up_blocks") and "conv_shortcut" not in path for path in paths)


def test_zero_modulation_is_bit_identical(sd1):
    _, ours, _ = sd1
    sample, timesteps, context = map(jnp.asarray, _inputs(SD1_TINY, (2, 8, 12), 7)[:3])
    zeros = random_modulation(ours, 2, scale=0.0)
    assert jnp.array_equal(apply(ours, sample, timesteps, context, modulation=zeros),
                           apply(ours, sample, timesteps, context))


def test_modulation_equals_the_materialised_kernels(sd1):
    _, ours, _ = sd1
    sample, timesteps, context = map(jnp.asarray, _inputs(SD1_TINY, (1, 8, 12), 7)[:3])
    modulation = random_modulation(ours, 1, seed=4)
    got = np.asarray(apply(ours, sample, timesteps, context, modulation=modulation))
    want = np.asarray(apply(with_modulated_kernels(ours, modulation), sample, timesteps, context))
    error = float(np.abs(got - want).max())
    print(f"modulated vs materialised kernels: max abs error {error:.3g}")
    assert np.abs(want - np.asarray(apply(ours, sample, timesteps, context))).max() > 0.1
    assert error <= 1e-4


def test_modulation_of_an_unknown_conv_or_with_wrong_shapes_is_an_error(sd1):
    _, ours, _ = sd1
    offsets = random_modulation(ours, 1)[("mid_block", "resnets", 0, "conv1")]
    with pytest.raises(ValueError, match=r"\('down_blocks', 0, 'resnets', 0, 'conv1'\) is not a conv of the mid or up"):
        ours(jnp.zeros((1, 8, 8, 4)), 1, jnp.zeros((1, 3, 24)),
             modulation={("down_blocks", 0, "resnets", 0, "conv1"): offsets})
    with pytest.raises(ValueError, match=r"\('up_blocks', 1, 'resnets', 0, 'conv1'\): offsets of shapes "
                                         r"\(\(1, 3, 3, 64\), \(1, 3, 3, 64\)\), expected a \(1, 3, 3, 96\) "
                                         r"and b \(1, 3, 3, 32\)"):
        ours(jnp.zeros((1, 8, 8, 4)), 1, jnp.zeros((1, 3, 24)),
             modulation={("up_blocks", 1, "resnets", 0, "conv1"): offsets})


def test_config_round_trips_through_diffusers_dict():
    config = UNetConfig.from_diffusers(PARITY_CONFIGS["first_block_down_block_odd_latent"][0])
    assert UNetConfig.from_diffusers(config.to_diffusers()) == config
    assert config.layers_per_block == (1, 2)


def test_config_accepts_metadata_and_default_valued_unsupported_keys():
    config = UNetConfig.from_diffusers({**SD1_TINY, "_class_name": "UNet2DConditionModel",
                                        "_diffusers_version": "0.42.1", "dropout": 0.0, "class_embed_type": None})
    assert config.block_out_channels == (32, 64)


@pytest.mark.parametrize("change, message", [
    ({"down_block_types": ("AttnDownBlock2D", "DownBlock2D")}, "down_block_types='AttnDownBlock2D'"),
    ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid_block_type='UNetMidBlock2DSimpleCrossAttn'"),
    ({"class_embed_type": "timestep"}, r"class_embed_type='timestep' is not supported; allowed: None, 'projection'"),
    ({"class_embed_type": "projection"}, "projection_class_embeddings_input_dim, a positive int"),
    ({"resnet_time_scale_shift": "scale"}, "resnet_time_scale_shift='scale' is not supported"),
    ({"dropout": 0.1}, r"dropout=0.1 \(only 0.0 is supported\)"),
    ({"made_up_key": 3}, r"made_up_key=3 \(unknown key\)"),
    ({"attention_head_dim": (2, 4, 8)}, "attention_head_dim=.* one entry per block"),
])
def test_unsupported_config_is_an_error_naming_it(change, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig.from_diffusers({**SD1_TINY, **change})


def test_config_is_frozen_and_hashable_even_from_lists():
    config = UNetConfig(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], norm_num_groups=8)
    assert config.block_out_channels == (32, 64)
    hash(config)  # static under jit
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.in_channels = 3
