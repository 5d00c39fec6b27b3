"""The rectifier R of seed 001 (METHODS.md §2): a hypernetwork producing per-sample weight offsets for the convs
of a frozen U-Net.

The paper's equations (1) and (2): at step t, for the l-th modulated layer, input channel i and filter j,

    Delta_{l,t}^{i,j} := R(x_0, P_t[eps_t^theta(x_t)], t)
    theta_hat_{l,t}^{i,j} := theta_{l,t}^{i,j} * (1 + Delta_{l,t}^{i,j})

with the separable form of its "Hypernetwork as Rectifier" section: Delta is the product of two slim factors,
a: h x w x C_in x 1 and b: h x w x 1 x C_out, so Delta = a * b (broadcast), i.e. per kernel tap
Delta_k = a_k b_k^T. R outputs {conv path: (a (B, kh, kw, Cin), b (B, kh, kw, Cout))}, a `Modulation` that
`unet(..., modulation=R(x0, P_t, t))` applies as kernel * (1 + a b^T) (editdiff/nn/modulated_conv.py).

Architecture (the paper's appendix, Fig. 9, following HyperStyle's separable refinement blocks):

    global encoder   E: concat(x_0, P_t) (B, H, W, 2C) -> stem conv 7x7 / stem_stride + BN + ReLU
                        -> ResNet BasicBlock stages (stage 0 stride 1, the others stride 2, channels
                           base_channels * 2^s) -> shared feature map (B, h, w, base_channels * 2^(S-1))
                        (ResNet-34: stage_blocks (3, 4, 6, 3), base 64, 6 input channels: 16x16x512 at 256 px)
    time embedding   temb = linear_2(silu(linear_1(sinusoid(t))))           (the U-Net's TimestepEmbedding)
    subnet per layer conv 3x3 to subnet_channels + LeakyReLU, then stride-2 convs 3x3 + LeakyReLU until 1x1, the
                     last one to code_dim (HyperStyle's refinement block) -> code (B, code_dim);
                     code = leaky_relu(code + time_emb_proj(silu(temb)))     (injected as in a U-Net resnet)
                     a = head_a(code) -> (B, kh, kw, Cin);  b = head_b(code) -> (B, kh, kw, Cout)
                     (Dense heads on the 1x1 code: the paper's "two convolutions" at 1x1, HyperStyle's linears)

Initialisation: head_b is zero (kernel and bias), head_a small random. Then b = 0, so Delta = a * b = 0 and the
modulated U-Net is exactly the frozen one at initialisation. Zeroing *both* heads would freeze training: the
gradient of the loss w.r.t. b is a^T dL/dDelta and w.r.t. a is dL/dDelta b, both zero when a = b = 0, and so is
every gradient upstream of them. With a != 0, head_b gets a nonzero gradient at the first step; once b != 0,
head_a, the subnets and the encoder receive gradients too.

BatchNorm (nnx.BatchNorm) normalises with batch statistics and updates its running averages in train mode;
`rectifier.eval()` makes it use the running averages. The running averages are non-parameter state
(nnx.BatchStat): the trainer carries them through the step.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.conv import conv_general_dilated
from editdiff.nn.layers import TimestepEmbedding, conv2d, timestep_embedding
from editdiff.nn.modulated_conv import Modulation

Dtype = jnp.dtype
Layer = tuple[tuple, tuple[int, int, int, int]]  # (Flax path of a conv, kernel shape (kh, kw, Cin, Cout))
FLIP_SIN_TO_COS, FREQ_SHIFT = True, 0  # R's sinusoid of t (the PyTorch export builds the same one)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(value) -> tuple[int, int]:
    return (value, value) if _is_int(value) else tuple(value)


def _halved(size: int, times: int) -> int:
    """The size after `times` 3x3 stride-2 convs with padding 1 (each gives ceil(size / 2))."""
    for _ in range(times):
        size = -(-size // 2)
    return size


@dataclasses.dataclass(frozen=True)
class RectifierConfig:
    """The rectifier's sizes. Defaults are the paper's: a ResNet-34 encoder over a 6-channel input at 256 px.

    in_channels:         channels of concat(x_0, P_t): 6 for a pixel model, 2 x latent channels for a latent one.
    image_size:          H and W of x_0 (int or (H, W)); sets how many stride-2 convs a subnet needs to reach
                         1x1. Other sizes are accepted: a subnet averages whatever positions remain.
    stage_blocks:        BasicBlocks per encoder stage: (3, 4, 6, 3) is ResNet-34, (1, 1) a tiny encoder.
    base_channels:       width of the stem and the first stage; stage s has base_channels * 2^s.
    stem_stride:         stride of the 7x7 stem conv (2 as in ResNet / HyperStyle; 1 for small latents).
    subnet_channels:     width of a subnet's inner convs (HyperStyle's inner_c: 256 in its separable blocks).
    code_dim:            width D of a subnet's 1x1 code (HyperStyle: 512).
    time_embedding_dim:  width of the sinusoidal embedding of t (the U-Net's block_out_channels[0]); the time
                         MLP maps it to code_dim.
    batch_norm_momentum: running-average decay of the encoder's BatchNorms (flax convention: 0.9 is torch's 0.1).
    a_init_scale:        head_a's kernel is normal with stddev a_init_scale / sqrt(code_dim) (head_b is zero).
    leaky_relu_slope:    negative slope of the subnets' LeakyReLUs (torch's default 0.01).
    """

    in_channels: int = 6
    image_size: int | tuple[int, int] = 256
    stage_blocks: tuple[int, ...] = (3, 4, 6, 3)
    base_channels: int = 64
    stem_stride: int = 2
    subnet_channels: int = 256
    code_dim: int = 512
    time_embedding_dim: int = 128
    batch_norm_momentum: float = 0.9
    a_init_scale: float = 1.0
    leaky_relu_slope: float = 0.01

    def __post_init__(self):
        if isinstance(self.stage_blocks, list):
            object.__setattr__(self, "stage_blocks", tuple(self.stage_blocks))
        if isinstance(self.image_size, list):
            object.__setattr__(self, "image_size", tuple(self.image_size))

        def fail(field: str, requirement: str):
            raise ValueError(f"RectifierConfig: {field}={getattr(self, field)!r} {requirement}")

        for field in ("in_channels", "base_channels", "subnet_channels", "code_dim"):
            if not _is_int(getattr(self, field)) or getattr(self, field) < 1:
                fail(field, "must be an int >= 1")
        if not _is_int(self.time_embedding_dim) or self.time_embedding_dim < 2:
            fail("time_embedding_dim", "must be an int >= 2")
        if (not isinstance(self.stage_blocks, tuple) or not self.stage_blocks
                or not all(_is_int(n) and n >= 1 for n in self.stage_blocks)):
            fail("stage_blocks", "must be a non-empty sequence of ints >= 1 (blocks per stage)")
        size = self.image_size
        if not ((_is_int(size) and size >= 1) or (isinstance(size, tuple) and len(size) == 2
                                                  and all(_is_int(s) and s >= 1 for s in size))):
            fail("image_size", "must be an int >= 1 or a pair (H, W) of them")
        if self.stem_stride not in (1, 2) or not _is_int(self.stem_stride):
            fail("stem_stride", "must be 1 or 2")
        if not 0.0 <= self.batch_norm_momentum < 1.0:
            fail("batch_norm_momentum", "must be in [0, 1)")
        if not self.a_init_scale > 0.0:
            fail("a_init_scale", "must be > 0 (a zero head_a would leave, with the zero head_b, no gradient)")
        if not self.leaky_relu_slope >= 0.0:
            fail("leaky_relu_slope", "must be >= 0")

    @property
    def feature_channels(self) -> int:
        """Channels of the encoder's shared feature map."""
        return self.base_channels * 2 ** (len(self.stage_blocks) - 1)

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the shared feature map for inputs of `image_size`."""
        return tuple(_halved(-(-s // self.stem_stride), len(self.stage_blocks) - 1) for s in _pair(self.image_size))

    @property
    def subnet_downsamples(self) -> int:
        """Stride-2 convs a subnet needs to bring the feature map to 1x1."""
        return max(math.ceil(math.log2(s)) for s in self.feature_size) if max(self.feature_size) > 1 else 0


def _batch_norm(channels: int, config: RectifierConfig, dtype: Dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=config.batch_norm_momentum, epsilon=1e-5, dtype=dtype, rngs=rngs)


def _conv_no_bias(in_channels: int, out_channels: int, kernel_size: int, stride: int, dtype: Dtype,
                  rngs: nnx.Rngs) -> nnx.Conv:
    """A conv before a BatchNorm: no bias (the BatchNorm's shift replaces it), torch's symmetric padding."""
    pad = (kernel_size - 1) // 2
    return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=stride,
                    padding=((pad, pad), (pad, pad)), use_bias=False, conv_general_dilated=conv_general_dilated,
                    dtype=dtype, rngs=rngs)


class BasicBlock(nnx.Module):
    """ResNet's BasicBlock, (B, H, W, in) -> (B, H/stride, W/stride, out):
    relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), shortcut a 1x1 conv + BN when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, config: RectifierConfig, *,
                 dtype: Dtype, rngs: nnx.Rngs):
        self.conv1 = _conv_no_bias(in_channels, out_channels, 3, stride, dtype, rngs)
        self.bn1 = _batch_norm(out_channels, config, dtype, rngs)
        self.conv2 = _conv_no_bias(out_channels, out_channels, 3, 1, dtype, rngs)
        self.bn2 = _batch_norm(out_channels, config, dtype, rngs)
        if stride != 1 or in_channels != out_channels:
            self.shortcut_conv = _conv_no_bias(in_channels, out_channels, 1, stride, dtype, rngs)
            self.shortcut_bn = _batch_norm(out_channels, config, dtype, rngs)
        else:
            self.shortcut_conv = self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
        return jax.nn.relu(h + shortcut)


class GlobalEncoder(nnx.Module):
    """The shared encoder: (B, H, W, in_channels) -> (B, h, w, feature_channels), h = ceil(H / stem_stride)
    halved (ceil) once per stage after the first. The stem is HyperStyle's (7x7 conv, BN, no max-pool)."""

    def __init__(self, config: RectifierConfig, *, dtype: Dtype, rngs: nnx.Rngs):
        self.stem_conv = _conv_no_bias(config.in_channels, config.base_channels, 7, config.stem_stride, dtype, rngs)
        self.stem_bn = _batch_norm(config.base_channels, config, dtype, rngs)
        blocks, channels = [], config.base_channels
        for stage, num_blocks in enumerate(config.stage_blocks):
            out_channels = config.base_channels * 2 ** stage
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride, config, dtype=dtype, rngs=rngs))
                channels = out_channels
        self.blocks = nnx.List(blocks)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.stem_bn(self.stem_conv(x)))
        for block in self.blocks:
            h = block(h)
        return h


class Subnet(nnx.Module):
    """One modulated layer's branch: feature map (B, h, w, feature_channels) and time embedding (B, code_dim)
    -> (a (B, kh, kw, Cin), b (B, kh, kw, Cout)) for a conv of kernel shape (kh, kw, Cin, Cout)."""

    def __init__(self, kernel_shape: Sequence[int], config: RectifierConfig, *, dtype: Dtype, rngs: nnx.Rngs):
        kh, kw, cin, cout = kernel_shape
        self.a_shape, self.b_shape = (kh, kw, cin), (kh, kw, cout)
        self.slope = config.leaky_relu_slope
        d, n = config.code_dim, config.subnet_downsamples
        # feature_channels -> subnet_channels (stride 1), then n stride-2 convs, the last one to code_dim.
        widths = [config.feature_channels] + [config.subnet_channels] * n + [d]
        self.convs = nnx.List([conv2d(w_in, w_out, 3, stride=1 if i == 0 else 2, padding=1, dtype=dtype, rngs=rngs)
                               for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:]))])
        self.time_emb_proj = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
        a_init = jax.nn.initializers.normal(config.a_init_scale / math.sqrt(d))
        self.head_a = nnx.Linear(d, kh * kw * cin, kernel_init=a_init, dtype=dtype, rngs=rngs)
        # Zero: b = 0 makes Delta = a * b = 0 at initialisation (see the module docstring for why only b).
        self.head_b = nnx.Linear(d, kh * kw * cout, kernel_init=jax.nn.initializers.zeros, dtype=dtype, rngs=rngs)

    def __call__(self, features: jax.Array, temb: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = features
        for conv in self.convs:
            h = jax.nn.leaky_relu(conv(h), self.slope)
        # 1x1 at the configured image size; other sizes average the positions left.
        code = jnp.mean(h, axis=(1, 2))
        code = jax.nn.leaky_relu(code + self.time_emb_proj(jax.nn.silu(temb)), self.slope)
        batch = code.shape[0]
        return (self.head_a(code).reshape(batch, *self.a_shape), self.head_b(code).reshape(batch, *self.b_shape))


class Rectifier(nnx.Module):
    """R(x_0, P_t, t) -> Modulation for the convs `layers` of a frozen U-Net (usually `modulation_paths(unet)`).

    `__call__(x0 (B, H, W, C), estimate (B, H, W, C), t (B,) or scalar)` with 2C = config.in_channels returns
    {path: (a (B, kh, kw, Cin), b (B, kh, kw, Cout))} in the order of `layers`. Parameters are float32;
    `dtype` is the compute dtype, and that of a and b.
    """

    def __init__(self, config: RectifierConfig, layers: Sequence[Layer], *, rngs: nnx.Rngs,
                 dtype: Dtype = jnp.float32):
        layers = [(tuple(path), tuple(int(n) for n in shape)) for path, shape in layers]
        if not layers:
            raise ValueError("Rectifier: layers is empty; pass modulation_paths(unet)")
        for path, shape in layers:
            if len(shape) != 4 or min(shape) < 1:
                raise ValueError(f"Rectifier: layer {path!r} has kernel shape {shape}, expected (kh, kw, Cin, Cout)")
        paths = [path for path, _ in layers]
        repeated = sorted({path for path in paths if paths.count(path) > 1}, key=repr)
        if repeated:
            raise ValueError(f"Rectifier: layers name a path more than once: {repeated}")
        self.config = config
        self.dtype = dtype
        self.layers = tuple(layers)
        self.encoder = GlobalEncoder(config, dtype=dtype, rngs=rngs)
        self.time_embedding = TimestepEmbedding(config.time_embedding_dim, config.code_dim, dtype=dtype, rngs=rngs)
        self.subnets = nnx.List([Subnet(shape, config, dtype=dtype, rngs=rngs) for _, shape in layers])

    def __call__(self, x0: jax.Array, estimate: jax.Array, t: jax.Array | float) -> Modulation:
        if x0.ndim != 4 or x0.shape != estimate.shape:
            raise ValueError(f"Rectifier: x0 {x0.shape} and estimate {estimate.shape} must be equal (B, H, W, C)")
        if 2 * x0.shape[-1] != self.config.in_channels:
            raise ValueError(f"Rectifier: x0 and estimate have {x0.shape[-1]} channels each, their concatenation "
                             f"{2 * x0.shape[-1]}, but config.in_channels={self.config.in_channels}")
        batch = x0.shape[0]
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        if t.shape != (batch,):
            raise ValueError(f"Rectifier: t has shape {t.shape}, expected ({batch},) or a scalar")
        features = self.encoder(jnp.concatenate([x0, estimate], axis=-1).astype(self.dtype))
        sinusoid = timestep_embedding(t, self.config.time_embedding_dim, flip_sin_to_cos=FLIP_SIN_TO_COS,
                                      freq_shift=FREQ_SHIFT)
        temb = self.time_embedding(sinusoid.astype(self.dtype))
        return {path: subnet(features, temb) for (path, _), subnet in zip(self.layers, self.subnets)}
