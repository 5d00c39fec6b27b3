"""`train_and_evaluate`: the method-agnostic training loop.

Order of a run: validate the whole config (before anything touches JAX), point JAX at the persistent
compilation cache, join the multi-host job, take the
workdir's lock, build the mesh, the method and the train state (restored from the workdir's newest readable
checkpoint, else fresh), write config.json, then for each step: the next global batch (already on the
devices) -> jitted step (dispatched, not awaited) -> at log, checkpoint and evaluation boundaries only: the
metrics since the last boundary come to the host, non-finite losses stop the run before anything is saved,
then metrics, checkpoint, evaluators, stop request.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from typing import Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from clu import metric_writers, parameter_overview, periodic_actions
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from editdiff.methods.base import Evaluator, Method
from editdiff.train import mesh as mesh_lib
from editdiff.train.build import build_run_state, create_checkpointer, method_class
from editdiff.train.checkpoint import write_config_json
from editdiff.train.compilation_cache import enable_compilation_cache
from editdiff.train.config import validate_config
from editdiff.train.distributed import initialize_distributed
from editdiff.train.hooks import PeriodicHooks, TrainView
from editdiff.train.optimizer import create_optimizer, learning_rate_schedule
from editdiff.train.preemption import StopRequest
from editdiff.train.step import jit_train_step, make_train_step
from editdiff.train.workdir_lock import WorkdirLock

PREFETCH_BATCHES = 2  # global batches put on the devices ahead of the step that consumes them


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stopped without saving that state."""


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    """How a call ended: the last completed step, and whether it stopped early on a stop request."""

    step: int
    preempted: bool


def is_due(step: int, every: int, last_step: int) -> bool:
    """Whether a periodic action runs at `step`: every `every` steps (0: never) and at the last step."""
    return step == last_step or (every > 0 and step % every == 0)


def device_batches(mesh: jax.sharding.Mesh, host_batches: Iterator[Mapping[str, np.ndarray]]
                   ) -> Iterator[dict[str, jax.Array]]:
    """Global batches on the mesh, PREFETCH_BATCHES ahead: the transfer of the next batch overlaps the
    step that runs on the current one (the step is dispatched asynchronously)."""
    queue = collections.deque()
    for batch in host_batches:
        queue.append(mesh_lib.global_batch(mesh, batch))
        if len(queue) == PREFETCH_BATCHES:
            yield queue.popleft()


class _PendingMetrics:
    """Per-step metrics: `add` keeps them on the devices; `check` brings those since the last check to the
    host in one transfer and raises NonFiniteLossError naming the first step whose loss is not finite;
    `take` returns (and forgets) the checked ones, for the log."""

    def __init__(self, checkpointer):
        self._checkpointer = checkpointer
        self._on_device: list[tuple[int, dict[str, jax.Array]]] = []
        self._on_host: list[dict[str, float]] = []

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self._on_device.append((step, metrics))

    def check(self) -> None:
        steps = [step for step, _ in self._on_device]
        host = jax.device_get([metrics for _, metrics in self._on_device])
        self._on_device = []
        for step, metrics in zip(steps, host):
            if not math.isfinite(float(metrics["loss"])):
                raise NonFiniteLossError(
                    f"Loss is {float(metrics['loss'])} at step {step}; training stopped without saving this or a "
                    f"later state. The newest checkpoint in {self._checkpointer.directory} (step "
                    f"{self._checkpointer.latest_step()}) is the last good one."
                )
            self._on_host.append({name: float(value) for name, value in metrics.items()})

    def take(self) -> list[dict[str, float]]:
        taken, self._on_host = self._on_host, []
        return taken


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


def run_evaluators(evaluators: Sequence[Evaluator], model: nnx.Module, step: int, workdir: str, writer) -> dict:
    """Calls each evaluator on the model in eval mode; returns {name: result}."""
    model.eval()
    return {evaluator.name: evaluator(model, step, workdir, writer) for evaluator in evaluators}


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    method: Method | None = None,
    hooks: Sequence[PeriodicHooks] = (),
) -> TrainOutcome:
    """Trains `config.train.num_steps` steps in `workdir`, resuming from its checkpoints, with the method's
    data and evaluators.

    method: defaults to the one named by `config.method`, constructed after the multi-host job is joined.
    Returns after the last step, or early (preempted=True) on SIGTERM / preemption with a checkpoint of the
    last completed step. Raises ValueError for an invalid config before anything is built,
    WorkdirLockedError when another run trains in `workdir`, ConfigChangedError when its checkpoint does
    not fit the config, NonFiniteLossError naming the step when the loss is not finite (the newest
    checkpoint on disk stays the last good one).
    """
    validate_config(config, type(method) if method is not None else method_class(config))
    enable_compilation_cache(config)
    initialize_distributed(config)
    with WorkdirLock(workdir, enabled=jax.process_index() == 0):
        return _train(config, workdir, method or method_class(config)(config), hooks)


def _train(config, workdir: str, method: Method, hooks: Sequence[PeriodicHooks]) -> TrainOutcome:
    train_config = config.train
    mesh = mesh_lib.create_mesh(config.mesh)
    optimizer = create_optimizer(train_config)
    checkpointer = create_checkpointer(config, workdir)
    writer = None
    try:
        run = build_run_state(config, method, mesh, optimizer, checkpointer, workdir)
        write_config_json(config, workdir)  # only once the checkpoint (if any) fits this config
        writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
        parameter_overview.log_parameter_overview(nnx.to_pure_dict(run.state.params), msg="Trainable parameters")
        if jax.tree.leaves(run.frozen):
            parameter_overview.log_parameter_overview(nnx.to_pure_dict(run.frozen), msg="Frozen parameters")
        start_step = int(run.state.step)
        last_step = train_config.num_steps
        if start_step >= last_step:
            logging.info("%s already holds step %d of %d: nothing to train.", workdir, start_step, last_step)
            return TrainOutcome(step=start_step, preempted=False)
        logging.info("Training steps %d..%d on mesh %s", start_step + 1, last_step, dict(mesh.shape))
        train_step = jit_train_step(
            make_train_step(method, run.graphdef, optimizer, seed=config.seed, ema_decay=train_config.ema_decay),
            state_sharding=run.state_sharding,
            frozen_sharding=run.frozen_sharding,
            batch_sharding=mesh_lib.batch_sharding(mesh),
            replicated=NamedSharding(mesh, PartitionSpec()),
        )
        host_batches = method.train_batches(start_step=start_step, process_index=jax.process_index(),
                                            process_count=jax.process_count())
        batches = device_batches(mesh, host_batches)
        evaluators = method.evaluators()
        progress = _progress_actions(train_config, writer, workdir, start_step)
        schedule = learning_rate_schedule(train_config)
        pending = _PendingMetrics(checkpointer)
        state, compiled_step, step = run.state, None, start_step
        with StopRequest(enabled=jax.process_count() == 1) as stop_request:
            while step < last_step:
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    batch = next(batches)
                    if compiled_step is None:
                        compiled_step = _compile_and_log(train_step, state, run.frozen, batch)
                    state, metrics = compiled_step(state, run.frozen, batch)
                step += 1
                pending.add(step, metrics)
                for action in progress:
                    action(step)
                log_due = is_due(step, train_config.log_every, last_step)
                save_due = step == last_step or checkpointer.should_save(step)
                due = [e for e in evaluators if is_due(step, e.every, last_step)]
                stopping = step < last_step and (stop_request.requested or checkpointer.reached_preemption(step))
                if not (log_due or save_due or due or stopping):
                    continue
                pending.check()  # raises before a non-finite state is saved or evaluated
                if log_due:
                    _write_metrics(step, pending.take(), train_config, schedule, host_batches, writer, hooks)
                    stopping = stopping or (step < last_step and stop_request.requested)
                if save_due or stopping:
                    checkpointer.save(step, state, force=True)
                if due:
                    run_evaluators(due, dataclasses.replace(run, state=state).model(ema=True), step, workdir, writer)
                if stopping:
                    logging.warning("Stopped at step %d on request; checkpoint saved in %s.", step,
                                    checkpointer.directory)
                    return TrainOutcome(step=step, preempted=True)
        view = TrainView(step, method, workdir, writer, dataclasses.replace(run, state=state))
        for hook in hooks:
            hook.on_end(view)
        return TrainOutcome(step=step, preempted=False)
    finally:
        checkpointer.wait_until_finished()
        checkpointer.close()
        if writer is not None:
            writer.flush()


def _write_metrics(step, host_metrics, train_config, schedule, host_batches, writer, hooks) -> None:
    """The mean of the interval's metrics, the learning rate and the skipped-input count, to the writer and
    the hooks."""
    mean = {name: float(np.mean([m[name] for m in host_metrics])) for name in host_metrics[-1]}
    # The rate of the update this step belongs to (with accumulation, possibly still pending).
    mean["learning_rate"] = float(schedule((step - 1) // train_config.grad_accum_steps))
    # Files the input pipeline skipped (corrupt, unreadable), when it counts them.
    mean["data/skipped_files"] = float(getattr(host_batches, "num_skipped", 0))
    writer.write_scalars(step, mean)
    for hook in hooks:
        hook.on_metrics(step, mean)
