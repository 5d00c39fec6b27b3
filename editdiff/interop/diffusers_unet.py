"""diffusers UNet2DConditionModel / ControlNetModel / UNet2DModel directories <-> our Flax models.

The name maps are built by walking the Flax model: one Rule per parameter, spelled with diffusers' keys. Where
the two differ: Flax `downsample` / `upsample` are diffusers' `downsamplers.0` / `upsamplers.0`, the
feed-forward's `proj_in` / `proj_out` are `ff.net.0.proj` / `ff.net.2`, attention `to_out` is `to_out.0`, the
transformers' proj_in / proj_out are 1x1 convs unless `use_linear_projection`, and a SpatialSelfAttention's
`attention.to_q` etc. sit directly under diffusers' attention (`attentions.0.to_q`). Files written with
diffusers' former AttentionBlock (the google/ddpm-* checkpoints) name those `query / key / value / proj_attn`;
loading renames them as diffusers does, export writes today's names.
"""
from __future__ import annotations

import os

import jax.numpy as jnp
from flax import nnx

from editdiff.interop.name_map import (Layout, Rule, conv_rules, dense_rules, export_state_dict, load_state_dict,
                                       norm_rules)
from editdiff.interop.torch_io import CheckpointError, read_config, read_state_dict, write_config, write_safetensors
from editdiff.nn.controlnet import ControlNetConfig, ControlNetModel
from editdiff.nn.layers import Attention, ResnetBlock2D, SpatialSelfAttention
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig
from editdiff.nn.unet2d import UNet2DConfig, UNet2DModel
from editdiff.nn.unet_blocks import DownBlock2D, Transformer2DModel, UpBlock2D
from editdiff.tracing import abstract_module

WEIGHTS_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# diffusers' former AttentionBlock names -> today's Attention names (diffusers renames them on load too).
DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def resnet_rules(path: tuple, prefix: str, resnet: ResnetBlock2D) -> list[Rule]:
    rules = norm_rules((*path, "norm1"), f"{prefix}.norm1") + conv_rules((*path, "conv1"), f"{prefix}.conv1")
    if resnet.time_emb_proj is not None:
        rules += dense_rules((*path, "time_emb_proj"), f"{prefix}.time_emb_proj")
    rules += norm_rules((*path, "norm2"), f"{prefix}.norm2") + conv_rules((*path, "conv2"), f"{prefix}.conv2")
    if resnet.conv_shortcut is not None:
        rules += conv_rules((*path, "conv_shortcut"), f"{prefix}.conv_shortcut")
    return rules


def attention_rules(path: tuple, prefix: str, attention: Attention) -> list[Rule]:
    rules = []
    for name in ("to_q", "to_k", "to_v"):
        rules += dense_rules((*path, name), f"{prefix}.{name}", bias=getattr(attention, name).bias is not None)
    return rules + dense_rules((*path, "to_out"), f"{prefix}.to_out.0")


def transformer_rules(path: tuple, prefix: str, transformer: Transformer2DModel, *,
                      linear_projection: bool) -> list[Rule]:
    projection = Layout.LINEAR if linear_projection else Layout.LINEAR_FROM_CONV1X1
    rules = norm_rules((*path, "norm"), f"{prefix}.norm")
    rules += dense_rules((*path, "proj_in"), f"{prefix}.proj_in", layout=projection)
    for k, block in enumerate(transformer.transformer_blocks):
        p, t = (*path, "transformer_blocks", k), f"{prefix}.transformer_blocks.{k}"
        for norm in ("norm1", "norm2", "norm3"):
            rules += norm_rules((*p, norm), f"{t}.{norm}")
        rules += attention_rules((*p, "attn1"), f"{t}.attn1", block.attn1)
        rules += attention_rules((*p, "attn2"), f"{t}.attn2", block.attn2)
        rules += dense_rules((*p, "ff", "proj_in"), f"{t}.ff.net.0.proj")
        rules += dense_rules((*p, "ff", "proj_out"), f"{t}.ff.net.2")
    return rules + dense_rules((*path, "proj_out"), f"{prefix}.proj_out", layout=projection)


def spatial_attention_rules(path: tuple, prefix: str, attention: SpatialSelfAttention) -> list[Rule]:
    """A SpatialSelfAttention <-> diffusers' `Attention` built from a deprecated attention block."""
    rules = [] if attention.group_norm is None else norm_rules((*path, "group_norm"), f"{prefix}.group_norm")
    return rules + attention_rules((*path, "attention"), prefix, attention.attention)


def block_rules(path: tuple, prefix: str, block, *, linear_projection: bool) -> list[Rule]:
    """A down, mid or up block: its resnets, its attentions (if any) and its down/upsampler (if any)."""
    rules = []
    for j, resnet in enumerate(block.resnets):
        rules += resnet_rules((*path, "resnets", j), f"{prefix}.resnets.{j}", resnet)
    for j, attention in enumerate(block.attentions or ()):
        if isinstance(attention, SpatialSelfAttention):
            rules += spatial_attention_rules((*path, "attentions", j), f"{prefix}.attentions.{j}", attention)
        else:
            rules += transformer_rules((*path, "attentions", j), f"{prefix}.attentions.{j}", attention,
                                       linear_projection=linear_projection)
    if isinstance(block, DownBlock2D) and block.downsample is not None:
        rules += conv_rules((*path, "downsample", "conv"), f"{prefix}.downsamplers.0.conv")
    if isinstance(block, UpBlock2D) and block.upsample is not None:
        rules += conv_rules((*path, "upsample", "conv"), f"{prefix}.upsamplers.0.conv")
    return rules


def _linear_projection(model) -> bool:
    # UNet2DModel has no transformers, hence no such setting.
    return getattr(model.config, "use_linear_projection", False)


def _encoder_rules(model: UNet2DConditionModel | ControlNetModel | UNet2DModel) -> list[Rule]:
    """conv_in, time embedding, down blocks and mid block (if any): the part a U-Net and its ControlNet share."""
    linear = _linear_projection(model)
    rules = conv_rules(("conv_in",), "conv_in")
    rules += dense_rules(("time_embedding", "linear_1"), "time_embedding.linear_1")
    rules += dense_rules(("time_embedding", "linear_2"), "time_embedding.linear_2")
    for i, block in enumerate(model.down_blocks):
        rules += block_rules(("down_blocks", i), f"down_blocks.{i}", block, linear_projection=linear)
    if model.mid_block is not None:
        rules += block_rules(("mid_block",), "mid_block", model.mid_block, linear_projection=linear)
    return rules


def unet_rules(model: UNet2DConditionModel | UNet2DModel) -> list[Rule]:
    """One Rule per parameter of `model`: Flax path <-> diffusers UNet2DConditionModel / UNet2DModel key."""
    rules = _encoder_rules(model)
    if getattr(model, "class_embedding", None) is not None:
        rules += dense_rules(("class_embedding", "linear_1"), "class_embedding.linear_1")
        rules += dense_rules(("class_embedding", "linear_2"), "class_embedding.linear_2")
    for i, block in enumerate(model.up_blocks):
        rules += block_rules(("up_blocks", i), f"up_blocks.{i}", block, linear_projection=_linear_projection(model))
    return rules + norm_rules(("conv_norm_out",), "conv_norm_out") + conv_rules(("conv_out",), "conv_out")


def hint_embedding_rules(path: tuple, prefix: str, embedding) -> list[Rule]:
    """A ControlNetConditioningEmbedding at `path` <-> diffusers' one under `prefix` ("" at the top level)."""
    rules = conv_rules((*path, "conv_in"), f"{prefix}conv_in")
    for i in range(len(embedding.blocks)):
        rules += conv_rules((*path, "blocks", i), f"{prefix}blocks.{i}")
    return rules + conv_rules((*path, "conv_out"), f"{prefix}conv_out")


def controlnet_rules(model: ControlNetModel) -> list[Rule]:
    """One Rule per parameter of `model`: Flax path <-> diffusers ControlNetModel state-dict key."""
    rules = _encoder_rules(model)
    rules += hint_embedding_rules(("controlnet_cond_embedding",), "controlnet_cond_embedding.",
                                  model.controlnet_cond_embedding)
    for i in range(len(model.controlnet_down_blocks)):
        rules += conv_rules(("controlnet_down_blocks", i), f"controlnet_down_blocks.{i}")
    return rules + conv_rules(("controlnet_mid_block",), "controlnet_mid_block")


def with_current_attention_names(state_dict: dict, rules: list[Rule]) -> dict:
    """`state_dict` with every former-AttentionBlock key (`P.query.weight`, ...) that stands for a key the rules
    expect (`P.to_q.weight`) renamed to it; other keys untouched."""
    renamed = dict(state_dict)
    for rule in rules:
        module, _, leaf = rule.torch_key.rpartition(".")
        for old, new in DEPRECATED_ATTENTION_NAMES.items():
            legacy = f"{module[:-len(new)]}{old}.{leaf}"
            if module.endswith(f".{new}") and rule.torch_key not in renamed and legacy in renamed:
                renamed[rule.torch_key] = renamed.pop(legacy)
    return renamed


def _parse_config(directory, config_cls):
    try:
        return config_cls.from_diffusers(read_config(directory))
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"{directory}: {e}") from e


def _load(directory, config_cls, model_cls, rules_of, *, dtype, attention_implementation):
    """config.json + weights of a diffusers directory -> `model_cls`, built abstractly (every parameter comes
    from the file, so random initialisation would be wasted work); any mismatch is a CheckpointError."""
    config = _parse_config(directory, config_cls)
    state_dict, path = read_state_dict(directory, WEIGHTS_NAMES)
    model = abstract_module(lambda: model_cls(config, rngs=nnx.Rngs(0), dtype=dtype,
                                              attention_implementation=attention_implementation))
    rules = rules_of(model)
    load_state_dict(model, with_current_attention_names(state_dict, rules), rules, source=path)
    return model


def export_diffusers_model(model, directory, rules_of) -> None:
    """config.json + diffusion_pytorch_model.safetensors, as diffusers' save_pretrained writes them."""
    write_config(directory, model.config.to_diffusers())
    write_safetensors(os.path.join(directory, WEIGHTS_NAMES[0]), export_state_dict(model, rules_of(model)))


def load_unet(directory: str | os.PathLike, *, dtype=jnp.float32,
              attention_implementation: str | None = None) -> UNet2DConditionModel:
    """Reads a diffusers UNet2DConditionModel directory (config.json + diffusion_pytorch_model.safetensors or
    .bin) into a UNet2DConditionModel computing in `dtype`. Any mismatch is a CheckpointError that names it."""
    return _load(directory, UNetConfig, UNet2DConditionModel, unet_rules, dtype=dtype,
                 attention_implementation=attention_implementation)


def export_unet(model: UNet2DConditionModel, directory: str | os.PathLike) -> None:
    """Writes config.json + diffusion_pytorch_model.safetensors that diffusers' UNet2DConditionModel loads."""
    export_diffusers_model(model, directory, unet_rules)


def load_controlnet(directory: str | os.PathLike, *, dtype=jnp.float32,
                    attention_implementation: str | None = None) -> ControlNetModel:
    """Reads a diffusers ControlNetModel directory into a ControlNetModel computing in `dtype`."""
    return _load(directory, ControlNetConfig, ControlNetModel, controlnet_rules, dtype=dtype,
                 attention_implementation=attention_implementation)


def export_controlnet(model: ControlNetModel, directory: str | os.PathLike) -> None:
    """Writes config.json + diffusion_pytorch_model.safetensors that diffusers' ControlNetModel loads."""
    export_diffusers_model(model, directory, controlnet_rules)


def load_unet2d(directory: str | os.PathLike, *, dtype=jnp.float32,
                attention_implementation: str | None = None) -> UNet2DModel:
    """Reads a diffusers UNet2DModel directory (config.json + diffusion_pytorch_model.safetensors or .bin, with
    today's attention names or the former AttentionBlock's) into a UNet2DModel computing in `dtype`. Any
    mismatch is a CheckpointError that names it."""
    return _load(directory, UNet2DConfig, UNet2DModel, unet_rules, dtype=dtype,
                 attention_implementation=attention_implementation)


def export_unet2d(model: UNet2DModel, directory: str | os.PathLike) -> None:
    """Writes config.json + diffusion_pytorch_model.safetensors that diffusers' UNet2DModel loads."""
    export_diffusers_model(model, directory, unet_rules)
