"""The 2-D convolution every nnx.Conv of the models runs (`conv_general_dilated=conv_general_dilated`): XLA's
own, except on the CPU, where its backward pass and its forward pass over wide inputs are slow.

XLA:CPU (jaxlib 0.10.2, YNNPACK) computes a 3x3 convolution's gradients 1.5-3x slower than the same arithmetic
written as one matrix product over the input's k*k shifted copies (im2col: (B, H', W', k*k*Cin) @
(k*k*Cin, Cout)), and its forward pass over 1280 channels 4x slower; over few channels and large images its
forward pass is the faster one (`python -m benchmarks.conv`, benchmarks/RESULTS.md, issue 15). So on the CPU:

- the backward pass is the im2col product's (a custom VJP: the forward result is unchanged, and the gradients
  are the same sums in another order) for a convolution of at least IM2COL_MIN_MACS multiply-adds; below that,
  XLA's own convolution and its fusions with the neighbouring ops were faster;
- the forward pass is the im2col product for a 1x1 kernel (then it is a plain matmul) and where the product's
  rows k*k*Cin reach IM2COL_FORWARD_MIN_ROWS, and XLA's convolution below that.

Other backends (GPU: cuDNN; TPU), and any convolution with dilation, feature groups, string padding or an output
sharding, take `lax.conv_general_dilated` unchanged. Layouts are flax's: NHWC inputs, HWIO kernels.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# k*k*Cin from which the forward pass is the im2col product on the CPU (512 channels of a 3x3 kernel). In
# `python -m benchmarks.conv` (2026-12-04) the im2col forward alone was slower than XLA's below it (8 x 32x32, 64
# channels: 27.2 ms vs 11.3 ms; 8 x 8x8, 128 channels: 4.0 vs 3.6 ms) and faster above it (16x16, 640 channels:
# 13.6 vs 20.7 ms; 8x8, 1280 channels: 17.0 vs 69.0 ms); at 320 channels it was level or faster by run.
IM2COL_FORWARD_MIN_ROWS = 9 * 512
# Multiply-adds B*H'*W'*k*k*Cin*Cout from which the CPU convolution takes the im2col forms at all: the U-Net of
# `python -m benchmarks.unet` (batch 2, 16x16, 32-64 channels; 5M per conv) trained 0.063 -> 0.075 s per step with
# them everywhere; from the demo U-Net's (8 x 16x16 x 64 channels: 75M) up, they were as fast or faster.
IM2COL_MIN_MACS = 2 ** 25

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding,
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers=None, feature_group_count: int = 1, precision=None,
                         preferred_element_type=None, out_sharding=None) -> jax.Array:
    """`lax.conv_general_dilated`'s signature and result (as nnx.Conv calls it); on the CPU, for an undilated,
    ungrouped NHWC/HWIO convolution with explicit (low, high) padding, the im2col forms described above."""
    if not im2col_applies(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                          feature_group_count, out_sharding):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision,
                                        preferred_element_type=preferred_element_type, out_sharding=out_sharding)
    kh, kw, cin, _ = rhs.shape
    forward_im2col = (kh, kw) == (1, 1) or kh * kw * cin >= IM2COL_FORWARD_MIN_ROWS
    return _conv_im2col_backward(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision,
                                 preferred_element_type, forward_im2col)


def im2col_applies(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                   feature_group_count=1, out_sharding=None) -> bool:
    """Whether `conv_general_dilated` takes the im2col forms for these arguments (else lax's convolution)."""
    if jax.default_backend() != "cpu" or lhs.ndim != 4 or feature_group_count != 1 or out_sharding is not None:
        return False
    if isinstance(padding, str) or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        return False
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC) != lax.conv_dimension_numbers(
            lhs.shape, rhs.shape, dimension_numbers):
        return False
    kh, kw, cin, cout = rhs.shape
    out_h = (lhs.shape[1] + sum(padding[0]) - kh) // window_strides[0] + 1
    out_w = (lhs.shape[2] + sum(padding[1]) - kw) // window_strides[1] + 1
    return lhs.shape[0] * out_h * out_w * kh * kw * cin * cout >= IM2COL_MIN_MACS


def im2col_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...],
                precision=None, preferred_element_type=None) -> jax.Array:
    """The convolution as one matrix product: x (B, H, W, Cin), kernel (kh, kw, Cin, Cout), explicit
    (low, high) padding per spatial axis -> (B, H', W', Cout), H' = (H + low + high - kh) // stride + 1."""
    kh, kw, cin, cout = kernel.shape
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    batch, height, width, _ = x.shape
    out_h, out_w = (height - kh) // strides[0] + 1, (width - kw) // strides[1] + 1
    # Tap (i, j) reads rows i, i + s, ..., i + s (H' - 1): the input under that kernel entry for every output.
    taps = [lax.slice(x, (0, i, j, 0), (batch, i + strides[0] * (out_h - 1) + 1, j + strides[1] * (out_w - 1) + 1,
                                          cin), (1, *strides, 1))
            for i in range(kh) for j in range(kw)]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)  # (B, H', W', kh * kw * Cin)
    return lax.dot_general(patches, kernel.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())),
                           precision=precision, preferred_element_type=preferred_element_type)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_im2col_backward(x, kernel, strides, padding, precision, preferred_element_type, forward_im2col):
    if forward_im2col:
        return im2col_conv(x, kernel, strides, padding, precision, preferred_element_type)
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC, precision=precision,
                                    preferred_element_type=preferred_element_type)


def _forward(x, kernel, strides, padding, precision, preferred_element_type, forward_im2col):
    y = _conv_im2col_backward(x, kernel, strides, padding, precision, preferred_element_type, forward_im2col)
    return y, (x, kernel)


def _backward(strides, padding, precision, preferred_element_type, forward_im2col, residuals, cotangent):
    x, kernel = residuals
    _, vjp = jax.vjp(lambda x, kernel: im2col_conv(x, kernel, strides, padding, precision, preferred_element_type),
                     x, kernel)
    return vjp(cotangent)


_conv_im2col_backward.defvjp(_forward, _backward)
