"""AutoencoderKL against diffusers (PyTorch, float32): parity, weights both ways, bad input named."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file

from editdiff.interop.diffusers_vae import export_vae, load_vae, vae_rules
from editdiff.interop.name_map import load_state_dict
from editdiff.interop.torch_io import CheckpointError
from editdiff.nn.diagonal_gaussian import DiagonalGaussian
from editdiff.nn.vae import AutoencoderKL, VAEConfig
from editdiff.tracing import abstract_module

TOL = 1e-4
SD15_VAE_CONFIG = {  # stable-diffusion-v1-5/vae/config.json
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4}
WEIGHTS = "diffusion_pytorch_model.safetensors"
TINY = dict(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4, norm_num_groups=4,
            scaling_factor=0.3)


def _torch_vae(seed, **config):
    """A tiny diffusers AutoencoderKL with random weights and non-trivial norm scales and shifts."""
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    torch.manual_seed(seed)
    model = TorchAutoencoderKL(**{**TINY, **config}).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.5 * torch.randn_like(param))
    return model


def _nchw(x):
    return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)


def _nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def _max_error(name, ours, theirs):
    error = float(np.max(np.abs(np.asarray(ours, np.float32) - theirs)))
    print(f"{name}: max abs error {error:.2e}")
    return error


@pytest.fixture(scope="module")
def torch_vae():
    return _torch_vae(0)


@pytest.fixture(scope="module")
def checkpoint(torch_vae, tmp_path_factory):
    directory = tmp_path_factory.mktemp("vae")
    torch_vae.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def flax_vae(checkpoint):
    return load_vae(checkpoint)


@pytest.fixture(scope="module")
def images():
    """Batch 2, non-square: (2, 16, 24, 3) in [-1, 1]."""
    return np.random.RandomState(0).uniform(-1, 1, (2, 16, 24, 3)).astype(np.float32)


@nnx.jit
def _encode(model, x):
    return model.encode(x)


@nnx.jit
def _decode(model, z):
    return model.decode(z)


def test_posterior_matches_diffusers(torch_vae, flax_vae, images):
    with torch.no_grad():
        theirs = torch_vae.encode(_nchw(images)).latent_dist
    ours = _encode(flax_vae, images)
    assert ours.mean.shape == (2, 4, 6, 4) and ours.mean.dtype == jnp.float32
    assert _max_error("posterior mean", ours.mean, _nhwc(theirs.mean)) <= TOL
    assert _max_error("posterior logvar", ours.logvar, _nhwc(theirs.logvar)) <= TOL
    assert _max_error("posterior std", ours.std, _nhwc(theirs.std)) <= TOL
    np.testing.assert_allclose(np.asarray(ours.kl()), theirs.kl().numpy(), rtol=1e-4)


def test_decode_matches_diffusers(torch_vae, flax_vae):
    latents = np.random.RandomState(1).normal(size=(2, 4, 6, 4)).astype(np.float32)
    with torch.no_grad():
        theirs = torch_vae.decode(_nchw(latents)).sample
    ours = _decode(flax_vae, latents)
    assert ours.shape == (2, 16, 24, 3)
    assert _max_error("decode", ours, _nhwc(theirs)) <= TOL


def test_model_attributes(flax_vae):
    assert (flax_vae.scaling_factor, flax_vae.latent_channels, flax_vae.downsample_factor) == (0.3, 4, 4)


def test_sd15_sized_weights_load():
    """SD-1.5's VAE config (scaling factor from diffusers' default): every tensor of that size has a rule."""
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    config = VAEConfig.from_diffusers(SD15_VAE_CONFIG)
    model = abstract_module(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0)))
    assert (model.scaling_factor, model.downsample_factor, model.latent_channels) == (0.18215, 8, 4)
    state = {k: v.numpy() for k, v in TorchAutoencoderKL.from_config(SD15_VAE_CONFIG).state_dict().items()}
    load_state_dict(model, state, vae_rules(model), source="sd15")
    kernel = model.decoder.up_blocks[3].resnets[0].conv_shortcut.kernel[...]
    np.testing.assert_array_equal(np.asarray(kernel), state["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"]
                                  .transpose(2, 3, 1, 0))


def test_sample_draws_around_the_mean():
    mean, logvar = jnp.full((1, 2, 2, 4), 3.0), jnp.full((1, 2, 2, 4), np.log(0.25))
    posterior = DiagonalGaussian(mean=mean, logvar=logvar)
    key = jax.random.key(7)
    np.testing.assert_allclose(np.asarray(posterior.sample(key)),
                               np.asarray(mean + 0.5 * jax.random.normal(key, mean.shape)), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(posterior.mode()), np.asarray(mean))


def test_moments_split_and_clamp_like_diffusers():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = np.random.RandomState(2).normal(scale=20.0, size=(2, 3, 5, 8)).astype(np.float32)
    ours = DiagonalGaussian.from_moments(jnp.asarray(moments))
    theirs = DiagonalGaussianDistribution(_nchw(moments))
    np.testing.assert_array_equal(np.asarray(ours.mean), _nhwc(theirs.mean))
    np.testing.assert_array_equal(np.asarray(ours.logvar), _nhwc(theirs.logvar))
    np.testing.assert_allclose(np.asarray(ours.kl()), theirs.kl().numpy(), rtol=1e-5)


def test_round_trip_through_export_is_exact(torch_vae, flax_vae, tmp_path):
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    export_vae(flax_vae, tmp_path)
    reloaded, info = TorchAutoencoderKL.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    original, exported = torch_vae.state_dict(), reloaded.state_dict()
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(exported[key], value), key
    assert reloaded.config.scaling_factor == 0.3


def test_config_round_trips_through_diffusers_names(torch_vae):
    config = VAEConfig.from_diffusers(dict(torch_vae.config))
    assert config.block_out_channels == (8, 16, 16) and config.norm_num_groups == 4
    exported = config.to_diffusers()
    for key, value in exported.items():
        if not key.startswith("_"):
            expected = torch_vae.config[key]
            assert value == (list(expected) if isinstance(expected, tuple) else expected), key


def test_optional_convs_and_attention_off(tmp_path):
    """use_quant_conv / use_post_quant_conv / mid_block_add_attention False, as diffusers allows."""
    flags = dict(use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)
    torch_vae = _torch_vae(1, **flags)
    torch_vae.save_pretrained(tmp_path / "in")
    model = load_vae(tmp_path / "in")
    assert model.quant_conv is None and model.post_quant_conv is None and model.encoder.mid_block.attention is None
    export_vae(model, tmp_path / "out")
    assert load_file(str(tmp_path / "out" / WEIGHTS)).keys() == torch_vae.state_dict().keys()


def test_loads_deprecated_attention_names(checkpoint, flax_vae, tmp_path):
    """SD-1.x checkpoints as first released call the mid-block attention query / key / value / proj_attn."""
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = load_file(str(checkpoint / WEIGHTS))
    old = {}
    for key, value in state.items():
        for new_name, old_name in renames.items():
            key = key.replace(f"attentions.0.{new_name}.", f"attentions.0.{old_name}.")
        old[key] = value
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in old
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    save_file(old, str(tmp_path / WEIGHTS))
    model = load_vae(tmp_path)
    np.testing.assert_array_equal(np.asarray(model.decoder.mid_block.attention.attention.to_out.kernel[...]),
                                  np.asarray(flax_vae.decoder.mid_block.attention.attention.to_out.kernel[...]))


def test_loads_pytorch_pickle_weights(torch_vae, flax_vae, tmp_path):
    torch_vae.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").exists()
    model = load_vae(tmp_path)
    np.testing.assert_array_equal(np.asarray(model.encoder.conv_in.kernel[...]),
                                  np.asarray(flax_vae.encoder.conv_in.kernel[...]))


def test_missing_weights_file_is_named(checkpoint, tmp_path):
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        load_vae(tmp_path)


def test_misshaped_tensor_is_named(checkpoint, tmp_path):
    state = load_file(str(checkpoint / WEIGHTS))
    state["decoder.conv_out.weight"] = np.zeros((3, 8, 1, 1), np.float32)
    del state["encoder.conv_in.bias"]
    state["encoder.extra.weight"] = np.zeros((1,), np.float32)
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    save_file(state, str(tmp_path / WEIGHTS))
    with pytest.raises(CheckpointError) as error:
        load_vae(tmp_path)
    message = str(error.value)
    assert "mis-shaped tensors (1): decoder.conv_out.weight" in message
    assert "missing keys (1): encoder.conv_in.bias" in message
    assert "unexpected keys (1): encoder.extra.weight" in message


@pytest.mark.parametrize("key, value, named", [
    ("use_tiling_everywhere", True, "unsupported key.*use_tiling_everywhere"),
    ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], "AttnDownEncoderBlock2D"),
    ("shift_factor", 0.1159, "shift_factor=0.1159"),
    ("norm_num_groups", 3, "norm_num_groups=3"),
    ("scaling_factor", -1.0, "scaling_factor=-1.0"),
    ("_class_name", "AutoencoderTiny", "_class_name='AutoencoderTiny'"),
])
def test_unsupported_config_is_named(checkpoint, tmp_path, key, value, named):
    config = json.loads((checkpoint / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    os.symlink(checkpoint / WEIGHTS, tmp_path / WEIGHTS)
    with pytest.raises(CheckpointError, match=named):
        load_vae(tmp_path)


def test_bfloat16_compute_keeps_float32_params(flax_vae, images):
    model = abstract_module(lambda: AutoencoderKL(flax_vae.config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16))
    nnx.update(model, nnx.state(flax_vae))
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
    posterior = _encode(model, images)
    assert posterior.mean.dtype == jnp.float32
    reference = _encode(flax_vae, images)
    assert _max_error("bfloat16 posterior mean", posterior.mean, np.asarray(reference.mean)) <= 0.1
