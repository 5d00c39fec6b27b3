"""Input pipeline throughput: examples/s with the default label mix and with all five effects on every example.

    python benchmarks/input_pipeline.py [--crops 64,256] [--batches 4] [--consumption 64=12.5,256=1.1]

`--consumption` takes the training step's consumption rate (examples/s per crop, measured by the trainer's
benchmark) and adds the ratio column; the goal is pipeline >= 4x consumption. `pipeline_examples_per_second`
is the function to call from other benchmarks.

Measured 2026-11-22 on the shared 2-core CPU box (load average ~4-5 from other jobs), film grain N = 32,
`python benchmarks/input_pipeline.py --crops 64,256 --batches 4`: crop 64: 94 examples/s (default 'single'
label mix), 15 examples/s (all five effects on every example); crop 256: 4.4 and 0.9. Film grain dominates
(~27 ms per 64 px example, ~16x that at 256 px); motion blur is next at 256 px.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from input_pipeline.config import TASKS, default_data_config, validate_data_config  # noqa: E402
from input_pipeline.pipeline import create_train_iterator, example_fn  # noqa: E402
from input_pipeline.sources import create_source  # noqa: E402


def _all_effects_batches(cfg: ml_collections.ConfigDict):
    """Training-like batches with every task on (the worst case: each example pays for all five effects)."""
    source = create_source(cfg.source, "train")
    labels = np.ones(len(TASKS), np.float32)
    dataset = tf.data.Dataset.range(1 << 40).map(lambda i: (i, labels))
    dataset = dataset.map(example_fn(source, cfg, cfg.seed), num_parallel_calls=cfg.num_parallel_calls,
                          deterministic=True)
    return iter(dataset.batch(cfg.batch_size).prefetch(cfg.prefetch_batches).as_numpy_iterator())


def pipeline_examples_per_second(data_config: ml_collections.ConfigDict, *, num_batches: int = 4,
                                 all_effects: bool = False) -> float:
    """Steady-state examples/s of the pipeline (after one warm-up batch that pays for tracing)."""
    batches = _all_effects_batches(data_config) if all_effects else create_train_iterator(data_config)
    next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches * data_config.batch_size / (time.perf_counter() - start)


def _parse_consumption(text: str) -> dict[int, float]:
    pairs = (item.split("=") for item in text.split(",") if item)
    return {int(crop): float(rate) for crop, rate in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", default="64,256")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--monte_carlo_samples", type=int, default=None, help="film grain; default: the config's")
    parser.add_argument("--consumption", default="", help="training consumption, e.g. 64=12.5,256=1.1 (examples/s)")
    args = parser.parse_args()
    consumption = _parse_consumption(args.consumption)

    print(f"{'crop':>5} {'labels':>12} {'grain N':>8} {'examples/s':>11} {'consumption':>12} {'ratio':>6}")
    for crop in (int(c) for c in args.crops.split(",")):
        cfg = default_data_config()
        cfg.crop_size = crop
        cfg.batch_size = args.batch_size
        if args.monte_carlo_samples:
            cfg.film_grain.monte_carlo_samples = args.monte_carlo_samples
        validate_data_config(cfg)
        for all_effects in (False, True):
            rate = pipeline_examples_per_second(cfg, num_batches=args.batches, all_effects=all_effects)
            used = consumption.get(crop)
            used_text = f"{used:12.2f} {rate / used:6.1f}" if used else f"{'-':>12} {'-':>6}"
            labels = "all five" if all_effects else cfg.label_set
            print(f"{crop:5d} {labels:>12} {cfg.film_grain.monte_carlo_samples:8d} {rate:11.2f} {used_text}",
                  flush=True)


if __name__ == "__main__":
    main()
