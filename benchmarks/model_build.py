"""Model construction under a trace: `nnx.eval_shape` of our Flax SD-1.5-size U-Net (what every run, loader and
export does before any weight is read) with JAX's tracer probes as they are, and with
`editdiff.tracing.abstract_module` (the probes in linear time). Alternating A B A B ..., medians of --repeats,
the load average printed first (run it on an idle machine).

    python -m benchmarks.model_build                  # SD-1.5's UNet2DConditionModel config
    python -m benchmarks.model_build --config tiny
"""
from __future__ import annotations

import argparse
import statistics
import time

from flax import nnx

from benchmarks import timing
from benchmarks.unet import CONFIGS
from editdiff.nn.unet import UNet2DConditionModel, UNetConfig
from editdiff.tracing import abstract_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="sd15")
    parser.add_argument("--repeats", type=int, default=3)
    timing.add_load_flag(parser)
    args = parser.parse_args()
    timing.check_load("at start", args.max_load)
    config = UNetConfig.from_diffusers(CONFIGS[args.config][0])
    build = lambda: UNet2DConditionModel(config, rngs=nnx.Rngs(0))  # noqa: E731
    ways = {"nnx.eval_shape": nnx.eval_shape, "abstract_module": abstract_module}
    seconds = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            start = time.perf_counter()
            model = way(build)
            seconds[name].append(time.perf_counter() - start)
    count = sum(1 for _ in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    print(f"{args.config} U-Net, {count} parameter arrays; seconds to build abstractly (median of {args.repeats}):")
    print("| way | median s | min s | max s |\n| --- | --- | --- | --- |")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
