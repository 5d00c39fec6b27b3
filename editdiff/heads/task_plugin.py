"""The Task-Plugin of Diff-Plugin (seed 002, METHODS.md §3): the two trainable branches one task adds to a frozen
latent diffusion U-Net.

Task-Prompt Branch (TPB), the paper's "visual prompt" F^p:

    F = CLIP_vision(x_degraded).patch_tokens          (B, N, clip_width): the last encoder layer before the
                                                      post-LayerNorm, class token dropped (frozen tower)
    F^p = Dense(LeakyReLU(LN(Dense(LeakyReLU(LN(Dense(F)))))))     (B, N, cross_attention_dim)

F^p replaces the text embeddings as the cross-attention context of the frozen U-Net and of the SCB.

Spatial Complement Branch (SCB), F^s, built as the authors' code builds it: a one-stage ControlNet over the
degraded input's latent (the noisy latent is not an input):

    h_0 = conv_in(s * mean(E(x_degraded)))            (B, h, w, C0): the VAE posterior mean times its scaling
    h_1 .. h_L = CrossAttnDownBlock2D(h_0, temb(t), F^p)    one U-Net-like stage: L x (ResnetBlock2D +
                                                      Transformer2DModel), C0 channels, no downsampler
    F^s_i = zero_conv_i(h_i), i = 0 .. L              zero-initialised 1x1 convs

C0 and L are the U-Net's first stage (block_out_channels[0], layers_per_block[0]): F^s_0 .. F^s_L are added to
the U-Net's first L + 1 skip connections (conv_in and down_blocks[0]'s layers, `down_residuals`), which only
the last decoder stage consumes — the paper's "added to the last decoder stage". Every other skip and the mid
block get nothing (`down_residuals_for`). The zero convs make a fresh plugin's residuals exactly zero, so it
starts as the frozen U-Net with the visual prompt as context.

Both branches start from random weights (not copied from the U-Net), as in the authors' code.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.controlnet import ControlNetConfig, zero_conv
from editdiff.nn.layers import TimestepEmbedding, conv2d
from editdiff.nn.unet import UNetConfig, build_down_blocks, embed_timesteps, num_skip_connections, per_block

Dtype = jnp.dtype


@dataclasses.dataclass(frozen=True)
class TaskPluginConfig:
    """A plugin's sizes. clip_width: the CLIP vision tower's hidden_size (1024 for ViT-L/14); prompt_width: the
    TPB's hidden width (the authors': clip_width); leaky_relu_slope: torch's default; spatial: the SCB's stage
    in diffusers' ControlNet terms (one CrossAttnDownBlock2D of the U-Net's first width; `from_unet`)."""

    spatial: ControlNetConfig
    clip_width: int = 1024
    prompt_width: int = 1024
    leaky_relu_slope: float = 0.01

    def __post_init__(self):
        if self.spatial.down_block_types != ("CrossAttnDownBlock2D",):
            raise ValueError(f"TaskPluginConfig: spatial.down_block_types={self.spatial.down_block_types!r} must be "
                             "('CrossAttnDownBlock2D',): the SCB is one cross-attention stage over the prompt")
        for key in ("clip_width", "prompt_width"):
            if getattr(self, key) < 1:
                raise ValueError(f"TaskPluginConfig: {key}={getattr(self, key)!r} must be >= 1")

    @property
    def context_dim(self) -> int:
        """The prompt tokens' width: the U-Net's cross_attention_dim."""
        return self.spatial.cross_attention_dim

    @property
    def num_residuals(self) -> int:
        """conv_in's output and one per layer of the stage: the U-Net skips the SCB feeds."""
        return 1 + self.spatial.layers_per_block

    @classmethod
    def from_unet(cls, unet: UNetConfig, *, clip_width: int, prompt_width: int | None = None,
                  leaky_relu_slope: float = 0.01) -> "TaskPluginConfig":
        """The plugin of `unet`: the SCB stage has the width, layer count, heads and norms of the U-Net's first
        stage (with cross-attention, whatever that stage's own type) and the U-Net's time embedding."""
        n = len(unet.down_block_types)
        spatial = ControlNetConfig(
            in_channels=unet.in_channels, flip_sin_to_cos=unet.flip_sin_to_cos, freq_shift=unet.freq_shift,
            down_block_types=("CrossAttnDownBlock2D",), block_out_channels=(unet.block_out_channels[0],),
            layers_per_block=per_block(unet.layers_per_block, n)[0], act_fn=unet.act_fn,
            norm_num_groups=unet.norm_num_groups, norm_eps=unet.norm_eps,
            cross_attention_dim=unet.cross_attention_dim,
            transformer_layers_per_block=per_block(unet.transformer_layers_per_block, n)[0],
            attention_head_dim=per_block(unet.attention_head_dim, n)[0],
            use_linear_projection=unet.use_linear_projection, upcast_attention=unet.upcast_attention)
        return cls(spatial=spatial, clip_width=clip_width, prompt_width=prompt_width or clip_width,
                   leaky_relu_slope=leaky_relu_slope)


class TaskPromptBranch(nnx.Module):
    """[Dense, LayerNorm, LeakyReLU] x 2, then Dense: (B, N, clip_width) CLIP patch tokens -> (B, N,
    context_dim) visual prompt tokens F^p."""

    def __init__(self, config: TaskPluginConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.slope = config.leaky_relu_slope
        widths = (config.clip_width, config.prompt_width, config.prompt_width)
        self.hidden = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        # torch's LayerNorm (the authors' code): eps 1e-5, the two-pass variance.
        self.norms = nnx.List([nnx.LayerNorm(config.prompt_width, epsilon=1e-5, use_fast_variance=False, dtype=dtype,
                                             rngs=rngs) for _ in widths[1:]])
        self.out = nnx.Linear(config.prompt_width, config.context_dim, dtype=dtype, rngs=rngs)
        self.dtype = dtype

    def __call__(self, clip_tokens: jax.Array) -> jax.Array:
        h = clip_tokens.astype(self.dtype)
        for dense, norm in zip(self.hidden, self.norms):
            h = jax.nn.leaky_relu(norm(dense(h)), self.slope)
        return self.out(h)


class SpatialComplementBranch(nnx.Module):
    """The one-stage ControlNet over the degraded input's scaled latent mean (module docstring): (B, h, w,
    in_channels) latent, timesteps, (B, N, context_dim) prompt tokens -> num_residuals (B, h, w, C0) residuals."""

    def __init__(self, config: TaskPluginConfig, *, dtype: Dtype = jnp.float32,
                 attention_implementation: str | None = None, rngs: nnx.Rngs):
        spatial = self.config = config.spatial
        self.dtype = dtype
        channels = spatial.block_out_channels[0]
        self.conv_in = conv2d(spatial.in_channels, channels, 3, padding=1, dtype=dtype, rngs=rngs)
        self.time_embedding = TimestepEmbedding(channels, spatial.time_embed_dim, dtype=dtype, rngs=rngs)
        (self.stage,) = build_down_blocks(spatial, temb_channels=spatial.time_embed_dim,
                                          attention_implementation=attention_implementation, dtype=dtype, rngs=rngs)
        self.zero_convs = nnx.List([zero_conv(channels, channels, 1, dtype=dtype, rngs=rngs)
                                    for _ in range(config.num_residuals)])

    def __call__(self, latent: jax.Array, timesteps: jax.Array | float, prompt: jax.Array) -> tuple[jax.Array, ...]:
        emb = embed_timesteps(self.time_embedding, self.config, timesteps, latent.shape[0], self.dtype)
        h = self.conv_in(latent.astype(self.dtype))
        _, layers = self.stage(h, emb, prompt.astype(self.dtype))
        return tuple(conv(x) for conv, x in zip(self.zero_convs, (h, *layers)))


class TaskPlugin(nnx.Module):
    """One task's plugin: the prompt branch and the spatial branch (float32 params, computation in `dtype`)."""

    def __init__(self, config: TaskPluginConfig, *, dtype: Dtype = jnp.float32,
                 attention_implementation: str | None = None, rngs: nnx.Rngs):
        self.config = config
        self.prompt = TaskPromptBranch(config, dtype=dtype, rngs=rngs)
        self.spatial = SpatialComplementBranch(config, dtype=dtype, attention_implementation=attention_implementation,
                                               rngs=rngs)

    def __call__(self, clip_tokens: jax.Array, latent: jax.Array, timesteps: jax.Array | float
                 ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """(F^p (B, N, context_dim), F^s: num_residuals (B, h, w, C0)) from the frozen CLIP tower's patch tokens
        (B, N, clip_width) and the degraded input's scaled latent mean (B, h, w, C) at `timesteps` (B,)."""
        prompt = self.prompt(clip_tokens)
        return prompt, self.spatial(latent, timesteps, prompt)


def down_residuals_for(unet: UNetConfig, residuals: Sequence[jax.Array]) -> tuple[jax.Array | None, ...]:
    """The U-Net's `down_residuals`: `residuals` on its first skips, None (nothing added) on the rest. A stage
    wider or longer than the U-Net's first is an error."""
    total = num_skip_connections(unet)
    first = 1 + per_block(unet.layers_per_block, len(unet.down_block_types))[0]
    if len(residuals) > first:
        raise ValueError(f"down_residuals_for: {len(residuals)} residuals; the U-Net's first stage has {first} skip "
                         "connections (conv_in and its layers)")
    return (*residuals, *(None,) * (total - len(residuals)))
