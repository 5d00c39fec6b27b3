"""`train_and_evaluate`: the method-agnostic training loop.

Order of a run: validate the config (before anything compiles), build the mesh, the method's model and the
train state (restored from the workdir's newest readable checkpoint, else fresh), then for each step: this
host's batch -> global batch -> jitted step -> finite-loss check -> metrics, checkpoint, hooks, stop request.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from clu import metric_writers, parameter_overview, periodic_actions
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from editdiff.methods.base import Method
from editdiff.train import mesh as mesh_lib
from editdiff.train.build import build_run_state, create_checkpointer, initialize_distributed, method_from_config
from editdiff.train.checkpoint import write_config_json
from editdiff.train.config import validate_train_config
from editdiff.train.hooks import PeriodicHooks, TrainView
from editdiff.train.optimizer import create_optimizer, learning_rate_schedule
from editdiff.train.preemption import StopRequest
from editdiff.train.step import jit_train_step, make_train_step

# (data_config, *, start_step, process_index, process_count) -> iterator of dicts of numpy arrays, this
# host's slice of the batch; batch k is a pure function of (seed, k).
TrainIteratorFactory = Callable[..., Iterator[Mapping[str, np.ndarray]]]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stopped without saving that state."""


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    """How a call ended: the last completed step, and whether it stopped early on a stop request."""

    step: int
    preempted: bool


def _default_train_iterator_factory() -> TrainIteratorFactory:
    import input_pipeline  # the data package is only needed when the caller brings no batch source

    return input_pipeline.create_train_iterator


def _is_due(step: int, every: int, last_step: int) -> bool:
    return step == last_step or (every > 0 and step % every == 0)


class _MetricsLog:
    """Averages per-step host metrics over `log_every` steps, then writes them (with the learning rate) and
    hands them to the hooks."""

    def __init__(self, train_config, writer, hooks):
        self._train_config = train_config
        self._schedule = learning_rate_schedule(train_config)
        self._writer = writer
        self._hooks = hooks
        self._pending: list[dict[str, float]] = []

    def record(self, step: int, metrics: dict[str, float]) -> None:
        self._pending.append(metrics)
        if not _is_due(step, self._train_config.log_every, self._train_config.num_steps):
            return
        mean = {name: float(np.mean([m[name] for m in self._pending])) for name in metrics}
        self._pending = []
        # The rate of the update this step belongs to (with accumulation, possibly still pending).
        mean["learning_rate"] = float(self._schedule((step - 1) // self._train_config.grad_accum_steps))
        self._writer.write_scalars(step, mean)
        for hook in self._hooks:
            hook.on_metrics(step, mean)


def _host_metrics(metrics: Mapping[str, jax.Array], step: int, checkpointer) -> dict[str, float]:
    """The step's metrics as Python floats; raises NonFiniteLossError if the loss is NaN or infinite."""
    metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
    if not math.isfinite(metrics["loss"]):
        raise NonFiniteLossError(
            f"Loss is {metrics['loss']} at step {step}; training stopped without saving this state. "
            f"The newest checkpoint in {checkpointer.directory} (step {checkpointer.latest_step()}) "
            "is the last good one."
        )
    return metrics


def _progress_actions(train_config, writer, workdir: str, start_step: int) -> list:
    """clu's steps/s + ETA report, and (on process 0, if asked) one profile of profile_steps steps taken
    a few steps after the first compile."""
    actions = [periodic_actions.ReportProgress(num_train_steps=train_config.num_steps, writer=writer)]
    if jax.process_index() == 0 and train_config.profile_steps:
        actions.append(periodic_actions.Profile(
            logdir=workdir, num_profile_steps=train_config.profile_steps, profile_duration_ms=None,
            first_profile=start_step + 5, every_steps=None, every_secs=None,
        ))
    return actions


def _compile_and_log(train_step, state, frozen, batch):
    """Ahead-of-time compiles the step for these shapes and shardings, logging the time and memory it takes
    (minutes and most of the device memory for real models, so worth seeing before the first step)."""
    start = time.perf_counter()
    compiled = train_step.lower(state, frozen, batch).compile()
    logging.info("Compiled the train step in %.1f s", time.perf_counter() - start)
    memory = compiled.memory_analysis()
    if memory is not None:
        logging.info(
            "Train step memory per device: arguments %.1f MiB, outputs %.1f MiB, temporaries %.1f MiB",
            memory.argument_size_in_bytes / 2**20, memory.output_size_in_bytes / 2**20,
            memory.temp_size_in_bytes / 2**20,
        )
    return compiled


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    method: Method | None = None,
    create_train_iterator: TrainIteratorFactory | None = None,
    hooks: Sequence[PeriodicHooks] = (),
) -> TrainOutcome:
    """Trains `config.train.num_steps` steps in `workdir`, resuming from its checkpoints.

    method: defaults to the one named by `config.method`. create_train_iterator: defaults to
    `input_pipeline.create_train_iterator`; called with `config.data`. Returns after the last step, or early
    (preempted=True) on SIGTERM / preemption with a checkpoint of the last completed step. Raises ValueError
    for an invalid config before anything compiles, NonFiniteLossError naming the step when the loss is not
    finite (the newest checkpoint on disk stays the last good one).
    """
    validate_train_config(config)
    initialize_distributed(config)
    method = method or method_from_config(config)
    create_train_iterator = create_train_iterator or _default_train_iterator_factory()
    train_config = config.train
    mesh = mesh_lib.create_mesh(config.mesh)
    write_config_json(config, workdir)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    optimizer = create_optimizer(train_config)
    checkpointer = create_checkpointer(config, workdir)
    try:
        run = build_run_state(config, method, mesh, optimizer, checkpointer)
        parameter_overview.log_parameter_overview(nnx.to_pure_dict(run.state.params), msg="Trainable parameters")
        if jax.tree.leaves(run.frozen):
            parameter_overview.log_parameter_overview(nnx.to_pure_dict(run.frozen), msg="Frozen parameters")
        start_step = int(run.state.step)
        if start_step >= train_config.num_steps:
            logging.info("%s already holds step %d of %d: nothing to train.", workdir, start_step,
                         train_config.num_steps)
            return TrainOutcome(step=start_step, preempted=False)
        logging.info("Training steps %d..%d on mesh %s", start_step + 1, train_config.num_steps, dict(mesh.shape))
        train_step = jit_train_step(
            make_train_step(method, run.graphdef, optimizer, seed=config.seed, ema_decay=train_config.ema_decay),
            state_sharding=run.state_sharding,
            frozen_sharding=run.frozen_sharding,
            batch_sharding=mesh_lib.batch_sharding(mesh),
            replicated=NamedSharding(mesh, PartitionSpec()),
        )
        batches = create_train_iterator(
            config.data, start_step=start_step, process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        progress = _progress_actions(train_config, writer, workdir, start_step)
        metrics_log = _MetricsLog(train_config, writer, hooks)
        last_step = train_config.num_steps
        state, compiled_step, step = run.state, None, start_step
        with StopRequest(enabled=jax.process_count() == 1) as stop_request:
            while step < last_step:
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    batch = mesh_lib.global_batch(mesh, next(batches))
                    if compiled_step is None:
                        compiled_step = _compile_and_log(train_step, state, run.frozen, batch)
                    state, metrics = compiled_step(state, run.frozen, batch)
                step += 1
                metrics = _host_metrics(metrics, step, checkpointer)
                for action in progress:
                    action(step)
                # Files the input pipeline skipped (corrupt, unreadable), when it counts them.
                metrics["data/skipped_files"] = float(getattr(batches, "num_skipped", 0))
                metrics_log.record(step, metrics)
                checkpointer.save(step, state, force=step == last_step)
                sample_due = _is_due(step, train_config.sample_every, last_step)
                eval_due = _is_due(step, train_config.eval_every, last_step)
                if hooks and (sample_due or eval_due):
                    view = TrainView(step, method, workdir, writer, dataclasses.replace(run, state=state))
                    for hook in hooks:
                        if sample_due:
                            hook.on_sample(view, batch)
                        if eval_due:
                            hook.on_eval(view)
                if step < last_step and (stop_request.requested or checkpointer.reached_preemption(step)):
                    checkpointer.save(step, state, force=True)
                    logging.warning("Stopped at step %d on request; checkpoint saved in %s.", step,
                                    checkpointer.directory)
                    return TrainOutcome(step=step, preempted=True)
        return TrainOutcome(step=step, preempted=False)
    finally:
        checkpointer.wait_until_finished()
        checkpointer.close()
        writer.flush()

