"""Building blocks shared by the frozen feature networks: inference-only batch norm and PyTorch-style pools."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class FrozenBatchNorm(nnx.Module):
    """Batch norm with fixed statistics: (x - running_mean) / sqrt(running_var + eps) * weight + bias.

    The four tensors are parameters read from the checkpoint (these networks are never trained), so one name
    map covers them like any weight. Named after PyTorch's BatchNorm2d tensors.
    """

    def __init__(self, channels: int, *, eps: float):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.running_mean = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.running_var = nnx.Param(jnp.ones((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + self.eps)
        shift = self.bias[...] - self.running_mean[...] * scale
        return x * scale.astype(x.dtype) + shift.astype(x.dtype)


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """torch.nn.MaxPool2d(window, stride, padding) on (B, H, W, C): floor mode, padding never wins the max."""
    return nnx.max_pool(x, (window, window), (stride, stride), ((padding, padding), (padding, padding)))


def avg_pool_exclude_padding(x: jax.Array, window: int = 3) -> jax.Array:
    """torch.nn.functional.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)."""
    pad = window // 2
    return nnx.avg_pool(x, (window, window), (1, 1), ((pad, pad), (pad, pad)), count_include_pad=False)
