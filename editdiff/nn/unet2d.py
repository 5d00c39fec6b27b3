"""diffusers' UNet2DModel in Flax NNX, NHWC: the unconditional pixel-space DDPM U-Nets (google/ddpm-*), the
rectifier paper's backbones (METHODS.md §2).

    emb = time_embedding(sinusoid(t));  h = conv_in(2 x - 1 if center_input_sample else x)
    h, skips = down_blocks(h, emb)       # DownBlock2D / AttnDownBlock2D
    h = mid_block(h, emb)                # resnet, self-attention (if add_attention), resnet
    h = up_blocks(h, skips, emb)         # UpBlock2D / AttnUpBlock2D
    out = conv_out(silu(conv_norm_out(h)))

Built from the same blocks as the SD U-Net (editdiff.nn.unet_blocks), with self-attention instead of
cross-attention and resnet_time_scale_shift "default" or "scale_shift". `modulation` works as in
UNet2DConditionModel: `modulation_paths(model)` lists the mid and up blocks' convs it may name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.layers import TIME_EMBEDDING_NORMS, TimestepEmbedding, conv2d, group_norm
from editdiff.nn.modulated_conv import Modulation, submodulation
from editdiff.nn.unet import (check_choice, check_modulation, config_from_diffusers, config_to_diffusers,
                              embed_timesteps, freeze_sequences, run_down_blocks, run_up_blocks, stack_down_blocks,
                              stack_up_blocks)
from editdiff.nn.unet_blocks import SelfAttentionSpec, UNetMidBlock2D

Dtype = jnp.dtype

DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2D", None)

# diffusers config keys we do not implement: accepted only with the value that leaves the model unchanged.
UNET2D_FIXED_KEYS: dict[str, Any] = {
    "time_embedding_type": "positional", "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "class_embed_type": None, "num_class_embeds": None,
}


@dataclasses.dataclass(frozen=True)
class UNet2DConfig:
    """diffusers' UNet2DModel config, the subset we implement (fields carry config.json names and defaults).

    `attention_head_dim` is the width of one head (None: one head over all channels), unlike
    UNet2DConditionModel's head count. `attn_norm_num_groups` sets the mid-block attention's group norm; None
    means norm_num_groups groups with resnet_time_scale_shift "default" and no norm with "scale_shift", as in
    diffusers. `sample_size` and `num_train_timesteps` (used only by diffusers' "learned" time embedding) have
    no effect here: they are kept so that an exported config.json says what the source said.
    """

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_dim: int | None = None
    freq_shift: int = 0
    flip_sin_to_cos: bool = True
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: tuple[int, ...] = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    num_train_timesteps: int | None = None

    def __post_init__(self):
        freeze_sequences(self)
        owner, n = "UNet2DConfig", len(self.block_out_channels)
        for block_type in self.down_block_types:
            check_choice(owner, "down_block_types", block_type, DOWN_BLOCK_TYPES)
        for block_type in self.up_block_types:
            check_choice(owner, "up_block_types", block_type, UP_BLOCK_TYPES)
        check_choice(owner, "mid_block_type", self.mid_block_type, MID_BLOCK_TYPES)
        check_choice(owner, "act_fn", self.act_fn, ("silu", "swish"))
        check_choice(owner, "downsample_padding", self.downsample_padding, (0, 1))
        check_choice(owner, "resnet_time_scale_shift", self.resnet_time_scale_shift, TIME_EMBEDDING_NORMS)
        for key in ("down_block_types", "up_block_types"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"{owner}: {key}={getattr(self, key)!r} must have one entry per "
                                 f"block_out_channels ({n})")
        if not isinstance(self.layers_per_block, int):
            raise ValueError(f"{owner}: layers_per_block={self.layers_per_block!r} must be an int "
                             "(diffusers' UNet2DModel has no per-block value)")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ValueError(f"{owner}: block_out_channels={self.block_out_channels!r} must be multiples of "
                                 f"norm_num_groups={self.norm_num_groups}")
        if self.attn_norm_num_groups is not None and self.block_out_channels[-1] % self.attn_norm_num_groups:
            raise ValueError(f"{owner}: attn_norm_num_groups={self.attn_norm_num_groups!r} must divide "
                             f"block_out_channels[-1]={self.block_out_channels[-1]}")
        if self.attention_head_dim is not None:
            attended = [c for c, t in zip(self.block_out_channels, self.down_block_types) if t.startswith("Attn")]
            attended += [c for c, t in zip(self.block_out_channels[::-1], self.up_block_types) if t.startswith("Attn")]
            if self.mid_block_type is not None and self.add_attention:
                attended.append(self.block_out_channels[-1])
            if any(c % self.attention_head_dim for c in attended):
                raise ValueError(f"{owner}: attention_head_dim={self.attention_head_dim!r} must divide the channels "
                                 f"of every block with attention ({sorted(set(attended))})")

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "UNet2DConfig":
        """From a diffusers UNet2DModel config.json dict; unsupported keys or values raise ValueError."""
        return config_from_diffusers(cls, config, UNET2D_FIXED_KEYS)

    def to_diffusers(self) -> dict:
        """The config.json dict diffusers' UNet2DModel.from_pretrained reads."""
        return config_to_diffusers("UNet2DModel", self)

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]


class UNet2DModel(nnx.Module):
    """The unconditional denoiser of diffusers' UNet2DModel; params float32, computation in `dtype`.
    `attention_implementation` is passed to `jax.nn.dot_product_attention` (None: XLA chooses)."""

    def __init__(self, config: UNet2DConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 attention_implementation: str | None = None):
        self.config = config
        self.dtype = dtype
        channels, groups = config.block_out_channels, config.norm_num_groups
        temb = config.time_embed_dim
        self.conv_in = conv2d(config.in_channels, channels[0], 3, padding=1, dtype=dtype, rngs=rngs)
        self.time_embedding = TimestepEmbedding(channels[0], temb, dtype=dtype, rngs=rngs)

        def attention(block_type: str, block_channels: int) -> SelfAttentionSpec | None:
            if not block_type.startswith("Attn"):
                return None
            return SelfAttentionSpec(config.attention_head_dim or block_channels, groups, attention_implementation)

        blocks = dict(temb_channels=temb, time_embedding_norm=config.resnet_time_scale_shift, dtype=dtype,
                      rngs=rngs)
        self.down_blocks = stack_down_blocks(
            config, [attention(t, c) for t, c in zip(config.down_block_types, channels)], **blocks)
        self.mid_block = None if config.mid_block_type is None else self._mid_block(config, attention_implementation,
                                                                                    **blocks)
        self.up_blocks = stack_up_blocks(
            config, [attention(t, c) for t, c in zip(config.up_block_types, channels[::-1])], **blocks)
        self.conv_norm_out = group_norm(channels[0], groups=groups, eps=config.norm_eps, dtype=dtype, rngs=rngs)
        self.conv_out = conv2d(channels[0], config.out_channels, 3, padding=1, dtype=dtype, rngs=rngs)

    @staticmethod
    def _mid_block(config: UNet2DConfig, attention_implementation: str | None, **blocks) -> UNetMidBlock2D:
        channels = config.block_out_channels[-1]
        attention = None
        if config.add_attention:
            # diffusers: the attention's norm defaults to the resnets' groups only for the "default" shift.
            groups = config.attn_norm_num_groups
            if groups is None and config.resnet_time_scale_shift == "default":
                groups = config.norm_num_groups
            attention = SelfAttentionSpec(config.attention_head_dim or channels, groups, attention_implementation)
        return UNetMidBlock2D(channels, groups=config.norm_num_groups, eps=config.norm_eps,
                              output_scale_factor=config.mid_block_scale_factor, num_layers=1, attention=attention,
                              **blocks)

    def __call__(self, sample: jax.Array, timesteps: jax.Array | float, *,
                 modulation: Modulation | None = None) -> jax.Array:
        """Predicts (B, H, W, out_channels) in `dtype` from a (B, H, W, in_channels) sample, H and W multiples
        of 2 ** (len(block_out_channels) - 1) for diffusers (odd sizes also work here: upsampling follows the
        skip connections' sizes).

        timesteps: (B,) or a scalar. modulation: {conv path from `modulation_paths(self)`: (a (B, kh, kw, Cin),
        b (B, kh, kw, Cout))}, each conv's kernel becoming kernel * (1 + a b^T) per sample; zero offsets change
        nothing, bit for bit.
        """
        if modulation is not None:
            check_modulation(self, modulation, sample.shape[0])
        sample = sample.astype(self.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = embed_timesteps(self.time_embedding, self.config, timesteps, sample.shape[0], self.dtype)

        h, skips = run_down_blocks(self.down_blocks, self.conv_in(sample), emb, None)
        if self.mid_block is not None:
            h = self.mid_block(h, emb, None, submodulation(modulation, "mid_block"))
        h = run_up_blocks(self.up_blocks, h, skips, emb, None, modulation)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))
