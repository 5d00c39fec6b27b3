"""Per-sample kernel modulation of a convolution, exact and without per-sample kernels (METHODS.md §2).

The rectifier turns a frozen kernel theta (kh, kw, Cin, Cout) into theta * (1 + a b^T) per sample, with slim
offsets a (B, kh, kw, Cin) and b (B, kh, kw, Cout). Materialising those kernels costs B * kh * kw * Cin * Cout
values per layer (236 MB for one 1280-channel 3x3 conv at batch 4), kept again for the backward pass. Instead,
for each kernel tap k, (theta_k o a_k b_k^T) applied to x is ((x * a_k) @ theta_k) * b_k, so

    conv(x; theta * (1 + a b^T)) = conv(x; theta) + sum_k ((shift_k(x) * a_k) @ theta_k) * b_k

exactly, with activation-sized temporaries only.

A U-Net receives its offsets as a `Modulation`: {Flax path of a conv, e.g. ("up_blocks", 1, "resnets", 0,
"conv1"): (a, b)}. Each module hands its children the entries under their names (`submodulation`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax.nnx.nn.linear import canonicalize_padding
from jax import lax

Offsets = tuple[jax.Array, jax.Array]  # (a (B, kh, kw, Cin), b (B, kh, kw, Cout))
Modulation = Mapping[tuple, Offsets]
Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]

_NHWC = ("NHWC", "HWIO", "NHWC")


def offset_shapes(batch: int, kernel_shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of (a, b) for a kernel (kh, kw, Cin, Cout): ((B, kh, kw, Cin), (B, kh, kw, Cout))."""
    kh, kw, cin, cout = kernel_shape
    return (batch, kh, kw, cin), (batch, kh, kw, cout)


def _pair(strides: int | Sequence[int]) -> tuple[int, int]:
    return (strides, strides) if isinstance(strides, int) else tuple(strides)


def _explicit_padding(padding: Padding, spatial: Sequence[int], window: Sequence[int],
                      strides: tuple[int, int]) -> list[tuple[int, int]]:
    """flax Conv's padding forms ("SAME", "VALID", an int, ints or (low, high) pairs per dimension) as pairs."""
    padding = canonicalize_padding(padding, 2)
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID", "SAME_LOWER"):
            raise ValueError(f"modulated_conv2d: padding={padding!r} is not supported; allowed: 'SAME', 'VALID', "
                             "an int, or (low, high) pairs")
        return lax.padtype_to_pads(spatial, window, strides, padding)
    return [tuple(p) for p in padding]


def _check_offsets(x: jax.Array, kernel: jax.Array, a: jax.Array, b: jax.Array) -> None:
    expected = offset_shapes(x.shape[0], kernel.shape)
    if (a.shape, b.shape) != expected:
        raise ValueError(f"modulated_conv2d: offsets a {a.shape}, b {b.shape} do not fit x {x.shape} and kernel "
                         f"{kernel.shape}; expected a {expected[0]}, b {expected[1]}")


def modulation_delta(x: jax.Array, kernel: jax.Array, a: jax.Array, b: jax.Array, *,
                     strides: int | Sequence[int] = 1, padding: Padding = "SAME") -> jax.Array:
    """conv(x; kernel * a b^T) per sample: what modulation adds to the plain convolution.

    x (B, H, W, Cin), kernel (kh, kw, Cin, Cout), a (B, kh, kw, Cin), b (B, kh, kw, Cout) -> (B, H', W', Cout),
    H' and W' as lax.conv gives them for `strides` and `padding` (flax Conv's forms).

    Computed as sum over taps k of ((shift_k(x) * a_k) @ kernel_k) * b_k in a scan over the kh * kw taps, so
    that one tap's temporaries are alive at a time, and rematerialised in the backward pass: all it keeps for
    backward is its inputs (x, which the offsets' gradients need, kernel, a, b), nothing per tap or per sample.
    """
    _check_offsets(x, kernel, a, b)
    return _delta(x, kernel, a, b, _pair(strides),
                  tuple(_explicit_padding(padding, x.shape[1:3], kernel.shape[:2], _pair(strides))))


def _delta_body(x, kernel, a, b, strides, padding):
    kh, kw, cin, cout = kernel.shape
    batch = x.shape[0]
    x_padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    out_h = (x_padded.shape[1] - kh) // strides[0] + 1
    out_w = (x_padded.shape[2] - kw) // strides[1] + 1
    # The input rows/columns one tap reads, before striding.
    window = (batch, strides[0] * (out_h - 1) + 1, strides[1] * (out_w - 1) + 1, cin)

    # Checkpointed: without it the scan's backward would keep every tap's shifted input and product.
    @jax.checkpoint
    def add_tap(acc, tap):
        i, j, a_k, b_k, kernel_k = tap
        shifted = lax.dynamic_slice(x_padded, (0, i, j, 0), window)[:, ::strides[0], ::strides[1]]
        return acc + ((shifted * a_k[:, None, None, :]) @ kernel_k) * b_k[:, None, None, :], None

    rows, cols = jnp.meshgrid(jnp.arange(kh), jnp.arange(kw), indexing="ij")
    taps = (rows.reshape(-1), cols.reshape(-1), a.reshape(batch, kh * kw, cin).swapaxes(0, 1),
            b.reshape(batch, kh * kw, cout).swapaxes(0, 1), kernel.reshape(kh * kw, cin, cout))
    out, _ = lax.scan(add_tap, jnp.zeros((batch, out_h, out_w, cout), jnp.result_type(x, kernel, a, b)), taps)
    return out


# Rematerialised as a whole: the backward pass then keeps the inputs only, not the padded copy of x.
_delta = jax.checkpoint(_delta_body, static_argnums=(4, 5))


def modulated_conv2d(x: jax.Array, kernel: jax.Array, a: jax.Array, b: jax.Array, *,
                     strides: int | Sequence[int] = 1, padding: Padding = "SAME") -> jax.Array:
    """Each sample convolved with its own kernel `kernel * (1 + a[..., :, None] * b[..., None, :])`, without
    building those kernels; no bias.

    x (B, H, W, Cin), kernel (kh, kw, Cin, Cout), a (B, kh, kw, Cin), b (B, kh, kw, Cout) -> (B, H', W', Cout).
    `strides` (int or pair) and `padding` ("SAME", "VALID", an int, or (low, high) pairs) as flax's Conv reads
    them. Equal to `materialised_modulated_conv2d` up to float rounding; zero offsets give the plain
    convolution plus exact zeros.
    """
    plain = lax.conv_general_dilated(x, kernel, _pair(strides),
                                     _explicit_padding(padding, x.shape[1:3], kernel.shape[:2], _pair(strides)),
                                     dimension_numbers=_NHWC)
    return plain + modulation_delta(x, kernel, a, b, strides=strides, padding=padding)


def materialised_modulated_conv2d(x: jax.Array, kernel: jax.Array, a: jax.Array, b: jax.Array, *,
                                  strides: int | Sequence[int] = 1, padding: Padding = "SAME") -> jax.Array:
    """The reference for `modulated_conv2d` (same arguments and result): builds every per-sample kernel
    kernel * (1 + a b^T), (B, kh, kw, Cin, Cout), and vmaps lax.conv over the batch. For tests and benchmarks."""
    _check_offsets(x, kernel, a, b)
    pads = _explicit_padding(padding, x.shape[1:3], kernel.shape[:2], _pair(strides))
    kernels = kernel * (1 + a[..., :, None] * b[..., None, :])
    conv = lambda xi, ki: lax.conv_general_dilated(xi[None], ki, _pair(strides), pads, dimension_numbers=_NHWC)[0]
    return jax.vmap(conv)(x, kernels)


def submodulation(modulation: Modulation | None, *prefix) -> Modulation | None:
    """The entries of `modulation` whose path starts with `prefix`, keyed by the rest of their path; None when
    there are none, so an unmodulated child takes its plain code path."""
    if not modulation:
        return None
    sub = {path[len(prefix):]: offsets for path, offsets in modulation.items() if path[:len(prefix)] == prefix}
    return sub or None


def offsets_at(modulation: Modulation | None, *path) -> Offsets | None:
    """The (a, b) of the conv at `path` (relative to the mapping's owner), or None."""
    return None if modulation is None else modulation.get(path)
