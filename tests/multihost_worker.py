"""One process of the two-process training job that tests/test_multihost.py launches on localhost.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
    python tests/multihost_worker.py --coordinator 127.0.0.1:PORT --num_processes 2 --process_id 0 \
        --workdir DIR --num_steps 4 --report DIR/process_0.json

It joins the job through config.distributed (initialize_distributed is the first JAX call), trains the tiny
regression method on a (data=4, fsdp=2) mesh spanning every process's devices through `train_and_evaluate`,
and writes a JSON report (the per-step metrics the hooks saw, the rows of every batch this process drew)
and, from process 0, REPORT.final_state.npz (the whole model after the last step, gathered from every
process). The test imports `job_config`, `GlobalBatchRegression`, `MetricsRecorder` and `train` from here
for its one-process reference run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback

import jax

# Same numerics as the test process (tests/conftest.py): float32 matmuls, so 1 vs 2 processes agree closely.
jax.config.update("jax_default_matmul_precision", "highest")

_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_TESTS), _TESTS]  # the repository (editdiff) and tests/ (tiny_method)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from editdiff.train.distributed import initialize_distributed  # noqa: E402
from editdiff.train.hooks import PeriodicHooks  # noqa: E402
from editdiff.train.loop import train_and_evaluate  # noqa: E402
from tiny_method import TinyRegression, tiny_config  # noqa: E402

MESH = {"data": 4, "fsdp": 2}


def job_config(num_steps: int):
    """The tiny regression config on the (data=4, fsdp=2) mesh: 16 rows per global batch, checkpoints every
    2 steps, metrics every step."""
    config = tiny_config(**MESH)
    config.train.num_steps = num_steps
    return config


class GlobalBatchRegression(TinyRegression):
    """TinyRegression keeping every batch this process draws (including those the trainer prefetches) in
    `drawn`: batch index -> this process's rows."""

    def __init__(self, config):
        super().__init__(config)
        self.drawn: dict[int, np.ndarray] = {}

    def train_batches(self, *, start_step: int, process_index: int, process_count: int):
        for step, batch in enumerate(super().train_batches(start_step=start_step, process_index=process_index,
                                                           process_count=process_count), start=start_step):
            self.drawn[step] = batch["x"]
            yield batch


def _as_numbers(value: jax.Array) -> jax.Array:
    """RNG keys (e.g. a Dropout's) as their integer data; other arrays as they are."""
    return jax.random.key_data(value) if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key) else value


class MetricsRecorder(PeriodicHooks):
    """The mean metrics of every log step, and the whole model (EMA and raw parameters, as numpy arrays
    gathered from every process) after the last step."""

    def __init__(self):
        self.metrics: dict[int, dict[str, float]] = {}
        self.final_state: dict[str, np.ndarray] = {}

    def on_metrics(self, step, metrics):
        self.metrics[step] = dict(metrics)

    def on_end(self, view):
        for kind in ("ema", "raw"):
            state = nnx.to_flat_state(nnx.state(view.model(ema=kind == "ema")))
            values = {"/".join(map(str, (kind, *path))): _as_numbers(variable[...]) for path, variable in state}
            self.final_state.update(multihost_utils.process_allgather(values, tiled=True))  # collective


def train(config, workdir: str, method: GlobalBatchRegression, recorder: MetricsRecorder):
    return train_and_evaluate(config, workdir, method=method, hooks=[recorder])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_steps", type=int, required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args(argv)
    # The test prints these logs when a process fails or the job times out.
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s p{args.process_id} %(name)s: %(message)s",
                        force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save INFO lines

    config = job_config(args.num_steps)
    config.distributed.initialize = True
    config.distributed.coordinator_address = args.coordinator
    config.distributed.num_processes = args.num_processes
    config.distributed.process_id = args.process_id
    initialize_distributed(config)  # before anything touches the backend (the method, the mesh, ...)

    method = GlobalBatchRegression(config)
    recorder = MetricsRecorder()
    outcome = train(config, args.workdir, method, recorder)
    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "outcome": {"step": outcome.step, "preempted": outcome.preempted},
        "metrics": {str(step): m for step, m in recorder.metrics.items()},
        "drawn": {str(step): x.tolist() for step, x in method.drawn.items()},
    }
    with open(args.report, "w") as f:
        json.dump(report, f)
    if jax.process_index() == 0:
        np.savez(args.report + ".final_state.npz", **recorder.final_state)
    print(f"process {args.process_id}: trained to step {outcome.step}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        # Not through jax.distributed's exit barrier, which waits (minutes) for the other process: the test
        # sees the failure at once and stops the other worker.
        os._exit(1)
