"""The contract between a method and the method-agnostic trainer.

A method owns everything specific to one paper: its config keys, how its model is built (and which
pretrained weights fill it), which parameters train, its training data, how a batch becomes a loss, how a
batch becomes images, its evaluators and its export. The trainer (`editdiff.train`) calls only what is
declared here, and knows no method's field names, baselines or file layouts.
"""
from __future__ import annotations

import abc
from typing import Any, Iterator, Mapping

import jax
import ml_collections
import numpy as np
from clu import metric_writers
from flax import nnx

from editdiff.config_checks import Section

Batch = Mapping[str, jax.Array]
FlatState = Mapping[tuple, np.ndarray]


class Evaluator(abc.ABC):
    """One periodic report of a method: a sample grid, a metric table, ...

    Built by `Method.evaluators()` from an entry `config.evals.NAME = {kind, every, ...}`. The trainer calls it
    every `every` steps and after the last step (every = 0: after the last step only), and `--mode=eval`
    (every evaluator) / `--mode=sample` (those with `writes_samples`) call it once on a restored model. It
    is called on every process (sampling a sharded model is a global computation) and writes files on
    process 0 only. It compiles what it runs once: the model's graph is the same at every call.
    """

    writes_samples: bool = False

    def __init__(self, name: str, every: int):
        self.name = name
        self.every = every

    @abc.abstractmethod
    def __call__(self, model: nnx.Module, step: int, workdir: str, writer: metric_writers.MetricWriter) -> Any:
        """Evaluates `model` (EMA parameters, in eval mode) at `step`; returns what it wrote or scored."""


class Method(abc.ABC):
    """One editing method, configured by the experiment's ConfigDict."""

    # The evaluator kinds `config.evals.*.kind` may name.
    evaluator_kinds: tuple[str, ...] = ()

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @classmethod
    def config_sections(cls, config: ml_collections.ConfigDict) -> list[Section]:
        """The method's config keys (model, diffusion, data, ...) as validation sections; the trainer checks
        them together with its own before anything is built. Pure Python: no JAX work."""
        return []

    @abc.abstractmethod
    def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """Builds the whole model (trainable and frozen parts) with random initial values. It reads no weight
        files: the trainer calls it abstractly (`nnx.eval_shape`) and under `jax.jit` to create the
        parameters directly in their sharded layout; pretrained values come from `pretrained_state`."""

    def pretrained_state(self) -> FlatState:
        """Values read from the config's pretrained directories, by model path (e.g. ("unet", "conv_in",
        "kernel")), replacing the initial values of `init_model`: frozen parts at every start, trainable ones
        on a fresh start (before `config.init_from`). None by default."""
        return {}

    @property
    @abc.abstractmethod
    def trainable(self) -> nnx.filterlib.Filter:
        """The nnx filter selecting the parameters that get gradients, optimiser state and EMA."""

    @abc.abstractmethod
    def train_batches(self, *, start_step: int, process_index: int, process_count: int) -> Iterator[dict[str, Any]]:
        """This process's slice of every global training batch from `start_step` on: dicts of numpy arrays
        `(B_global // process_count, ...)`. Batch k is a pure function of (config seed, k, process), so a
        resumed run sees the same batches. An optional attribute `num_skipped` counts unreadable inputs."""

    @abc.abstractmethod
    def loss(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar float32 training loss and a dict of scalar metrics for one (sharded) batch. Variables other
        than parameters that the model updates (BatchNorm statistics) are carried to the next step."""

    @abc.abstractmethod
    def sample(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> jax.Array:
        """Images `(B, H, W, 3)` in [-1, 1] for the batch's inputs, with the config's sampler."""

    def evaluators(self) -> list[Evaluator]:
        """The evaluators named in `config.evals` (none by default)."""
        return []

    def edit(self, model: nnx.Module, image: np.ndarray) -> dict[str, np.ndarray]:
        """`--mode=edit` on one photo (H, W, 3) float32 in [-1, 1] with the config's `config.edit` settings:
        {label: (H', W', 3) in [-1, 1]}, the method's result first, then what a reader compares it with (the
        frozen model, the input as the model saw it, ...), all of one size. H', W' are the input's where the
        model allows; the method logs any resize or crop. `model` is the restored EMA model in eval mode."""
        raise NotImplementedError(f"{type(self).__name__} has no --mode=edit")

    def edit_summary(self) -> dict | None:
        """What the last `edit` decided beyond its images (e.g. the plugins an instruction selected and their
        scores), JSON-serialisable; `--mode=edit` writes it as OUTPUT/summary/NAME.json. None: nothing."""
        return None

    def export(self, model: nnx.Module, directory: str) -> list[str]:
        """Writes the trained model as PyTorch-loadable directories (diffusers layout where one exists) under
        `directory`; returns the paths written."""
        raise NotImplementedError(f"{type(self).__name__} has no PyTorch export")
