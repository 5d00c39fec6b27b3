"""UNet2DModel (unconditional pixel-space DDPM U-Nets): parity with diffusers, exact export round trips, the
former attention names, config errors, and the modulation hook."""
import json
import re

import diffusers
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file

from editdiff.interop.diffusers_unet import DEPRECATED_ATTENTION_NAMES, export_unet2d, load_unet2d
from editdiff.interop.torch_io import CheckpointError
from editdiff.nn.unet import modulation_paths
from editdiff.nn.unet2d import UNet2DConfig
from unet_testing import (apply, assert_same_state_dict, randomize, random_modulation, to_nchw, to_nhwc,
                          with_modulated_kernels)

TINY = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8)

CONFIGS = {
    # heads of width 8, mid-block attention norm with its own group count, input centring, two layers per block
    "default_attention": dict(TINY, attention_head_dim=8, attn_norm_num_groups=4, center_input_sample=True,
                              layers_per_block=2),
    # google/ddpm-cifar10-32 style settings with scale-shift resnets: one head per attention, no norm before the
    # mid-block attention, sin/cos order and frequency shift, bottom/right-padded downsampling
    "scale_shift_attention": dict(TINY, resnet_time_scale_shift="scale_shift", attention_head_dim=None,
                                  flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6,
                                  mid_block_scale_factor=1.5),
    # no attention anywhere (and no mid block), other channel counts and time embedding width
    "no_attention": dict(TINY, in_channels=1, out_channels=2, down_block_types=("DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False, mid_block_type=None,
                         time_embedding_dim=48),
}
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _saved(tmp_path_factory, config, seed=0):
    reference = randomize(diffusers.UNet2DModel(**config), seed)
    directory = tmp_path_factory.mktemp("unet2d")
    reference.save_pretrained(directory)
    return reference, directory


def _inputs(config, batch=2, size=16, seed=0):
    sample = np.random.default_rng(seed).standard_normal((batch, size, size, config["in_channels"]))
    return sample.astype(np.float32), np.array([3, 817][:batch], np.int64)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_diffusers(name, tmp_path_factory):
    reference, directory = _saved(tmp_path_factory, CONFIGS[name])
    sample, timesteps = _inputs(CONFIGS[name])
    with torch.no_grad():
        expected = to_nhwc(reference(to_nchw(sample), torch.from_numpy(timesteps)).sample)
    got = np.asarray(apply(load_unet2d(directory), jnp.asarray(sample), jnp.asarray(timesteps)))
    error = float(np.abs(got - expected).max())
    print(f"{name}: max abs error vs diffusers {error:.3g} (output scale {np.abs(expected).max():.3g})")
    assert got.shape == expected.shape
    assert error <= 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_round_trip_is_exact(name, tmp_path):
    original = randomize(diffusers.UNet2DModel(**CONFIGS[name]), 0)
    original.save_pretrained(tmp_path / "original")
    export_unet2d(load_unet2d(tmp_path / "original"), tmp_path / "exported")
    reloaded, info = diffusers.UNet2DModel.from_pretrained(tmp_path / "exported", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys, no errors
    assert_same_state_dict(reloaded.state_dict(), original.state_dict())
    for key, value in original.config.items():
        if not key.startswith("_"):
            assert json.dumps(reloaded.config[key]) == json.dumps(value), key


def test_loads_the_former_attention_block_names(tmp_path_factory):
    _, directory = _saved(tmp_path_factory, CONFIGS["default_attention"])
    state = load_file(str(directory / WEIGHTS))
    former = {new: old for old, new in DEPRECATED_ATTENTION_NAMES.items()}
    pattern = re.compile(r"(\.attentions\.\d+\.)(to_q|to_k|to_v|to_out\.0)\.")
    legacy = {pattern.sub(lambda m: f"{m[1]}{former[m[2]]}.", key): value for key, value in state.items()}
    assert "mid_block.attentions.0.query.weight" in legacy and "up_blocks.0.attentions.2.proj_attn.bias" in legacy
    assert not any(".to_q." in key or ".to_out." in key for key in legacy)
    legacy_dir = tmp_path_factory.mktemp("legacy")
    (legacy_dir / "config.json").write_text((directory / "config.json").read_text())
    save_file(legacy, str(legacy_dir / WEIGHTS))
    current = dict(nnx.to_flat_state(nnx.state(load_unet2d(directory), nnx.Param)))
    for path, param in nnx.to_flat_state(nnx.state(load_unet2d(legacy_dir), nnx.Param)):
        np.testing.assert_array_equal(np.asarray(param[...]), np.asarray(current[path][...]))


@pytest.mark.parametrize("change, message", [
    ({"time_embedding_type": "fourier"}, r"time_embedding_type='fourier' \(only 'positional' is supported\)"),
    ({"class_embed_type": "timestep"}, r"class_embed_type='timestep' \(only None is supported\)"),
    ({"num_class_embeds": 10}, r"num_class_embeds=10 \(only None is supported\)"),
    ({"upsample_type": "resnet"}, r"upsample_type='resnet' \(only 'conv' is supported\)"),
    ({"down_block_types": ("SkipDownBlock2D", "AttnDownBlock2D")}, "down_block_types='SkipDownBlock2D' is not supp"),
    ({"mid_block_type": "UNetMidBlock2DCrossAttn"}, "mid_block_type='UNetMidBlock2DCrossAttn' is not supported"),
    ({"resnet_time_scale_shift": "ada_group"}, "resnet_time_scale_shift='ada_group' is not supported"),
    ({"attention_head_dim": 12}, r"attention_head_dim=12 must divide the channels of every block with attention"),
    ({"made_up_key": 3}, r"made_up_key=3 \(unknown key\)"),
])
def test_unsupported_config_is_an_error_naming_it(change, message):
    with pytest.raises(ValueError, match=message):
        UNet2DConfig.from_diffusers({**TINY, **change})


def test_unsupported_checkpoint_is_a_checkpoint_error(tmp_path_factory):
    _, directory = _saved(tmp_path_factory, TINY)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "time_embedding_type": "fourier"}))
    with pytest.raises(CheckpointError, match="time_embedding_type='fourier'"):
        load_unet2d(directory)


def test_config_round_trips_through_diffusers_dict():
    config = UNet2DConfig.from_diffusers(CONFIGS["scale_shift_attention"])
    assert UNet2DConfig.from_diffusers(config.to_diffusers()) == config
    hash(config)  # static under jit


@pytest.fixture(scope="module")
def scale_shift_model(tmp_path_factory):
    return load_unet2d(_saved(tmp_path_factory, CONFIGS["scale_shift_attention"], seed=1)[1])


def test_modulation_paths_are_the_mid_and_up_block_convs(scale_shift_model):
    paths = dict(modulation_paths(scale_shift_model))
    # mid: 2 resnets; up: 2 blocks x 2 resnets, one upsampler; two convs per resnet
    assert len(paths) == 2 * 2 + 2 * 2 * 2 + 1
    assert paths[("mid_block", "resnets", 1, "conv2")] == (3, 3, 32, 32)
    assert paths[("up_blocks", 0, "resnets", 0, "conv1")] == (3, 3, 64, 32)
    assert paths[("up_blocks", 0, "upsample", "conv")] == (3, 3, 32, 32)
    assert not any("conv_shortcut" in path or path[0] == "down_blocks" for path in paths)


def test_zero_modulation_is_bit_identical(scale_shift_model):
    sample, timesteps = map(jnp.asarray, _inputs(CONFIGS["scale_shift_attention"]))
    zeros = random_modulation(scale_shift_model, 2, scale=0.0)
    assert jnp.array_equal(apply(scale_shift_model, sample, timesteps, modulation=zeros),
                           apply(scale_shift_model, sample, timesteps))


def test_modulation_equals_the_materialised_kernels(scale_shift_model):
    sample, timesteps = map(jnp.asarray, _inputs(CONFIGS["scale_shift_attention"], batch=1))
    modulation = random_modulation(scale_shift_model, 1, seed=3)
    got = np.asarray(apply(scale_shift_model, sample, timesteps, modulation=modulation))
    want = np.asarray(apply(with_modulated_kernels(scale_shift_model, modulation), sample, timesteps))
    unmodulated = np.asarray(apply(scale_shift_model, sample, timesteps))
    error = float(np.abs(got - want).max())
    print(f"modulated vs materialised kernels: max abs error {error:.3g} "
          f"(modulation changed the output by {np.abs(want - unmodulated).max():.3g})")
    assert np.abs(want - unmodulated).max() > 0.1
    assert error <= 1e-4
