"""ControlNetModel: parity with diffusers for every residual, the U-Net consuming them, from_unet."""
import dataclasses

import diffusers
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from editdiff.interop.diffusers_unet import load_controlnet, load_unet
from editdiff.nn.controlnet import ControlNetConfig, ControlNetModel
from unet_testing import SD1_TINY, apply, randomize, to_nchw, to_nhwc

HINT_CHANNELS = (4, 8, 8, 16)  # four stages: the hint is 8x the latent size, as for SD
LATENT = (2, 8, 12)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(diffusers U-Net, diffusers ControlNet, our U-Net, our ControlNet), all random, ControlNet's zero
    convs included."""
    torch_unet = randomize(diffusers.UNet2DConditionModel(**SD1_TINY), 0)
    torch_controlnet = randomize(diffusers.ControlNetModel.from_unet(
        torch_unet, conditioning_embedding_out_channels=HINT_CHANNELS), 1)
    unet_dir, controlnet_dir = tmp_path_factory.mktemp("unet"), tmp_path_factory.mktemp("controlnet")
    torch_unet.save_pretrained(unet_dir)
    torch_controlnet.save_pretrained(controlnet_dir)
    return torch_unet, torch_controlnet, load_unet(unet_dir), load_controlnet(controlnet_dir)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    batch, h, w = LATENT
    sample = rng.standard_normal((batch, h, w, 4)).astype(np.float32)
    timesteps = np.array([12, 640])
    context = rng.standard_normal((batch, 5, SD1_TINY["cross_attention_dim"])).astype(np.float32)
    hint = rng.uniform(0, 1, (batch, 8 * h, 8 * w, 3)).astype(np.float32)
    return sample, timesteps, context, hint


def _torch_residuals(torch_controlnet, inputs, scale):
    sample, timesteps, context, hint = inputs
    with torch.no_grad():
        return torch_controlnet(to_nchw(sample), torch.from_numpy(timesteps), torch.from_numpy(context),
                                to_nchw(hint), conditioning_scale=scale, return_dict=False)


def test_every_residual_matches_diffusers(models, inputs):
    _, torch_controlnet, _, controlnet = models
    expected_down, expected_mid = _torch_residuals(torch_controlnet, inputs, 0.7)
    down, mid = apply(controlnet, *map(jnp.asarray, inputs), conditioning_scale=0.7)
    assert len(down) == len(expected_down) == 4
    errors = [float(np.abs(np.asarray(got) - to_nhwc(want)).max())
              for got, want in zip((*down, mid), (*expected_down, expected_mid))]
    print(f"ControlNet residuals: max abs error vs diffusers per residual {[f'{e:.3g}' for e in errors]}")
    assert max(errors) <= 1e-4


def test_unet_adds_residuals_as_diffusers_does(models, inputs):
    torch_unet, torch_controlnet, unet, _ = models
    sample, timesteps, context, _ = inputs
    torch_down, torch_mid = _torch_residuals(torch_controlnet, inputs, 1.0)
    # A None residual adds nothing: diffusers gets zeros in its place.
    torch_down = (torch.zeros_like(torch_down[0]), *torch_down[1:])
    with torch.no_grad():
        expected = to_nhwc(torch_unet(to_nchw(sample), torch.from_numpy(timesteps), torch.from_numpy(context),
                                      down_block_additional_residuals=torch_down,
                                      mid_block_additional_residual=torch_mid).sample)
    down = (None, *(jnp.asarray(to_nhwc(r)) for r in torch_down[1:]))
    got = apply(unet, jnp.asarray(sample), jnp.asarray(timesteps), jnp.asarray(context), down_residuals=down,
                mid_residual=jnp.asarray(to_nhwc(torch_mid)))
    error = float(np.abs(np.asarray(got) - expected).max())
    print(f"U-Net with ControlNet residuals: max abs error vs diffusers {error:.3g}")
    assert error <= 1e-4


def test_from_unet_copies_the_encoder_and_starts_at_zero(models, inputs):
    _, _, unet, _ = models
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS,
                                           rngs=nnx.Rngs(3))
    assert controlnet.config == ControlNetConfig.from_diffusers(
        {**ControlNetConfig.from_unet(unet.config).to_diffusers(),
         "conditioning_embedding_out_channels": list(HINT_CHANNELS)})
    for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        copied = nnx.to_flat_state(nnx.state(getattr(controlnet, name), nnx.Param))
        original = dict(nnx.to_flat_state(nnx.state(getattr(unet, name), nnx.Param)))
        for path, param in copied:
            np.testing.assert_array_equal(np.asarray(param[...]), np.asarray(original[path][...]))
    down, mid = apply(controlnet, *map(jnp.asarray, inputs), conditioning_scale=0.7)  # same trace as above
    assert all(not np.any(np.asarray(r)) for r in (*down, mid)), "fresh ControlNet residuals must be zero"
    assert np.any(np.asarray(controlnet.controlnet_cond_embedding.conv_in.kernel[...]))

    # Training the copy must not touch the U-Net.
    before = np.asarray(unet.conv_in.kernel[...]).copy()
    controlnet.conv_in.kernel[...] = controlnet.conv_in.kernel[...] + 1.0
    np.testing.assert_array_equal(np.asarray(unet.conv_in.kernel[...]), before)


@pytest.mark.parametrize("change, message", [
    (dict(time_embedding_dim=64), "time_embedding_dim=64; diffusers' ControlNetModel supports only None"),
    (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift='scale_shift'; our ControlNetModel"),
    (dict(class_embed_type="projection", projection_class_embeddings_input_dim=3), "class_embed_type='projection'"),
])
def test_from_unet_rejects_a_unet_the_controlnet_cannot_mirror(models, change, message):
    _, _, unet, _ = models
    with pytest.raises(ValueError, match=message):
        ControlNetConfig.from_unet(dataclasses.replace(unet.config, **change))


@pytest.mark.parametrize("change, message", [
    ({"controlnet_conditioning_channel_order": "bgr"}, "controlnet_conditioning_channel_order='bgr'"),
    ({"global_pool_conditions": True}, "global_pool_conditions=True"),
    ({"layers_per_block": [1, 2]}, r"layers_per_block=\(1, 2\) must be an int"),
])
def test_unsupported_config_is_an_error_naming_it(change, message):
    base = ControlNetConfig(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            norm_num_groups=8).to_diffusers()
    with pytest.raises(ValueError, match=message):
        ControlNetConfig.from_diffusers({**base, **change})
