"""One convolution, three implementations: XLA's (`lax.conv_general_dilated`), the models' CPU convolution
(`editdiff.nn.conv.conv_general_dilated`: XLA's forward or im2col, im2col backward) and PyTorch's
(torch.nn.functional.conv2d, oneDNN), at the shapes of the demo U-Net and of SD-1.5's, float32; and the im2col
product's forward alone (`editdiff.nn.conv.im2col_conv`), which IM2COL_FORWARD_MIN_ROWS chooses against.

Per case: the forward pass, and the forward + backward pass to input and kernel of sum(y * cotangent); JAX sides
jitted; all seven calls interleaved (benchmarks/timing.py), median (min-max) ms of --repeats rounds. The last two
columns are the models' convolution over XLA's: below 1 it is faster.

    python -m benchmarks.conv
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax

from editdiff.nn.conv import conv_general_dilated, im2col_conv

from benchmarks import timing

CASES = [
    # (batch, height = width, channels in, channels out, kernel, stride)
    (8, 32, 27, 64, 3, 1),  # the demo U-Net's conv_in (64 px crops, patch autoencoder f=2)
    (8, 32, 64, 64, 3, 1),
    (8, 32, 64, 64, 3, 2),
    (8, 16, 64, 64, 3, 1),
    (8, 8, 128, 128, 3, 1),
    (2, 16, 128, 64, 1, 1),
    (1, 32, 320, 320, 3, 1),  # SD-1.5 at 256 px (32x32 latent), batch 1
    (1, 32, 320, 320, 3, 2),
    (1, 16, 640, 640, 3, 1),
    (1, 16, 960, 640, 3, 1),
    (1, 16, 960, 640, 1, 1),
    (1, 8, 1280, 1280, 3, 1),
    (1, 4, 1280, 1280, 3, 1),
]
_NHWC = ("NHWC", "HWIO", "NHWC")


def _jax_pair(conv, stride: int, pad: int):
    """Jitted forward and forward + backward of `conv` with lax.conv_general_dilated's signature."""
    def forward(x, w):
        return conv(x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=_NHWC)

    def backward(x, w, cotangent):
        y, vjp = jax.vjp(forward, x, w)
        return y, vjp(cotangent)

    return jax.jit(forward), jax.jit(backward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    timing.add_load_flag(parser)
    args = parser.parse_args()
    timing.check_load("at start", args.max_load)
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} | PyTorch {torch.__version__} | "
          f"{timing.thread_counts()} | float32, median (min-max) ms of {args.repeats}, interleaved")
    print("| B, HxW, Cin -> Cout, k, stride | XLA fwd | im2col fwd | ours fwd | PyTorch fwd | XLA fwd+bwd | "
          "ours fwd+bwd | PyTorch fwd+bwd | ours / XLA fwd | ours / XLA fwd+bwd |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for batch, size, cin, cout, k, stride in CASES:
        pad = k // 2
        x = rng.standard_normal((batch, size, size, cin)).astype(np.float32)
        w = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
        y_shape = lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad),) * 2, dimension_numbers=_NHWC).shape
        cotangent = rng.standard_normal(y_shape).astype(np.float32)
        xj, wj, cj = jnp.asarray(x), jnp.asarray(w), jnp.asarray(cotangent)
        xla_fwd, xla_bwd = _jax_pair(lax.conv_general_dilated, stride, pad)
        our_fwd, our_bwd = _jax_pair(conv_general_dilated, stride, pad)
        im2col_fwd = jax.jit(lambda x, w: im2col_conv(x, w, (stride, stride), ((pad, pad),) * 2))
        np.testing.assert_allclose(our_fwd(xj, wj), xla_fwd(xj, wj), rtol=1e-3, atol=1e-3)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        ct = torch.from_numpy(np.ascontiguousarray(cotangent.transpose(0, 3, 1, 2)))

        def torch_forward():
            with torch.no_grad():
                return torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad)

        def torch_backward():
            xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)
            (torch.nn.functional.conv2d(xg, wg, stride=stride, padding=pad) * ct).sum().backward()
            return xg.grad, wg.grad

        block = jax.block_until_ready
        seconds = timing.interleaved({
            "xla_fwd": lambda: block(xla_fwd(xj, wj)), "im2col_fwd": lambda: block(im2col_fwd(xj, wj)),
            "our_fwd": lambda: block(our_fwd(xj, wj)),
            "torch_fwd": torch_forward,
            "xla_bwd": lambda: block(xla_bwd(xj, wj, cj)), "our_bwd": lambda: block(our_bwd(xj, wj, cj)),
            "torch_bwd": torch_backward,
        }, args.repeats)
        ms = {name: f"{1e3 * timing.median(v):.2f} ({1e3 * min(v):.2f}-{1e3 * max(v):.2f})"
              for name, v in seconds.items()}
        ratio = lambda ours, xla: timing.median(seconds[ours]) / timing.median(seconds[xla])
        print(f"| {batch}, {size}x{size}, {cin} -> {cout}, {k}, {stride} | {ms['xla_fwd']} | {ms['im2col_fwd']} | "
              f"{ms['our_fwd']} | "
              f"{ms['torch_fwd']} | {ms['xla_bwd']} | {ms['our_bwd']} | {ms['torch_bwd']} | "
              f"{ratio('our_fwd', 'xla_fwd'):.2f} | {ratio('our_bwd', 'xla_bwd'):.2f} |", flush=True)
    timing.check_load("at the end", float("inf"))


if __name__ == "__main__":
    main()
