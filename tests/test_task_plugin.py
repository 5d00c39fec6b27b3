"""The Task-Plugin's branches (editdiff/heads/task_plugin.py): shapes, the SCB's residuals on the U-Net's first
skip connections only, a fresh plugin leaving the frozen U-Net's prediction unchanged (bit-identical), its
config derived from the U-Net, and its PyTorch export (diffusers parts) reproducing both branches."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editdiff.heads.task_plugin import TaskPlugin, TaskPluginConfig, down_residuals_for
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig, num_skip_connections
from unet_testing import SD1_TINY

CLIP_WIDTH, TOKENS = 16, 5


@pytest.fixture(scope="module")
def parts():
    """(frozen tiny SD-1.x-like U-Net, a fresh plugin of it, inputs: z_t, t, CLIP tokens, the input's latent)."""
    config = UNetConfig.from_diffusers(SD1_TINY)
    unet = UNet2DConditionModel(config, rngs=nnx.Rngs(0))
    plugin = TaskPlugin(TaskPluginConfig.from_unet(config, clip_width=CLIP_WIDTH, prompt_width=20), rngs=nnx.Rngs(1))
    keys = jax.random.split(jax.random.key(2), 3)
    inputs = (jax.random.normal(keys[0], (2, 8, 8, 4)), jnp.array([10, 700]),
              jax.random.normal(keys[1], (2, TOKENS, CLIP_WIDTH)), jax.random.normal(keys[2], (2, 8, 8, 4)))
    return unet, plugin, inputs


def _predict(unet, plugin, inputs):
    z_t, t, tokens, latent = inputs
    prompt, residuals = plugin(tokens, latent, t)
    return unet(z_t, t, prompt, down_residuals=down_residuals_for(unet.config, residuals)), prompt, residuals


def test_branch_shapes_and_residuals_on_the_first_skips_only(parts):
    unet, plugin, inputs = parts
    _, prompt, residuals = nnx.jit(_predict)(unet, plugin, inputs)
    assert prompt.shape == (2, TOKENS, 24)  # the U-Net's cross_attention_dim
    assert [r.shape for r in residuals] == [(2, 8, 8, 32)] * 2  # conv_in's and down_blocks[0]'s one layer
    placed = down_residuals_for(unet.config, residuals)
    assert len(placed) == num_skip_connections(unet.config) == 4
    assert placed[2:] == (None, None)  # the downsampler's and the second stage's skips get nothing


def test_a_fresh_plugin_leaves_the_frozen_unet_prediction_unchanged(parts):
    unet, plugin, inputs = parts
    z_t, t, tokens, latent = inputs
    predicted, prompt, residuals = nnx.jit(_predict)(unet, plugin, inputs)
    assert all(np.all(np.asarray(r) == 0) for r in residuals)  # zero-initialised 1x1 convs
    plain = nnx.jit(lambda u, z, t, c: u(z, t, c))(unet, z_t, t, prompt)
    np.testing.assert_array_equal(np.asarray(predicted), np.asarray(plain))


def test_trained_residuals_change_the_prediction_through_the_first_skips(parts):
    unet, plugin, inputs = parts
    z_t, t, tokens, latent = inputs
    trained = nnx.clone(plugin)
    for i, conv in enumerate(trained.spatial.zero_convs):
        conv.kernel.set_value(0.1 * jax.random.normal(jax.random.key(10 + i), conv.kernel[...].shape))
    predicted, prompt, residuals = nnx.jit(_predict)(unet, trained, inputs)
    plain = nnx.jit(lambda u, z, t, c: u(z, t, c))(unet, z_t, t, prompt)
    assert all(np.abs(np.asarray(r)).max() > 0 for r in residuals)
    assert np.abs(np.asarray(predicted) - np.asarray(plain)).max() > 1e-4


def test_config_follows_the_unets_first_stage_and_bad_shapes_are_errors():
    demo_like = UNetConfig.from_diffusers({**SD1_TINY, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                                           "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                                           "layers_per_block": (2, 1), "attention_head_dim": (2, 4)})
    config = TaskPluginConfig.from_unet(demo_like, clip_width=CLIP_WIDTH)
    spatial = config.spatial
    assert spatial.down_block_types == ("CrossAttnDownBlock2D",)  # the SCB attends to the prompt regardless
    assert (spatial.block_out_channels, spatial.layers_per_block, spatial.attention_head_dim) == ((32,), 2, 2)
    assert config.prompt_width == CLIP_WIDTH and config.num_residuals == 3 and config.context_dim == 24
    with pytest.raises(ValueError, match=r"spatial.down_block_types=.* must be \('CrossAttnDownBlock2D',\)"):
        dataclasses.replace(config, spatial=dataclasses.replace(
            spatial, down_block_types=("CrossAttnDownBlock2D",) * 2, block_out_channels=(32, 64)))
    sd1 = UNetConfig.from_diffusers(SD1_TINY)  # one layer in its first stage: two skips
    with pytest.raises(ValueError, match="3 residuals; the U-Net's first stage has 2 skip connections"):
        down_residuals_for(sd1, [jnp.zeros((1, 8, 8, 32))] * 3)


def test_the_pytorch_export_reproduces_the_jax_branches(parts, tmp_path):
    import torch

    from editdiff.interop.task_plugin import export_task_plugin, load_torch_task_plugin

    _, plugin, (_, t, tokens, latent) = parts
    trained = nnx.clone(plugin)  # residual convs away from zero, so that the SCB's path is compared too
    for i, conv in enumerate(trained.spatial.zero_convs):
        conv.kernel.set_value(0.1 * jax.random.normal(jax.random.key(20 + i), conv.kernel[...].shape))
        conv.bias.set_value(0.1 * jax.random.normal(jax.random.key(30 + i), conv.bias[...].shape))
    prompt, residuals = nnx.jit(lambda p, *a: p(*a))(trained, tokens, latent, t)
    export_task_plugin(trained, tmp_path)
    module = load_torch_task_plugin(tmp_path)
    with torch.no_grad():
        theirs_prompt, theirs = module(torch.from_numpy(np.array(tokens)),
                                       torch.from_numpy(np.asarray(latent).transpose(0, 3, 1, 2).copy()),
                                       torch.from_numpy(np.array(t)))
    errors = [np.abs(theirs_prompt.numpy() - np.asarray(prompt)).max()] + [
        np.abs(r.numpy().transpose(0, 2, 3, 1) - np.asarray(ours)).max() for r, ours in zip(theirs, residuals)]
    print(f"Task-Plugin PyTorch export vs JAX: prompt tokens {errors[0]:.2e}, residuals {max(errors[1:]):.2e} "
          "(max abs error)")
    assert len(theirs) == len(residuals) and max(errors) < 1e-4
