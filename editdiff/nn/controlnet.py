"""ControlNet (Zhang et al. 2023) as diffusers' ControlNetModel, NHWC.

A trainable copy of the U-Net's encoder and mid block reads the noisy latent plus an embedding of a
pixel-space hint, and returns one zero-initialised 1x1-conv residual per U-Net skip connection and one for the
mid block (the U-Net's `down_residuals` / `mid_residual`):

    h = conv_in(z) + controlnet_cond_embedding(hint)
    h, skips = down_blocks(h, emb, context);  h = mid_block(h, emb, context)
    down_residuals = [scale * controlnet_down_blocks[i](skips[i])];  mid_residual = scale * controlnet_mid_block(h)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.conv import conv_general_dilated
from editdiff.nn.layers import TimestepEmbedding, conv2d
from editdiff.nn.unet import (DOWN_BLOCK_TYPES, MID_BLOCK_TYPES, UNet2DConditionModel, UNetConfig,
                              build_down_blocks, build_mid_block, check_choice, check_per_block,
                              config_from_diffusers, config_to_diffusers, embed_timesteps,
                              freeze_sequences)
from editdiff.tracing import abstract_module

Dtype = jnp.dtype

CONTROLNET_FIXED_KEYS: dict[str, Any] = {
    "only_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "num_attention_heads": None, "class_embed_type": None, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None, "resnet_time_scale_shift": "default",
    "projection_class_embeddings_input_dim": None, "controlnet_conditioning_channel_order": "rgb",
    "global_pool_conditions": False, "addition_embed_type_num_heads": 64,
}

# The U-Net settings a ControlNet copies (its encoder half); the rest of UNetConfig describes the decoder.
_SHARED_WITH_UNET = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "mid_block_type",
                     "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor",
                     "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block",
                     "attention_head_dim", "use_linear_projection", "upcast_attention")


@dataclasses.dataclass(frozen=True)
class ControlNetConfig:
    """diffusers' ControlNetModel config, the subset we implement (config.json names)."""

    in_channels: int = 4
    conditioning_channels: int = 3
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D")
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    attention_head_dim: int | tuple[int, ...] = 8
    use_linear_projection: bool = False
    upcast_attention: bool = False
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)

    def __post_init__(self):
        freeze_sequences(self)
        owner, n = "ControlNetConfig", len(self.down_block_types)
        for block_type in self.down_block_types:
            check_choice(owner, "down_block_types", block_type, DOWN_BLOCK_TYPES)
        check_choice(owner, "mid_block_type", self.mid_block_type, MID_BLOCK_TYPES)
        check_choice(owner, "act_fn", self.act_fn, ("silu", "swish"))
        check_choice(owner, "downsample_padding", self.downsample_padding, (0, 1))
        if not isinstance(self.layers_per_block, int):
            raise ValueError(f"{owner}: layers_per_block={self.layers_per_block!r} must be an int "
                             "(diffusers' ControlNetModel has no per-block value)")
        if len(self.block_out_channels) != n:
            raise ValueError(f"{owner}: block_out_channels={self.block_out_channels!r} must have one entry per "
                             f"down block ({n})")
        for key in ("transformer_layers_per_block", "attention_head_dim"):
            check_per_block(owner, key, getattr(self, key), n)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "ControlNetConfig":
        """From a diffusers ControlNetModel config.json dict; unsupported keys or values raise ValueError."""
        return config_from_diffusers(cls, config, CONTROLNET_FIXED_KEYS)

    @classmethod
    def from_unet(cls, unet: UNetConfig, *, conditioning_channels: int = 3,
                  conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)) -> "ControlNetConfig":
        """The ControlNet whose encoder matches `unet`'s (diffusers' ControlNetModel.from_unet)."""
        for key, default, whose in (("time_embedding_dim", None, "diffusers'"), ("conv_in_kernel", 3, "diffusers'"),
                                    ("class_embed_type", None, "our"), ("resnet_time_scale_shift", "default", "our")):
            if getattr(unet, key) != default:
                raise ValueError(f"ControlNetConfig.from_unet: UNetConfig.{key}={getattr(unet, key)!r}; {whose} "
                                 f"ControlNetModel supports only {default!r}")
        return cls(conditioning_channels=conditioning_channels,
                   conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
                   **{key: getattr(unet, key) for key in _SHARED_WITH_UNET})

    def to_diffusers(self) -> dict:
        """The config.json dict diffusers' ControlNetModel.from_pretrained reads."""
        return config_to_diffusers("ControlNetModel", self)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]


class ControlNetConditioningEmbedding(nnx.Module):
    """The hint encoder: conv_in, then per stage (3x3 conv, 3x3 stride-2 conv), SiLU after each, then the
    zero-initialised conv_out; (B, 8h, 8w, conditioning_channels) -> (B, h, w, out_channels) for 4 stages."""

    def __init__(self, conditioning_channels: int, out_channels: int, *, block_out_channels: tuple[int, ...],
                 dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.conv_in = conv2d(conditioning_channels, block_out_channels[0], 3, padding=1, dtype=dtype, rngs=rngs)
        blocks = []
        for channels_in, channels_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            blocks.append(conv2d(channels_in, channels_in, 3, padding=1, dtype=dtype, rngs=rngs))
            blocks.append(conv2d(channels_in, channels_out, 3, stride=2, padding=1, dtype=dtype, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.conv_out = zero_conv(block_out_channels[-1], out_channels, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, hint: jax.Array) -> jax.Array:
        h = jax.nn.silu(self.conv_in(hint))
        for block in self.blocks:
            h = jax.nn.silu(block(h))
        return self.conv_out(h)


def zero_conv(in_channels: int, out_channels: int, kernel_size: int, *, padding: int = 0,
              dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
    """A conv whose kernel and bias start at zero, so a fresh ControlNet leaves the U-Net unchanged."""
    return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), padding=((padding, padding),) * 2,
                    kernel_init=nnx.initializers.zeros_init(), conv_general_dilated=conv_general_dilated,
                    dtype=dtype, rngs=rngs)


class ControlNetModel(nnx.Module):
    """ControlNet branch for a U-Net with the same encoder config; params float32, computation in `dtype`,
    `attention_implementation` as for UNet2DConditionModel."""

    def __init__(self, config: ControlNetConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 attention_implementation: str | None = None):
        self.config = config
        self.dtype = dtype
        self.attention_implementation = attention_implementation
        channels = config.block_out_channels
        temb = config.time_embed_dim
        self.conv_in = conv2d(config.in_channels, channels[0], 3, padding=1, dtype=dtype, rngs=rngs)
        self.time_embedding = TimestepEmbedding(channels[0], temb, dtype=dtype, rngs=rngs)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            config.conditioning_channels, channels[0],
            block_out_channels=config.conditioning_embedding_out_channels, dtype=dtype, rngs=rngs)
        blocks = dict(temb_channels=temb, attention_implementation=attention_implementation, dtype=dtype, rngs=rngs)
        self.down_blocks = build_down_blocks(config, **blocks)
        self.mid_block = build_mid_block(config, **blocks)

        skip_channels = [channels[0]]
        for i, block in enumerate(self.down_blocks):
            skip_channels += [channels[i]] * (len(block.resnets) + (block.downsample is not None))
        self.controlnet_down_blocks = nnx.List([zero_conv(c, c, 1, dtype=dtype, rngs=rngs) for c in skip_channels])
        self.controlnet_mid_block = zero_conv(channels[-1], channels[-1], 1, dtype=dtype, rngs=rngs)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, *, conditioning_channels: int = 3,
                  conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
                  rngs: nnx.Rngs | None = None, dtype: Dtype | None = None) -> "ControlNetModel":
        """A ControlNet for `unet`: its conv_in, time embedding, down blocks and mid block start as copies of
        the U-Net's; the hint embedding is randomly initialised (from `rngs`) and every output conv is zero.
        Compute dtype and attention implementation follow the U-Net unless `dtype` is given."""
        config = ControlNetConfig.from_unet(unet.config, conditioning_channels=conditioning_channels,
                                            conditioning_embedding_out_channels=conditioning_embedding_out_channels)
        dtype = unet.dtype if dtype is None else dtype
        # Built abstractly: only the hint embedding needs random values, everything else is copied or zero.
        controlnet = abstract_module(lambda: cls(config, rngs=nnx.Rngs(0), dtype=dtype,
                                                 attention_implementation=unet.attention_implementation))
        controlnet.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            config.conditioning_channels, config.block_out_channels[0],
            block_out_channels=config.conditioning_embedding_out_channels, dtype=dtype,
            rngs=nnx.Rngs(0) if rngs is None else rngs)
        for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
            # Copies, not shared buffers: training the ControlNet must leave the frozen U-Net untouched.
            nnx.update(getattr(controlnet, name), jax.tree.map(jnp.array, nnx.state(getattr(unet, name), nnx.Param)))
        for name in ("controlnet_down_blocks", "controlnet_mid_block"):
            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), nnx.state(getattr(controlnet, name)))
            nnx.update(getattr(controlnet, name), zeros)
        return controlnet

    def __call__(self, sample: jax.Array, timesteps: jax.Array | float, encoder_hidden_states: jax.Array | None,
                 cond: jax.Array, conditioning_scale: float | jax.Array = 1.0, *,
                 added_hint_embedding: jax.Array | None = None) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """Residuals for the U-Net from a (B, H, W, in_channels) latent and its (B, 8H, 8W, conditioning_channels)
        pixel hint (for the default four-stage hint encoder). `added_hint_embedding` (B, H, W, block_out_channels[0]),
        when given, is added to the hint's embedding: the output of a second hint encoder (Prompt Diffusion feeds
        its example pair and its query through two).

        Returns (down_residuals, mid_residual): one (B, h, w, c) per U-Net skip connection, in diffusers' order,
        and the mid-block residual, all multiplied by `conditioning_scale`.
        """
        if encoder_hidden_states is None and (self.mid_block.has_cross_attention
                                              or any(b.has_cross_attention for b in self.down_blocks)):
            raise ValueError("ControlNetModel: encoder_hidden_states is None but the config has cross-attention")
        context = None if encoder_hidden_states is None else encoder_hidden_states.astype(self.dtype)
        emb = embed_timesteps(self.time_embedding, self.config, timesteps, sample.shape[0], self.dtype)

        h = self.conv_in(sample.astype(self.dtype)) + self.controlnet_cond_embedding(cond.astype(self.dtype))
        if added_hint_embedding is not None:
            h = h + added_hint_embedding.astype(self.dtype)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context)
            skips.extend(block_skips)
        h = self.mid_block(h, emb, context)

        down_residuals = tuple(conditioning_scale * conv(s) for conv, s in zip(self.controlnet_down_blocks, skips))
        return down_residuals, conditioning_scale * self.controlnet_mid_block(h)
