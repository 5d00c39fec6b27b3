"""Hooks: where metric consumers and tests plug into the training loop (evaluators belong to the method).

The loop calls every hook on every process; a hook writes files only where `view.is_chief`.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
from clu import metric_writers
from flax import nnx

from editdiff.methods.base import Method
from editdiff.train.build import RunState


@dataclasses.dataclass(frozen=True)
class TrainView:
    """A read-only look at the run at one step, for hooks. Valid only during the hook call: a further step
    would donate the state's buffers."""

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
        """The whole model with the EMA (default) or the raw trainable parameters, plus the rest."""
        return self.run.model(ema=ema)


class PeriodicHooks:
    """Override what you need; every method here does nothing by default.

    on_metrics: every `train.log_every` steps (and the last), with the interval's mean metrics.
    on_end: once, after the last step of a run that was not stopped early.
    """

    def on_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def on_end(self, view: TrainView) -> None:
        pass
