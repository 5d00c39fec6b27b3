"""diffusers `AutoencoderKL` directories <-> our `AutoencoderKL`: `load_vae(dir)`, `export_vae(model, dir)`.

The name map lists one Rule per parameter, built by walking the model (no pattern matching): see `vae_rules`.
Flax `downsample` / `upsample` / `mid_block.attention` are diffusers' `downsamplers.0` / `upsamplers.0` /
`mid_block.attentions.0`. Older checkpoints (SD-1.x as first released) name the mid-block attention
`query / key / value / proj_attn`; diffusers renames those on load and so do we. Export writes today's names.
"""
from __future__ import annotations

import os

import jax.numpy as jnp
from flax import nnx

from editdiff.interop.diffusers_unet import (WEIGHTS_NAMES, attention_rules, export_diffusers_model,
                                            resnet_rules)
from editdiff.interop.name_map import Rule, conv_rules, load_state_dict, norm_rules
from editdiff.interop.torch_io import CheckpointError, read_config, read_state_dict
from editdiff.nn.vae import (AutoencoderKL, Decoder, DownEncoderBlock2D, Encoder, MidBlock2D, UpDecoderBlock2D,
                             VAEConfig)
from editdiff.tracing import abstract_module

_DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _mid_block_rules(path: tuple, prefix: str, block: MidBlock2D) -> list[Rule]:
    rules = []
    for j, resnet in enumerate(block.resnets):
        rules += resnet_rules((*path, "resnets", j), f"{prefix}.resnets.{j}", resnet)
    if block.attention is not None:
        attention, torch_attention = (*path, "attention"), f"{prefix}.attentions.0"
        rules += norm_rules((*attention, "group_norm"), f"{torch_attention}.group_norm")
        rules += attention_rules((*attention, "attention"), torch_attention, block.attention.attention)
    return rules


def _block_rules(path: tuple, prefix: str, block: DownEncoderBlock2D | UpDecoderBlock2D) -> list[Rule]:
    rules = []
    for j, resnet in enumerate(block.resnets):
        rules += resnet_rules((*path, "resnets", j), f"{prefix}.resnets.{j}", resnet)
    if isinstance(block, DownEncoderBlock2D) and block.downsample is not None:
        rules += conv_rules((*path, "downsample", "conv"), f"{prefix}.downsamplers.0.conv")
    if isinstance(block, UpDecoderBlock2D) and block.upsample is not None:
        rules += conv_rules((*path, "upsample", "conv"), f"{prefix}.upsamplers.0.conv")
    return rules


def _coder_rules(name: str, coder: Encoder | Decoder) -> list[Rule]:
    """The "encoder" or the "decoder": conv_in, mid block, down / up blocks, conv_norm_out, conv_out."""
    rules = conv_rules((name, "conv_in"), f"{name}.conv_in")
    rules += _mid_block_rules((name, "mid_block"), f"{name}.mid_block", coder.mid_block)
    blocks = "down_blocks" if isinstance(coder, Encoder) else "up_blocks"
    for i, block in enumerate(getattr(coder, blocks)):
        rules += _block_rules((name, blocks, i), f"{name}.{blocks}.{i}", block)
    rules += norm_rules((name, "conv_norm_out"), f"{name}.conv_norm_out")
    return rules + conv_rules((name, "conv_out"), f"{name}.conv_out")


def vae_rules(model: AutoencoderKL) -> list[Rule]:
    """One Rule per parameter of `model`: Flax path <-> diffusers AutoencoderKL state-dict key."""
    rules = _coder_rules("encoder", model.encoder) + _coder_rules("decoder", model.decoder)
    if model.quant_conv is not None:
        rules += conv_rules(("quant_conv",), "quant_conv")
    if model.post_quant_conv is not None:
        rules += conv_rules(("post_quant_conv",), "post_quant_conv")
    return rules


def _rename_deprecated_attention(state_dict: dict) -> dict:
    """`*.mid_block.attentions.0.query.weight` -> `*.to_q.weight`, etc., as diffusers does on load."""
    renamed = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        module_path, _, name = prefix.rpartition(".")
        if ".mid_block.attentions." in key and name in _DEPRECATED_ATTENTION_NAMES:
            key = f"{module_path}.{_DEPRECATED_ATTENTION_NAMES[name]}.{leaf}"
        renamed[key] = value
    return renamed


def load_vae(directory: str | os.PathLike, *, dtype=jnp.float32) -> AutoencoderKL:
    """Reads a local diffusers AutoencoderKL directory (config.json + diffusion_pytorch_model.safetensors or
    .bin) into an AutoencoderKL computing in `dtype`; parameters are float32.

    A missing file, any missing / unexpected / mis-shaped tensor, or an unsupported config key or value is a
    CheckpointError that names it.
    """
    try:
        config = VAEConfig.from_diffusers(read_config(directory))
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"{directory}: {e}") from e
    state_dict, path = read_state_dict(directory, WEIGHTS_NAMES)
    # Built abstractly: every parameter comes from the file, so random initialisation would be wasted work.
    model = abstract_module(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0), dtype=dtype))
    load_state_dict(model, _rename_deprecated_attention(state_dict), vae_rules(model), source=path)
    return model


def export_vae(model: AutoencoderKL, directory: str | os.PathLike) -> None:
    """Writes config.json + diffusion_pytorch_model.safetensors that `diffusers.AutoencoderKL.from_pretrained`
    loads with no missing or unexpected keys."""
    export_diffusers_model(model, directory, vae_rules)
