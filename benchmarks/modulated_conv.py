"""Modulated convolution, memory and time: per-sample kernels materialised (vmap of lax.conv over
kernel * (1 + a b^T)) against the exact per-tap form (`editdiff.nn.modulated_conv.modulated_conv2d`), with
the plain unmodulated convolution as the floor (issue 11).

One 3x3 stride-1 "SAME" conv at SD up-block sizes, float32. Per method and pass (forward; forward + backward
to x, a and b, the kernel frozen as in the rectifier):
  peak MiB   XLA's compiled memory_analysis(): temporaries + arguments (+ outputs) of the jitted program;
  kept MiB   what the forward keeps for the backward pass (the residuals of jax.vjp), which a whole U-Net
             accumulates over all of its modulated layers;
  time s     median wall time of --repeats calls after one warm-up.
Memory figures come from the compiler and do not depend on the machine's load; times do.

    python -m benchmarks.modulated_conv                      # both cases, 3 repeats
    python -m benchmarks.modulated_conv --cases 1280x16 --repeats 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from editdiff.nn.modulated_conv import materialised_modulated_conv2d, modulated_conv2d

from benchmarks import timing

CASES = {
    # name: (batch, height = width, channels in = out); SD-1.5 at 512 px: up_blocks[0..1] and up_blocks[3].
    "1280x16": (4, 16, 1280),
    "320x64": (4, 64, 320),
}
MiB = 2 ** 20


def plain_conv2d(x, kernel, a, b):
    """The unmodulated convolution (a and b unused): the floor both modulated forms are measured against."""
    del a, b
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


METHODS = {"plain conv": plain_conv2d, "materialised": materialised_modulated_conv2d, "exact": modulated_conv2d}


def inputs(batch: int, size: int, channels: int, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)
    return dict(x=normal(batch, size, size, channels),
                kernel=normal(3, 3, channels, channels, scale=1 / np.sqrt(9 * channels)),
                a=normal(batch, 3, 3, channels, scale=0.1), b=normal(batch, 3, 3, channels, scale=0.1),
                cotangent=normal(batch, size, size, channels))


def forward_and_backward(conv):
    """(x, kernel, a, b, cotangent) -> output and the gradients to x, a and b of sum(output * cotangent)."""
    def step(x, kernel, a, b, cotangent):
        y, vjp = jax.vjp(lambda x, a, b: conv(x, kernel, a, b), x, a, b)
        return y, vjp(cotangent)
    return step


def peak_mib(compiled) -> float:
    memory = compiled.memory_analysis()
    return (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes) / MiB


def kept_for_backward_mib(conv, args: dict) -> float:
    residuals = jax.eval_shape(lambda x, a, b: jax.vjp(lambda x, a, b: conv(x, args["kernel"], a, b), x, a, b)[1],
                               args["x"], args["a"], args["b"])
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(residuals)) / MiB


def median_seconds(compiled, args: tuple, repeats: int) -> float:
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    timing.add_load_flag(parser)
    args = parser.parse_args()

    timing.check_load("at start", args.max_load)
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, float32, 3x3 conv, stride 1, SAME")
    header = (f"{'case':<22} {'method':<13} {'fwd peak MiB':>12} {'kept MiB':>9} {'fwd s':>8} "
              f"{'fwd+bwd peak MiB':>16} {'fwd+bwd s':>10}")
    print(header)
    for name in args.cases.split(","):
        batch, size, channels = CASES[name]
        case = f"{channels}->{channels} {size}x{size} B{batch}"
        tensors = inputs(batch, size, channels)
        forward_args = tuple(tensors[k] for k in ("x", "kernel", "a", "b"))
        for method, conv in METHODS.items():
            forward = jax.jit(conv).lower(*forward_args).compile()
            backward = jax.jit(forward_and_backward(conv)).lower(*forward_args, tensors["cotangent"]).compile()
            print(f"{case:<22} {method:<13} {peak_mib(forward):>12.1f} {kept_for_backward_mib(conv, tensors):>9.1f} "
                  f"{median_seconds(forward, forward_args, args.repeats):>8.3f} {peak_mib(backward):>16.1f} "
                  f"{median_seconds(backward, (*forward_args, tensors['cotangent']), args.repeats):>10.3f}",
                  flush=True)
    timing.check_load("at the end", float("inf"))


if __name__ == "__main__":
    main()
