"""Building blocks shared by the U-Net, the ControlNet, the VAE and CLIP, written to match diffusers.

Every module takes images as (B, H, W, C) (NHWC) and token sequences as (B, L, C). Parameters are float32;
`dtype` is the compute dtype. Module attribute names follow diffusers' (norm1, conv1, time_emb_proj, to_q, ...)
so that the explicit name maps in `editdiff.interop` read one to one.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from editdiff.nn.conv import conv_general_dilated
from editdiff.nn.modulated_conv import Modulation, Offsets, modulation_delta, offsets_at

Dtype = jnp.dtype


class ModulatedConv(nnx.Conv):
    """An nnx.Conv whose kernel can be modulated per sample: `conv(x, (a, b))` convolves sample i with
    kernel * (1 + a[i, ..., :, None] * b[i, ..., None, :]) (a (B, kh, kw, Cin), b (B, kh, kw, Cout)), the
    rectifier's weight offsets; `conv(x)` is nnx.Conv's call, unchanged.

    The modulated output is nnx.Conv's own output plus `modulation_delta`, so zero offsets reproduce the
    unmodulated output bit for bit.
    """

    def __call__(self, x: jax.Array, offsets: Offsets | None = None) -> jax.Array:
        y = super().__call__(x)
        if offsets is None:
            return y
        x, kernel, a, b = self.promote_dtype((x, self.kernel[...], *offsets), dtype=self.dtype)
        return y + modulation_delta(x, kernel, a, b, strides=self.strides, padding=self.padding)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
           modulated: bool = False, dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
    """A square convolution with PyTorch's explicit symmetric `padding` (not XLA's 'SAME'); a ModulatedConv
    if `modulated` (the convs the rectifier may modulate).

    'SAME' pads a stride-2 3x3 conv on an even input (0, 1) where torch pads (1, 1); explicit padding keeps
    the two frameworks numerically identical.
    """
    conv = ModulatedConv if modulated else nnx.Conv
    return conv(in_channels, out_channels, (kernel_size, kernel_size), strides=stride,
                padding=((padding, padding), (padding, padding)), conv_general_dilated=conv_general_dilated,
                dtype=dtype, rngs=rngs)


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm(groups, channels, eps) over the last axis of (B, ..., C): each example's channels in
    `groups` groups of C / groups, each group normalised by its mean and variance over the other axes and its
    channels, then a per-channel `scale` and `bias` (nnx.GroupNorm's parameters and names). Statistics in
    float32 whatever `dtype`, the output's dtype.

    The variance is the two-pass E[(x - mean)^2], which matches torch to float32 rounding (the one-pass
    E[x^2] - mean^2 does not). Both statistics are per-channel means over the other axes first, then means over
    each group's channels: XLA:CPU reduces (B, N, C) over N, the contiguous channels kept, far faster than
    straight to (B, groups) over strided axes as nnx.GroupNorm does. In a DDIM-50 run of the tiny U-Net
    (`python -m benchmarks.profile --workload sampling`) the GroupNorm reductions took 116-142 ms in nnx.GroupNorm's
    form (7% of the run) and 38 ms in this one (benchmarks/RESULTS.md, issue 15).
    """

    def __init__(self, channels: int, *, groups: int, eps: float, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels do not split into {groups} groups")
        del rngs  # the parameters start at ones and zeros, as torch's
        self.groups, self.eps, self.dtype = groups, eps, dtype
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, channels = x.shape[0], x.shape[-1]
        per_group = channels // self.groups
        tokens = x.astype(jnp.float32).reshape(batch, -1, channels)  # (B, N, C)

        def group_mean_per_channel(values: jax.Array) -> jax.Array:
            """(B, N, C) -> (B, 1, C): each channel's group's mean over N and the group's channels."""
            group_means = jnp.mean(values, axis=1).reshape(batch, self.groups, per_group).mean(axis=-1)
            return jnp.repeat(group_means, per_group, axis=-1)[:, None, :]

        centred = tokens - group_mean_per_channel(tokens)
        normalised = centred * lax.rsqrt(group_mean_per_channel(jnp.square(centred)) + self.eps)
        out = normalised * self.scale[...] + self.bias[...]
        return out.reshape(x.shape).astype(self.dtype)


def group_norm(channels: int, *, groups: int, eps: float, dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> GroupNorm:
    """torch.nn.GroupNorm(groups, channels, eps) over the last axis (GroupNorm)."""
    return GroupNorm(channels, groups=groups, eps=eps, dtype=dtype, rngs=rngs)


# On the CPU, the attention's backward pass over query chunks of this many (when more and a multiple): see
# dot_product_attention.
CPU_QUERY_CHUNK = 256


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, is_causal: bool = False,
                          implementation: str | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v for (B, Lq, heads, head_dim) queries and (B, Lk, heads, head_dim)
    keys / values; returns (B, Lq, heads, head_dim) in the query's dtype.

    The one attention primitive of the project. Logits and softmax are computed in float32 for any input
    dtype (what diffusers' `upcast_attention` / `upcast_softmax` ask for). `is_causal` lets query i see keys
    j <= i only (CLIP's text encoder). `implementation` "cudnn" is `jax.nn.dot_product_attention`'s fused flash
    kernel (GPU); None or "xla" are XLA einsums over heads-first (B, heads, L, head_dim) operands, the query
    scaled before the product: the same math as `jax.nn.dot_product_attention`'s XLA path, whose
    "BTNH,BSNH->BNTS" contraction keeps the batch dimensions apart and ran 1.4x slower on CPU (a 1024-token
    self-attention, 2 x 4 heads of 8, the two interleaved over 40 calls: 52 ms -> 36 ms, re-run at load 0.29
    79 ms -> 54 ms;
    `python -m benchmarks.unet_parts` for the U-Net's parts).

    On the CPU, the backward pass of a non-causal attention over more than CPU_QUERY_CHUNK queries (a multiple
    of it) runs over query chunks, each chunk's forward recomputed there: the (Lq, Lk) probabilities are never
    kept whole. It took the tiny U-Net's train step at 32x32 latents (`python -m benchmarks.unet --latent 32
    --batch 2`, 1024-token self-attention) from 0.602 s to 0.281 s. The forward pass is the whole attention at
    once, as before: chunked too, it made `python -m benchmarks.sampling`'s DDIM-50 11% slower
    (benchmarks/RESULTS.md, issue 15).
    """
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(query, key, value, is_causal=is_causal, implementation=implementation)
    q_len = query.shape[1]
    if is_causal or jax.default_backend() != "cpu" or q_len <= CPU_QUERY_CHUNK or q_len % CPU_QUERY_CHUNK:
        return _xla_attention(query, key, value, is_causal)
    return _attention_with_chunked_backward(query, key, value)


@jax.custom_vjp
def _attention_with_chunked_backward(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    return _xla_attention(query, key, value, False)


def _chunked_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """The attention over query chunks of CPU_QUERY_CHUNK, each rematerialised when differentiated."""
    batch, q_len = query.shape[:2]
    chunks = jnp.swapaxes(query.reshape(batch, q_len // CPU_QUERY_CHUNK, CPU_QUERY_CHUNK, *query.shape[2:]), 0, 1)
    out = lax.map(jax.checkpoint(lambda chunk: _xla_attention(chunk, key, value, False)), chunks)
    return jnp.swapaxes(out, 0, 1).reshape(query.shape[:3] + value.shape[-1:])


def _attention_forward(query, key, value):
    return _xla_attention(query, key, value, False), (query, key, value)


def _attention_backward(residuals, cotangent):
    _, vjp = jax.vjp(_chunked_attention, *residuals)
    return vjp(cotangent)


_attention_with_chunked_backward.defvjp(_attention_forward, _attention_backward)


def _xla_attention(query: jax.Array, key: jax.Array, value: jax.Array, is_causal: bool) -> jax.Array:
    """dot_product_attention's XLA form, all queries at once."""
    heads_first = lambda t: jnp.swapaxes(t, 1, 2)  # (B, L, heads, head_dim) -> (B, heads, L, head_dim)
    scale = jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", heads_first(query) * scale, heads_first(key),
                        preferred_element_type=jnp.float32)
    if is_causal:
        q_len, k_len = logits.shape[-2:]
        visible = jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None]
        logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
    probabilities = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    return heads_first(jnp.einsum("bhqk,bhkd->bhqd", probabilities, heads_first(value)))


class Attention(nnx.Module):
    """diffusers' `Attention`: multi-head attention of (B, L, query_dim) tokens over themselves or over a
    context (B, S, context_dim); returns (B, L, query_dim).

    to_q / to_k / to_v (bias only if `qkv_bias`, as in the VAE's attention) and the to_out projection (bias).
    `implementation` goes to `dot_product_attention` (None: XLA chooses; "cudnn": flash kernel on GPU).
    """

    def __init__(self, query_dim: int, *, heads: int, head_dim: int, context_dim: int | None = None,
                 qkv_bias: bool = False, implementation: str | None = None, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        inner_dim = heads * head_dim
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.implementation = implementation
        self.to_q = nnx.Linear(query_dim, inner_dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.to_k = nnx.Linear(context_dim, inner_dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.to_v = nnx.Linear(context_dim, inner_dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.to_out = nnx.Linear(inner_dim, query_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        split_heads = lambda t: t.reshape(*t.shape[:2], self.heads, -1)
        out = dot_product_attention(split_heads(self.to_q(x)), split_heads(self.to_k(context)),
                                    split_heads(self.to_v(context)), implementation=self.implementation)
        return self.to_out(out.reshape(*out.shape[:2], -1))


class SpatialSelfAttention(nnx.Module):
    """Self-attention over the H*W positions of an image, as in the VAE and in diffusers' AttnDownBlock2D /
    AttnUpBlock2D / UNetMidBlock2D: x + to_out(attention(group_norm(x))) divided by `rescale_output_factor`;
    (B, H, W, C) -> (B, H, W, C). Heads of width `head_dim`; `groups=None` builds no group norm (diffusers'
    UNet2DModel mid block with resnet_time_scale_shift="scale_shift"); `implementation` as for Attention.
    """

    def __init__(self, channels: int, *, head_dim: int, groups: int | None, eps: float,
                 rescale_output_factor: float = 1.0, implementation: str | None = None, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.rescale_output_factor = rescale_output_factor
        self.group_norm = (None if groups is None
                           else group_norm(channels, groups=groups, eps=eps, dtype=dtype, rngs=rngs))
        self.attention = Attention(channels, heads=channels // head_dim, head_dim=head_dim, qkv_bias=True,
                                   implementation=implementation, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        tokens = (x if self.group_norm is None else self.group_norm(x)).reshape(b, h * w, c)
        out = self.attention(tokens).reshape(b, h, w, c)
        return (x + out) / self.rescale_output_factor


class FeedForward(nnx.Module):
    """The transformer feed-forward with a GEGLU gate: proj_out(a * gelu(g)), [a, g] = proj_in(x);
    (B, L, dim) -> (B, L, dim_out). gelu is the exact (erf) form, as torch's default.
    """

    def __init__(self, dim: int, *, dim_out: int | None = None, mult: int = 4, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        inner_dim = dim * mult
        self.proj_in = nnx.Linear(dim, 2 * inner_dim, dtype=dtype, rngs=rngs)
        self.proj_out = nnx.Linear(inner_dim, dim if dim_out is None else dim_out, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden, gate = jnp.split(self.proj_in(x), 2, axis=-1)
        return self.proj_out(hidden * jax.nn.gelu(gate, approximate=False))


TIME_EMBEDDING_NORMS = ("default", "scale_shift")


class ResnetBlock2D(nnx.Module):
    """diffusers' ResnetBlock2D, (B, H, W, in) -> (B, H, W, out):

        h = conv1(silu(norm1(x)))
        h = norm2(h + time_emb_proj(silu(temb)))                  # time_embedding_norm "default"
        h = norm2(h) * (1 + scale) + shift, [scale, shift] = time_emb_proj(silu(temb))   # "scale_shift"
        out = (shortcut(x) + conv2(silu(h))) / output_scale_factor

    `temb_channels=None` (the VAE) builds no time projection; shortcut is a 1x1 conv when in != out.
    conv1 and conv2 are ModulatedConvs: `modulation` {("conv1",): (a, b), ("conv2",): (a, b)} modulates them.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, temb_channels: int | None,
                 groups: int = 32, groups_out: int | None = None, eps: float = 1e-6,
                 output_scale_factor: float = 1.0, time_embedding_norm: str = "default",
                 dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        if time_embedding_norm not in TIME_EMBEDDING_NORMS:
            raise ValueError(f"ResnetBlock2D: time_embedding_norm={time_embedding_norm!r} is not supported; "
                             f"allowed: {', '.join(map(repr, TIME_EMBEDDING_NORMS))}")
        out_channels = in_channels if out_channels is None else out_channels
        self.output_scale_factor = output_scale_factor
        self.scale_shift = time_embedding_norm == "scale_shift"
        self.norm1 = group_norm(in_channels, groups=groups, eps=eps, dtype=dtype, rngs=rngs)
        self.conv1 = conv2d(in_channels, out_channels, 3, padding=1, modulated=True, dtype=dtype, rngs=rngs)
        temb_out = 2 * out_channels if self.scale_shift else out_channels
        self.time_emb_proj = (None if temb_channels is None
                              else nnx.Linear(temb_channels, temb_out, dtype=dtype, rngs=rngs))
        self.norm2 = group_norm(out_channels, groups=groups if groups_out is None else groups_out, eps=eps,
                                dtype=dtype, rngs=rngs)
        self.conv2 = conv2d(out_channels, out_channels, 3, padding=1, modulated=True, dtype=dtype, rngs=rngs)
        self.conv_shortcut = (conv2d(in_channels, out_channels, 1, dtype=dtype, rngs=rngs)
                              if in_channels != out_channels else None)

    def __call__(self, x: jax.Array, temb: jax.Array | None = None, modulation: Modulation | None = None
                 ) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)), offsets_at(modulation, "conv1"))
        if self.time_emb_proj is None:
            h = self.norm2(h)
        elif temb is None:
            raise ValueError("ResnetBlock2D built with temb_channels needs a time embedding `temb` (B, D)")
        elif self.scale_shift:
            scale, shift = jnp.split(self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :], 2, axis=-1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :])
        h = self.conv2(jax.nn.silu(h), offsets_at(modulation, "conv2"))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (shortcut + h) / self.output_scale_factor


class Downsample2D(nnx.Module):
    """Halves H and W with a 3x3 stride-2 conv; (B, H, W, C) -> (B, H', W', out), H' = ceil(H/2) for
    padding=1 and floor(H/2) for padding=0.

    `padding` is diffusers' argument: 1 pads every side by one (the U-Net); 0 is the VAE's variant, which pads
    only bottom and right by one before an unpadded conv.
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, padding: int = 1,
                 dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        if padding not in (0, 1):
            raise ValueError(f"Downsample2D padding={padding!r}: allowed 1 (symmetric) or 0 (bottom/right pad)")
        self.asymmetric_pad = padding == 0
        self.conv = conv2d(channels, channels if out_channels is None else out_channels, 3, stride=2,
                           padding=padding, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.asymmetric_pad:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


def upsample_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour resize of (B, H, W, C) to (B, *size, C) with torch's index rule floor(i * in / out).

    jax.image.resize uses half-pixel centres instead, which picks other pixels when out/in is not an integer
    (odd latent sizes, where diffusers passes the skip connection's size).
    """
    (_, h, w, _), (out_h, out_w) = x.shape, size
    if (out_h, out_w) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = (jnp.arange(out_h) * h) // out_h
    cols = (jnp.arange(out_w) * w) // out_w
    return x[:, rows][:, :, cols]


class Upsample2D(nnx.Module):
    """Nearest x2 (or to `output_size`) followed by a 3x3 conv; (B, H, W, C) -> (B, 2H, 2W, out). The conv is
    a ModulatedConv: `modulation` {("conv",): (a, b)} modulates it."""

    def __init__(self, channels: int, out_channels: int | None = None, *, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.conv = conv2d(channels, channels if out_channels is None else out_channels, 3, padding=1,
                           modulated=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None,
                 modulation: Modulation | None = None) -> jax.Array:
        size = (2 * x.shape[1], 2 * x.shape[2]) if output_size is None else tuple(output_size)
        return self.conv(upsample_nearest(x, size), offsets_at(modulation, "conv"))


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> jax.Array:
    """diffusers' `get_timestep_embedding`: (B,) timesteps -> (B, dim) float32 sinusoids.

    Frequencies exp(-log(max_period) * i / (dim/2 - freq_shift)), i < dim/2; [sin, cos] ([cos, sin] if
    `flip_sin_to_cos`); an odd `dim` gets a zero last column.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """The time MLP: linear_2(silu(linear_1(emb))); (B, in_dim) -> (B, embed_dim)."""

    def __init__(self, in_dim: int, embed_dim: int, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.linear_1 = nnx.Linear(in_dim, embed_dim, dtype=dtype, rngs=rngs)
        self.linear_2 = nnx.Linear(embed_dim, embed_dim, dtype=dtype, rngs=rngs)

    def __call__(self, emb: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(emb)))
