"""Periodic hooks: where sample grids, evaluation and metric consumers plug into the training loop.

The loop calls every hook on every process (sampling and evaluating sharded models are global computations);
a hook writes files only where `view.is_chief`.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
from clu import metric_writers
from flax import nnx

from editdiff.methods.base import Batch, Method
from editdiff.train.build import RunState


@dataclasses.dataclass(frozen=True)
class TrainView:
    """A read-only look at the run at one step, for hooks. Valid only during the hook call: the next
    step donates the state's buffers."""

    step: int
    method: Method
    workdir: str
    writer: metric_writers.MetricWriter
    run: RunState

    @property
    def is_chief(self) -> bool:
        """True on the process that writes files (process 0)."""
        return jax.process_index() == 0

    def model(self, *, ema: bool = True) -> nnx.Module:
        """The whole model with the EMA (default) or the raw trainable parameters, plus the frozen rest."""
        return self.run.model(ema=ema)


class PeriodicHooks:
    """Override what you need; every method here does nothing by default.

    on_metrics: after every `train.log_every` steps (and the last), with the interval's mean metrics.
    on_sample: every `train.sample_every` steps and after the last step, with the step's global batch.
    on_eval: every `train.eval_every` steps and after the last step.
    """

    def on_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def on_sample(self, view: TrainView, batch: Batch) -> None:
        pass

    def on_eval(self, view: TrainView) -> None:
        pass
