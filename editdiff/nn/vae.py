"""The Stable Diffusion VAE (diffusers' `AutoencoderKL`) in Flax NNX, NHWC.

    encode:  x (B, H, W, 3) -> Encoder -> quant_conv -> moments (B, H/f, W/f, 2 latent_channels)
             -> DiagonalGaussian(mean, logvar)
    decode:  z (B, H/f, W/f, latent_channels) -> post_quant_conv -> Decoder -> (B, H, W, 3)

with f = 2 ** (len(block_out_channels) - 1) (8 for SD). The diffusion latent is `scaling_factor * mean`
(or a sample); `decode` takes the unscaled latent. `VAEConfig` carries diffusers' config.json names.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.diagonal_gaussian import DiagonalGaussian
from editdiff.nn.layers import Downsample2D, ResnetBlock2D, SpatialSelfAttention, Upsample2D, conv2d, group_norm

DIFFUSERS_CLASS_NAME = "AutoencoderKL"
DOWN_BLOCK_TYPE = "DownEncoderBlock2D"
UP_BLOCK_TYPE = "UpDecoderBlock2D"
ACTIVATIONS = ("silu", "swish")  # the same function under diffusers' two names
NORM_EPS = 1e-6  # hard-coded by diffusers' Encoder / Decoder, not a config key


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """diffusers' AutoencoderKL config; field names and defaults are diffusers'.

    `sample_size` (diffusers' tiling) and `force_upcast` (a pipeline hint; our compute dtype is the
    constructor's `dtype`) have no effect here: they are kept so that an exported config.json says what the
    source said.
    `shift_factor`, `latents_mean` and `latents_std` (SD3 / Flux style latent normalisation) must be None:
    our latent is `scaling_factor * mean`, nothing else.
    """

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = (DOWN_BLOCK_TYPE,)
    up_block_types: tuple[str, ...] = (UP_BLOCK_TYPE,)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        for name in ("down_block_types", "up_block_types", "block_out_channels", "sample_size", "latents_mean",
                     "latents_std"):
            value = getattr(self, name)
            if isinstance(value, list):  # JSON arrays: keep the config hashable
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self):
        def fail(key, allowed):
            raise ValueError(f"VAEConfig.{key}={getattr(self, key)!r}: {allowed}")

        n = len(self.block_out_channels)
        if n == 0 or any(not isinstance(c, int) or c < 1 for c in self.block_out_channels):
            fail("block_out_channels", "must be a non-empty list of positive ints")
        for key, block_type in (("down_block_types", DOWN_BLOCK_TYPE), ("up_block_types", UP_BLOCK_TYPE)):
            types = getattr(self, key)
            unsupported = sorted(set(types) - {block_type})
            if unsupported:
                fail(key, f"unsupported block type(s) {unsupported}; supported: {block_type!r}")
            if len(types) != n:
                fail(key, f"needs one entry per block_out_channels ({n})")
        for key in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(key, "must be a positive int")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            fail("norm_num_groups", f"must divide every block_out_channels {self.block_out_channels}")
        if isinstance(self.scaling_factor, bool) or not isinstance(self.scaling_factor, (int, float)) \
                or self.scaling_factor <= 0:
            fail("scaling_factor", "must be a positive number")
        if self.act_fn not in ACTIVATIONS:
            fail("act_fn", f"supported: {ACTIVATIONS}")
        for key in ("shift_factor", "latents_mean", "latents_std"):
            if getattr(self, key) is not None:
                fail(key, "unsupported (only scaling_factor latent normalisation is); must be None")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "VAEConfig":
        """From a diffusers config.json dict. Metadata keys (leading underscore) are skipped, but
        `_class_name`, when present, must be AutoencoderKL; any other unknown key is an error naming it.
        """
        class_name = config.get("_class_name", DIFFUSERS_CLASS_NAME)
        if class_name != DIFFUSERS_CLASS_NAME:
            raise ValueError(f"VAE config _class_name={class_name!r}: supported {DIFFUSERS_CLASS_NAME!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in config.items() if not k.startswith("_")}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"VAE config: unsupported key(s) {unknown}; supported: {sorted(fields)}")
        return cls(**values)

    def to_diffusers(self) -> dict[str, Any]:
        """The config.json dict diffusers' `AutoencoderKL.from_pretrained` reads (tuples as lists)."""
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {"_class_name": DIFFUSERS_CLASS_NAME, **config}


class DownEncoderBlock2D(nnx.Module):
    """`layers_per_block` resnets, then (except in the last block) the VAE's bottom/right-padded stride-2 conv:
    (B, H, W, in) -> (B, H/2, W/2, out)."""

    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, add_downsample: bool, groups: int,
                 dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None, groups=groups,
                          eps=NORM_EPS, dtype=dtype, rngs=rngs) for i in range(num_layers)])
        self.downsample = Downsample2D(out_channels, padding=0, dtype=dtype, rngs=rngs) if add_downsample else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsample is None else self.downsample(x)


class UpDecoderBlock2D(nnx.Module):
    """`layers_per_block + 1` resnets, then (except in the last block) nearest x2 + conv:
    (B, H, W, in) -> (B, 2H, 2W, out)."""

    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, add_upsample: bool, groups: int,
                 dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None, groups=groups,
                          eps=NORM_EPS, dtype=dtype, rngs=rngs) for i in range(num_layers)])
        self.upsample = Upsample2D(out_channels, dtype=dtype, rngs=rngs) if add_upsample else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsample is None else self.upsample(x)


class MidBlock2D(nnx.Module):
    """diffusers' `UNetMidBlock2D` without time embedding: resnet, single-head self-attention (optional),
    resnet; (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, channels: int, *, groups: int, add_attention: bool, dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock2D(channels, channels, temb_channels=None, groups=groups, eps=NORM_EPS, dtype=dtype, rngs=rngs)
            for _ in range(2)])
        # diffusers sets attention_head_dim = channels: one head over all channels.
        self.attention = (SpatialSelfAttention(channels, head_dim=channels, groups=groups, eps=NORM_EPS, dtype=dtype,
                                               rngs=rngs) if add_attention else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x)


class Encoder(nnx.Module):
    """(B, H, W, in_channels) -> moments (B, H/f, W/f, 2 latent_channels), before quant_conv."""

    def __init__(self, config: VAEConfig, *, dtype, rngs: nnx.Rngs):
        channels, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = conv2d(config.in_channels, channels[0], 3, padding=1, dtype=dtype, rngs=rngs)
        self.down_blocks = nnx.List([
            DownEncoderBlock2D(channels[max(i - 1, 0)], channels[i], num_layers=config.layers_per_block,
                               add_downsample=i < len(channels) - 1, groups=groups, dtype=dtype, rngs=rngs)
            for i in range(len(channels))])
        self.mid_block = MidBlock2D(channels[-1], groups=groups, add_attention=config.mid_block_add_attention,
                                    dtype=dtype, rngs=rngs)
        self.conv_norm_out = group_norm(channels[-1], groups=groups, eps=NORM_EPS, dtype=dtype, rngs=rngs)
        self.conv_out = conv2d(channels[-1], 2 * config.latent_channels, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """(B, h, w, latent_channels), after post_quant_conv -> (B, h f, w f, out_channels)."""

    def __init__(self, config: VAEConfig, *, dtype, rngs: nnx.Rngs):
        channels, groups = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = conv2d(config.latent_channels, channels[0], 3, padding=1, dtype=dtype, rngs=rngs)
        self.mid_block = MidBlock2D(channels[0], groups=groups, add_attention=config.mid_block_add_attention,
                                    dtype=dtype, rngs=rngs)
        self.up_blocks = nnx.List([
            UpDecoderBlock2D(channels[max(i - 1, 0)], channels[i], num_layers=config.layers_per_block + 1,
                             add_upsample=i < len(channels) - 1, groups=groups, dtype=dtype, rngs=rngs)
            for i in range(len(channels))])
        self.conv_norm_out = group_norm(channels[-1], groups=groups, eps=NORM_EPS, dtype=dtype, rngs=rngs)
        self.conv_out = conv2d(channels[-1], config.out_channels, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """The SD VAE. Parameters float32; `dtype` is the compute dtype; posteriors are float32."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.config = config
        self.scaling_factor = float(config.scaling_factor)
        self.latent_channels = config.latent_channels
        self.downsample_factor = config.downsample_factor
        moments = 2 * config.latent_channels
        self.encoder = Encoder(config, dtype=dtype, rngs=rngs)
        self.decoder = Decoder(config, dtype=dtype, rngs=rngs)
        self.quant_conv = conv2d(moments, moments, 1, dtype=dtype, rngs=rngs) if config.use_quant_conv else None
        self.post_quant_conv = (conv2d(config.latent_channels, config.latent_channels, 1, dtype=dtype, rngs=rngs)
                                if config.use_post_quant_conv else None)

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        """x (B, H, W, in_channels) in [-1, 1], H and W multiples of f -> posterior over (B, H/f, W/f, C)."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: jax.Array) -> jax.Array:
        """Unscaled latent z (B, h, w, latent_channels) -> image (B, h f, w f, out_channels), compute dtype."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)
