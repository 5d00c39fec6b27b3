"""The stages of the SD U-Net, as diffusers builds them: Transformer2DModel, the down / mid / up blocks.

All take (B, H, W, C) feature maps, a time embedding `temb` (B, T) and an optional cross-attention context
(B, L, D). Attribute names follow diffusers' (resnets, attentions, transformer_blocks, attn1, ...); the
interop name map spells out the few places where they differ (downsamplers.0 -> downsample, ...).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.layers import Attention, Downsample2D, FeedForward, ResnetBlock2D, Upsample2D, group_norm

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


def _transformers(channels: int, count: int, spec: CrossAttentionSpec | None, groups: int, dtype: Dtype,
                  rngs: nnx.Rngs) -> nnx.List | None:
    if spec is None:
        return None
    return nnx.List([Transformer2DModel(channels, spec=spec, groups=groups, dtype=dtype, rngs=rngs)
                     for _ in range(count)])


class DownBlock2D(nnx.Module):
    """diffusers' DownBlock2D, or CrossAttnDownBlock2D when `cross_attention` is given: `num_layers` x
    (ResnetBlock2D [+ Transformer2DModel]) then an optional stride-2 Downsample2D.

    Returns (B, H', W', out) and the skip connections: the output of every layer, then of the downsampler.
    """

    def __init__(self, in_channels: int, out_channels: int, *, temb_channels: int, num_layers: int,
                 add_downsample: bool, groups: int, eps: float, downsample_padding: int = 1,
                 cross_attention: CrossAttentionSpec | None = None, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=temb_channels,
                          groups=groups, eps=eps, dtype=dtype, rngs=rngs)
            for i in range(num_layers)])
        self.attentions = _transformers(out_channels, num_layers, cross_attention, groups, dtype, rngs)
        self.downsample = (Downsample2D(out_channels, padding=downsample_padding, dtype=dtype, rngs=rngs)
                           if add_downsample else None)

    @property
    def has_cross_attention(self) -> bool:
        return self.attentions is not None

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array | None = None
                 ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, tuple(skips)


class UpBlock2D(nnx.Module):
    """diffusers' UpBlock2D, or CrossAttnUpBlock2D when `cross_attention` is given: `num_layers` x
    (concat the last unused skip on channels -> ResnetBlock2D [+ Transformer2DModel]) then an optional
    nearest-x2 Upsample2D (to `upsample_size` when given, for odd latent sizes).

    `skips` are consumed from the end, one per layer; returns (B, H', W', out).
    """

    def __init__(self, in_channels: int, prev_output_channels: int, out_channels: int, *, temb_channels: int,
                 num_layers: int, add_upsample: bool, groups: int, eps: float,
                 cross_attention: CrossAttentionSpec | None = None, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        def resnet(i: int) -> ResnetBlock2D:
            hidden = prev_output_channels if i == 0 else out_channels
            skip = in_channels if i == num_layers - 1 else out_channels
            return ResnetBlock2D(hidden + skip, out_channels, temb_channels=temb_channels, groups=groups, eps=eps,
                                 dtype=dtype, rngs=rngs)

        self.resnets = nnx.List([resnet(i) for i in range(num_layers)])
        self.attentions = _transformers(out_channels, num_layers, cross_attention, groups, dtype, rngs)
        self.upsample = Upsample2D(out_channels, dtype=dtype, rngs=rngs) if add_upsample else None

    @property
    def has_cross_attention(self) -> bool:
        return self.attentions is not None

    def __call__(self, x: jax.Array, skips: tuple[jax.Array, ...], temb: jax.Array,
                 context: jax.Array | None = None, upsample_size: tuple[int, int] | None = None) -> jax.Array:
        for i, resnet in enumerate(self.resnets):
            x = resnet(jnp.concatenate([x, skips[-1 - i].astype(x.dtype)], axis=-1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsample is not None:
            x = self.upsample(x, upsample_size)
        return x


class UNetMidBlock2DCrossAttn(nnx.Module):
    """resnet -> (Transformer2DModel -> resnet) x num_layers at constant width; (B, H, W, C) -> same."""

    def __init__(self, channels: int, *, temb_channels: int, cross_attention: CrossAttentionSpec, groups: int,
                 eps: float, output_scale_factor: float = 1.0, num_layers: int = 1, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(channels, channels, temb_channels=temb_channels, groups=groups, eps=eps,
                          output_scale_factor=output_scale_factor, dtype=dtype, rngs=rngs)
            for _ in range(num_layers + 1)])
        self.attentions = _transformers(channels, num_layers, cross_attention, groups, dtype, rngs)

    has_cross_attention = True

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array | None = None) -> jax.Array:
        x = self.resnets[0](x, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attention(x, context), temb)
        return x


class UNetMidBlock2D(nnx.Module):
    """UNet2DConditionModel's "UNetMidBlock2D": diffusers builds it with `num_layers=0, add_attention=False`,
    a single resnet and no attention; (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, channels: int, *, temb_channels: int, groups: int, eps: float,
                 output_scale_factor: float = 1.0, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, temb_channels=temb_channels, groups=groups,
                                               eps=eps, output_scale_factor=output_scale_factor, dtype=dtype,
                                               rngs=rngs)])

    has_cross_attention = False

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array | None = None) -> jax.Array:
        return self.resnets[0](x, temb)
