"""Input pipeline throughput: examples/s with the default label mix and with all five effects on every example.

    python benchmarks/input_pipeline.py [--crops 64,256] [--batches 4] [--consumption 64=12.5,256=1.1]
    python benchmarks/input_pipeline.py --grain [--crops 64,256]
    python benchmarks/input_pipeline.py --effects [--crops 64,256] [--rounds 7] [--batches 8]

`--effects` times each compositing effect alone, ms per example (tf.function, inputs passed as arguments, the
strengths drawn per round as in training), in its former formulation (`input_pipeline.effects.former`, before
issue 14's speed-up) and its current one, interleaved A B A B; then the pipeline's examples/s with all five
effects on, with the former effects and with the current ones (issue 14's goal: >= 40 examples/s at 256 px on
this machine's two cores).

`--grain` compares the film grain renderers: the Monte-Carlo one (`film_grain_monte_carlo`, the renderer until
2026-12-01, at N = 32, the old default, and N = 800, Newson's) against the Gaussian-field one (`film_grain`), as
ms per example for the effect alone and as pipeline examples/s with all five effects on.

`--consumption` takes the training step's consumption rate (examples/s per crop, measured by the trainer's
benchmark) and adds the ratio column; the goal is pipeline >= 4x consumption. `pipeline_examples_per_second`
is the function to call from other benchmarks.

Measured 2026-11-22 on the shared 2-core CPU box (load average ~4-5 from other jobs), film grain N = 32,
`python benchmarks/input_pipeline.py --crops 64,256 --batches 4`: crop 64: 94 examples/s (default 'single'
label mix), 15 examples/s (all five effects on every example); crop 256: 4.4 and 0.9. Film grain dominates
(~27 ms per 64 px example, ~16x that at 256 px); motion blur is next at 256 px. Since 2026-12-01 the grain
is the Gaussian-field renderer; see benchmarks/RESULTS.md for the `--grain` figures.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import timing  # noqa: E402
from input_pipeline import effects  # noqa: E402
from input_pipeline.effects import former  # noqa: E402
from input_pipeline.config import TASKS, default_data_config, validate_data_config  # noqa: E402
from input_pipeline.pipeline import create_train_iterator, example_fn  # noqa: E402
from input_pipeline.effects.film_grain import film_grain, film_grain_monte_carlo  # noqa: E402
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
    """Steady-state examples/s of the pipeline, after warm-up batches: the first pays for tracing, the next
    `prefetch_batches` empty the prefetch buffer that filled meanwhile (timing them inflated fast pipelines:
    64 px, 4 batches read ~3x the 16-batch rate)."""
    batches = _all_effects_batches(data_config) if all_effects else create_train_iterator(data_config)
    for _ in range(1 + data_config.prefetch_batches):
        next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches * data_config.batch_size / (time.perf_counter() - start)


def grain_ms_per_example(renderer, crop: int, *, repeats: int = 3, **kwargs) -> float:
    """Median wall ms of one `(crop, crop, 3)` grain rendering at radius 0.05 (after a warm-up call).

    The image is an argument of the traced function, not a captured constant, so that nothing but the seed's
    part can be constant-folded away.
    """
    image = tf.constant(np.random.default_rng(0).uniform(size=(crop, crop, 3)).astype(np.float32))
    render = tf.function(lambda picture, seed: renderer(picture, tf.constant(0.05), seed, **kwargs))
    render(image, tf.constant([0, 0], tf.int64))
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        render(image, tf.constant([k, 1], tf.int64)).numpy()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


@contextlib.contextmanager
def _pipeline_effects(**replacements):
    """Routes the pipeline's effects (tasks.composite calls `effects.<name>` at trace time) to `replacements`."""
    originals = {name: getattr(effects, name) for name in replacements}
    for name, function in replacements.items():
        setattr(effects, name, function)
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(effects, name, function)


def _pipeline_grain(renderer):
    return _pipeline_effects(film_grain=renderer)


_EFFECT_NAMES = {"blur": "motion_blur", "colour": "colour_transfer", "sharpen": "unsharp_mask",
                 "grain": "film_grain", "inpaint": "free_form_mask"}


def _effect_functions(implementation, crop: int, cfg: ml_collections.ConfigDict) -> dict:
    """{task: tf.function(inputs dict) -> tensor} for the five effects of `implementation` (a module with the
    `effects` names), configured as tasks.composite configures them."""
    max_length = max(1.0, cfg.motion_blur.max_length_at_256 * crop / 256.0)
    ip = cfg.inpainting
    calls = {
        "blur": lambda x: implementation.motion_blur(x["image"], x["beta"], x["angle"], max_length),
        "colour": lambda x: implementation.colour_transfer(x["image"], x["reference"]),
        "sharpen": lambda x: implementation.unsharp_mask(x["image"], x["amount"], x["threshold"],
                                                         cfg.sharpen.blur_sigma),
        "grain": lambda x: implementation.film_grain(x["image"], x["radius"], x["seed"],
                                                     filter_sigma=cfg.film_grain.filter_sigma,
                                                     monte_carlo_samples=cfg.film_grain.monte_carlo_samples),
        "inpaint": lambda x: implementation.free_form_mask(
            x["seed"], crop, min_vertices=ip.min_vertices, max_vertices=ip.max_vertices,
            min_width=ip.min_width_at_256 * crop / 256.0, max_width=ip.max_width_at_256 * crop / 256.0,
            max_strokes=ip.max_strokes, box_probability=ip.box_probability),
    }
    return {task: tf.function(call) for task, call in calls.items()}


def _effect_inputs(crop: int, cfg: ml_collections.ConfigDict, count: int) -> list[dict]:
    """`count` input sets: random images, and strengths drawn from the config's training distributions."""
    rng = np.random.default_rng(14)

    def between(bounds):
        return tf.constant(rng.uniform(*bounds), tf.float32)

    return [{"image": tf.constant(rng.uniform(size=(crop, crop, 3)).astype(np.float32)),
             "reference": tf.constant(rng.uniform(size=(crop, crop, 3)).astype(np.float32)),
             "beta": between(cfg.motion_blur.beta_range), "angle": between((0.0, np.pi)),
             "amount": between(cfg.sharpen.amount_range), "threshold": between(cfg.sharpen.threshold_range),
             "radius": tf.constant(rng.choice(cfg.film_grain.radii), tf.float32),
             "seed": tf.constant([k, 14], tf.int64)} for k in range(count)]


def effect_ms_per_example(crop: int, rounds: int, cfg: ml_collections.ConfigDict | None = None) -> dict:
    """{task: (former ms, current ms)}: medians over `rounds` calls, former and current interleaved, round k of
    both on input set k (after a warm-up call each that pays for tracing)."""
    cfg = cfg or default_data_config()
    inputs = _effect_inputs(crop, cfg, rounds + 1)
    versions = {"former": _effect_functions(former, crop, cfg), "current": _effect_functions(effects, crop, cfg)}
    result = {}
    for task in _EFFECT_NAMES:
        position = {name: 0 for name in versions}

        def call(name, task=task, position=position):
            versions[name][task](inputs[position[name] % len(inputs)]).numpy()
            position[name] += 1

        seconds = timing.interleaved({name: (lambda name=name: call(name)) for name in versions}, rounds)
        result[task] = tuple(1000.0 * timing.median(seconds[name]) for name in versions)
    return result


def effects_comparison(crops: list[int], rounds: int, batches: int, batch_size: int,
                       pipeline_rounds: int = 2) -> None:
    """Prints each effect's ms per example, former vs current, and the all-five pipeline rate with each
    (`pipeline_rounds` runs of each, alternating former / current; median, min-max)."""
    print(f"{'crop':>5} {'effect':>8} {'former ms':>10} {'current ms':>11} {'speed-up':>9}", flush=True)
    for crop in crops:
        totals = [0.0, 0.0]
        for task, (before, after) in effect_ms_per_example(crop, rounds).items():
            totals = [totals[0] + before, totals[1] + after]
            print(f"{crop:5d} {task:>8} {before:10.1f} {after:11.1f} {before / after:8.1f}x", flush=True)
        print(f"{crop:5d} {'sum':>8} {totals[0]:10.1f} {totals[1]:11.1f} {totals[0] / totals[1]:8.1f}x", flush=True)
    print(f"\n{'crop':>5} {'effects':>8} {'all five examples/s (min-max)':>30}", flush=True)
    formers = {name: getattr(former, name) for name in _EFFECT_NAMES.values()}
    for crop in crops:
        cfg = default_data_config()
        cfg.crop_size, cfg.batch_size = crop, batch_size
        validate_data_config(cfg)
        rates = {"former": [], "current": []}
        for _ in range(pipeline_rounds):
            with _pipeline_effects(**formers):
                rates["former"].append(pipeline_examples_per_second(cfg, num_batches=batches, all_effects=True))
            rates["current"].append(pipeline_examples_per_second(cfg, num_batches=batches, all_effects=True))
        for name, values in rates.items():
            spread = f"{timing.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            print(f"{crop:5d} {name:>8} {spread:>30}", flush=True)
    print(f"load average (1, 5, 15 min) at end: {timing.load_average()}", flush=True)


def grain_comparison(crops: list[int], batches: int, batch_size: int) -> None:
    """Prints the renderers' ms per example and the all-five-effects pipeline rate with each."""
    renderers = [("monte carlo N=32", film_grain_monte_carlo, 32), ("monte carlo N=800", film_grain_monte_carlo, 800),
                 ("gaussian field", film_grain, 0)]
    print(f"{'crop':>5} {'renderer':>18} {'grain ms/example':>17} {'all five examples/s':>20}")
    for crop in crops:
        for name, renderer, samples in renderers:
            slow = samples == 800
            ms = grain_ms_per_example(renderer, crop, repeats=1 if slow else 3, monte_carlo_samples=samples)
            rate_text = f"{'-':>20}"
            if not slow:  # N = 800 would take minutes per batch
                cfg = default_data_config()
                cfg.crop_size, cfg.batch_size = crop, batch_size
                cfg.film_grain.monte_carlo_samples = samples
                validate_data_config(cfg)
                with _pipeline_grain(renderer):
                    rate = pipeline_examples_per_second(cfg, num_batches=batches, all_effects=True)
                rate_text = f"{rate:20.2f}"
            print(f"{crop:5d} {name:>18} {ms:17.1f} {rate_text}", flush=True)


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
    parser.add_argument("--grain", action="store_true", help="compare the film grain renderers instead")
    parser.add_argument("--effects", action="store_true",
                        help="time each effect (former vs current formulation) and the all-five pipeline instead")
    parser.add_argument("--rounds", type=int, default=7, help="--effects: timed calls per effect and formulation")
    timing.add_load_flag(parser)
    args = parser.parse_args()
    timing.check_load("at start", args.max_load)
    crops = [int(c) for c in args.crops.split(",")]
    if args.grain:
        grain_comparison(crops, args.batches, args.batch_size)
        return
    if args.effects:
        effects_comparison(crops, args.rounds, args.batches, args.batch_size)
        return
    consumption = _parse_consumption(args.consumption)

    print(f"{'crop':>5} {'labels':>12} {'grain N':>8} {'examples/s':>11} {'consumption':>12} {'ratio':>6}")
    for crop in crops:
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
