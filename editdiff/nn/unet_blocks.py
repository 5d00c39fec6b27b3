"""The stages of the U-Nets, as diffusers builds them: Transformer2DModel, the down / mid / up blocks.

All take (B, H, W, C) feature maps, a time embedding `temb` (B, T) and an optional cross-attention context
(B, L, D). A block's attention is a Transformer2DModel per layer (a CrossAttentionSpec: the SD U-Net's
CrossAttn*Block2D), a SpatialSelfAttention per layer (a SelfAttentionSpec: UNet2DModel's Attn*Block2D) or none.
Attribute names follow diffusers' (resnets, attentions, transformer_blocks, attn1, ...); the interop name map
spells out the few places where they differ (downsamplers.0 -> downsample, ...). Mid and up blocks take a
`modulation` (see editdiff.nn.modulated_conv) keyed by paths relative to the block, e.g. ("resnets", 0, "conv1").
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.layers import (Attention, Downsample2D, FeedForward, ResnetBlock2D, SpatialSelfAttention, Upsample2D,
                                group_norm)
from editdiff.nn.modulated_conv import Modulation, submodulation

Dtype = jnp.dtype


@dataclasses.dataclass(frozen=True)
class CrossAttentionSpec:
    """How a block's Transformer2DModels are built: `heads` heads of width channels // heads (diffusers'
    `num_attention_heads`), `layers` BasicTransformerBlocks each, keys/values from a `context_dim` context,
    `attention_implementation` for `dot_product_attention`."""

    heads: int
    context_dim: int
    layers: int = 1
    attention_implementation: str | None = None


@dataclasses.dataclass(frozen=True)
class SelfAttentionSpec:
    """How a block's SpatialSelfAttentions are built (diffusers' `Attention` with `_from_deprecated_attn_block`):
    heads of width `head_dim` (diffusers' UNet2DModel `attention_head_dim`), a group norm of `groups` groups
    before them (None: no norm), `attention_implementation` for `dot_product_attention`."""

    head_dim: int
    groups: int | None
    attention_implementation: str | None = None


class BasicTransformerBlock(nnx.Module):
    """Pre-LayerNorm transformer layer on (B, L, dim) tokens:

        x = x + attn1(norm1(x));  x = x + attn2(norm2(x), context);  x = x + ff(norm3(x))
    """

    def __init__(self, dim: int, *, heads: int, context_dim: int, attention_implementation: str | None = None,
                 dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        layer_norm = lambda: nnx.LayerNorm(dim, epsilon=1e-5, use_fast_variance=False, dtype=dtype, rngs=rngs)
        attention = dict(heads=heads, head_dim=dim // heads, implementation=attention_implementation, dtype=dtype,
                         rngs=rngs)
        self.norm1 = layer_norm()
        self.attn1 = Attention(dim, **attention)
        self.norm2 = layer_norm()
        self.attn2 = Attention(dim, context_dim=context_dim, **attention)
        self.norm3 = layer_norm()
        self.ff = FeedForward(dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nnx.Module):
    """Spatial transformer: x + proj_out(blocks(proj_in(group_norm(x)))) over the H*W tokens;
    (B, H, W, C) -> (B, H, W, C).

    proj_in / proj_out are dense layers on the channel axis; in NHWC a 1x1 conv is the same map, so diffusers'
    `use_linear_projection` only changes the PyTorch tensor layout, which the interop name map handles.
    """

    def __init__(self, channels: int, *, spec: CrossAttentionSpec, groups: int, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        if channels % spec.heads:
            raise ValueError(f"Transformer2DModel: {channels} channels do not split into {spec.heads} heads "
                             "(attention_head_dim, diffusers' name for the head count)")
        self.norm = group_norm(channels, groups=groups, eps=1e-6, dtype=dtype, rngs=rngs)
        self.proj_in = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(channels, heads=spec.heads, context_dim=spec.context_dim,
                                  attention_implementation=spec.attention_implementation, dtype=dtype, rngs=rngs)
            for _ in range(spec.layers)])
        self.proj_out = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        tokens = self.proj_in(self.norm(x).reshape(b, h * w, c))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens).reshape(b, h, w, c)


AttentionSpec = CrossAttentionSpec | SelfAttentionSpec


def _attentions(channels: int, count: int, spec: AttentionSpec | None, *, groups: int, eps: float,
                rescale_output_factor: float, dtype: Dtype, rngs: nnx.Rngs) -> nnx.List | None:
    """`count` attention layers as `spec` says, or None without a spec or layers."""
    if count == 0:
        return None
    if isinstance(spec, CrossAttentionSpec):
        return nnx.List([Transformer2DModel(channels, spec=spec, groups=groups, dtype=dtype, rngs=rngs)
                         for _ in range(count)])
    if isinstance(spec, SelfAttentionSpec):
        if channels % spec.head_dim:
            raise ValueError(f"SpatialSelfAttention: {channels} channels do not split into heads of width "
                             f"{spec.head_dim} (attention_head_dim)")
        return nnx.List([SpatialSelfAttention(channels, head_dim=spec.head_dim, groups=spec.groups, eps=eps,
                                              rescale_output_factor=rescale_output_factor,
                                              implementation=spec.attention_implementation, dtype=dtype, rngs=rngs)
                         for _ in range(count)])
    return None


def _attend(attention: Transformer2DModel | SpatialSelfAttention, x: jax.Array, context: jax.Array | None
            ) -> jax.Array:
    return attention(x, context) if isinstance(attention, Transformer2DModel) else attention(x)


def _has_cross_attention(attentions: nnx.List | None) -> bool:
    return attentions is not None and isinstance(attentions[0], Transformer2DModel)


class DownBlock2D(nnx.Module):
    """diffusers' DownBlock2D, CrossAttnDownBlock2D (`attention` a CrossAttentionSpec) or AttnDownBlock2D
    (`attention` a SelfAttentionSpec): `num_layers` x (ResnetBlock2D [+ attention]) then an optional stride-2
    Downsample2D.

    Returns (B, H', W', out) and the skip connections: the output of every layer, then of the downsampler.
    """

    def __init__(self, in_channels: int, out_channels: int, *, temb_channels: int, num_layers: int,
                 add_downsample: bool, groups: int, eps: float, downsample_padding: int = 1,
                 attention: AttentionSpec | None = None, time_embedding_norm: str = "default",
                 dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=temb_channels,
                          groups=groups, eps=eps, time_embedding_norm=time_embedding_norm, dtype=dtype, rngs=rngs)
            for i in range(num_layers)])
        self.attentions = _attentions(out_channels, num_layers, attention, groups=groups, eps=eps,
                                      rescale_output_factor=1.0, dtype=dtype, rngs=rngs)
        self.downsample = (Downsample2D(out_channels, padding=downsample_padding, dtype=dtype, rngs=rngs)
                           if add_downsample else None)

    @property
    def has_cross_attention(self) -> bool:
        return _has_cross_attention(self.attentions)

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array | None = None
                 ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = _attend(self.attentions[i], x, context)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, tuple(skips)


class UpBlock2D(nnx.Module):
    """diffusers' UpBlock2D, CrossAttnUpBlock2D (`attention` a CrossAttentionSpec) or AttnUpBlock2D
    (`attention` a SelfAttentionSpec): `num_layers` x (concat the last unused skip on channels -> ResnetBlock2D
    [+ attention]) then an optional nearest-x2 Upsample2D (to `upsample_size` when given, for odd latent sizes).

    `skips` are consumed from the end, one per layer; returns (B, H', W', out). `modulation` holds paths
    ("resnets", i, "conv1" | "conv2") and ("upsample", "conv").
    """

    def __init__(self, in_channels: int, prev_output_channels: int, out_channels: int, *, temb_channels: int,
                 num_layers: int, add_upsample: bool, groups: int, eps: float,
                 attention: AttentionSpec | None = None, time_embedding_norm: str = "default",
                 dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        def resnet(i: int) -> ResnetBlock2D:
            hidden = prev_output_channels if i == 0 else out_channels
            skip = in_channels if i == num_layers - 1 else out_channels
            return ResnetBlock2D(hidden + skip, out_channels, temb_channels=temb_channels, groups=groups, eps=eps,
                                 time_embedding_norm=time_embedding_norm, dtype=dtype, rngs=rngs)

        self.resnets = nnx.List([resnet(i) for i in range(num_layers)])
        self.attentions = _attentions(out_channels, num_layers, attention, groups=groups, eps=eps,
                                      rescale_output_factor=1.0, dtype=dtype, rngs=rngs)
        self.upsample = Upsample2D(out_channels, dtype=dtype, rngs=rngs) if add_upsample else None

    @property
    def has_cross_attention(self) -> bool:
        return _has_cross_attention(self.attentions)

    def __call__(self, x: jax.Array, skips: tuple[jax.Array, ...], temb: jax.Array,
                 context: jax.Array | None = None, upsample_size: tuple[int, int] | None = None,
                 modulation: Modulation | None = None) -> jax.Array:
        for i, resnet in enumerate(self.resnets):
            x = resnet(jnp.concatenate([x, skips[-1 - i].astype(x.dtype)], axis=-1), temb,
                       submodulation(modulation, "resnets", i))
            if self.attentions is not None:
                x = _attend(self.attentions[i], x, context)
        if self.upsample is not None:
            x = self.upsample(x, upsample_size, submodulation(modulation, "upsample"))
        return x


class UNetMidBlock2D(nnx.Module):
    """diffusers' UNetMidBlock2D, or UNetMidBlock2DCrossAttn when `attention` is a CrossAttentionSpec: resnet ->
    ([attention] -> resnet) x num_layers at constant width; (B, H, W, C) -> (B, H, W, C).

    diffusers builds UNet2DConditionModel's "UNetMidBlock2D" with num_layers=0 (a single resnet),
    UNetMidBlock2DCrossAttn with transformers, and UNet2DModel's with one self-attention (none if
    `add_attention` is false). `output_scale_factor` divides every resnet's and self-attention's output.
    """

    def __init__(self, channels: int, *, temb_channels: int, groups: int, eps: float,
                 output_scale_factor: float = 1.0, num_layers: int = 1,
                 attention: AttentionSpec | None = None, time_embedding_norm: str = "default",
                 dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(channels, channels, temb_channels=temb_channels, groups=groups, eps=eps,
                          output_scale_factor=output_scale_factor, time_embedding_norm=time_embedding_norm,
                          dtype=dtype, rngs=rngs)
            for _ in range(num_layers + 1)])
        self.attentions = _attentions(channels, num_layers, attention, groups=groups, eps=eps,
                                      rescale_output_factor=output_scale_factor, dtype=dtype, rngs=rngs)

    @property
    def has_cross_attention(self) -> bool:
        return _has_cross_attention(self.attentions)

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array | None = None,
                 modulation: Modulation | None = None) -> jax.Array:
        x = self.resnets[0](x, temb, submodulation(modulation, "resnets", 0))
        for i, resnet in enumerate(self.resnets[1:], start=1):
            if self.attentions is not None:
                x = _attend(self.attentions[i - 1], x, context)
            x = resnet(x, temb, submodulation(modulation, "resnets", i))
        return x
