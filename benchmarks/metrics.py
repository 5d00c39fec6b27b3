"""Throughput of the image metrics: images/s for SSIM and LPIPS (AlexNet, VGG16) at 256x256.

    python -m benchmarks.metrics [--batch 8] [--size 256] [--iters 5] [--weights DIR]

An image is one (prediction, target) pair scored. LPIPS runs with random weights of the real shapes unless
--weights holds torchvision's files (speed does not depend on the values). Each row is jitted once, warmed up once, then timed over --iters batches.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import nnx

from benchmarks import timing
from editdiff.interop.name_map import flax_params, load_state_dict
from editdiff.tracing import abstract_module
from eval import metrics
from eval.lpips import LPIPS, head_rules, load_lpips
from eval.nets.frozen import jit_inference
from eval.nets.torchvision_trunks import TRUNKS, trunk_rules


def _random_lpips(backbone: str) -> LPIPS:
    """LPIPS with random weights of the real shapes, loaded through the real name maps."""
    model = abstract_module(lambda: LPIPS(backbone, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    for module, rules in ((model.trunk, trunk_rules(TRUNKS[backbone])), (model.heads, head_rules(5))):
        params = flax_params(module)
        state = {r.torch_key: r.layout.to_torch(rng.normal(0, 0.05, params[r.flax_path].get_value().shape)
                                                .astype(np.float32)) for r in rules}
        load_state_dict(module, state, rules, source="random")
    return model


def _images_per_second(fn, a, b, iters: int) -> tuple[float, float]:
    jax.block_until_ready(fn(a, b))  # compile + warm-up
    start = time.perf_counter()
    for _ in range(iters):
        jax.block_until_ready(fn(a, b))
    seconds = (time.perf_counter() - start) / iters
    return a.shape[0] / seconds, seconds * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--weights", default=None, help="folder with torchvision's alexnet / vgg16 files")
    timing.add_load_flag(parser)
    args = parser.parse_args()
    timing.check_load("at start", args.max_load)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, 3)
    a = jax.device_put(rng.uniform(-1, 1, shape).astype(np.float32))
    b = jax.device_put(rng.uniform(-1, 1, shape).astype(np.float32))
    rows = [("ssim", "-", jax.jit(lambda x, y: metrics.ssim(x, y, 2.0)))]
    for backbone in ("alex", "vgg"):
        model = load_lpips(args.weights, backbone) if args.weights else _random_lpips(backbone)
        rows.append(("lpips", backbone, jit_inference(model)))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, batch {args.batch}, "
          f"{args.size}x{args.size}, {args.iters} timed batches")
    print(f"| {'metric':6} | {'backbone':8} | {'images/s':>9} | {'ms/batch':>9} |")
    print(f"|{'-' * 8}|{'-' * 10}|{'-' * 11}|{'-' * 11}|")
    for name, backbone, fn in rows:
        per_second, ms = _images_per_second(fn, a, b, args.iters)
        print(f"| {name:6} | {backbone:8} | {per_second:9.1f} | {ms:9.1f} |")


if __name__ == "__main__":
    main()
