"""The contract between a method and the method-agnostic trainer.

A method owns everything specific to one paper: how its model is built from the config, which parameters
train, how a batch becomes a loss, and how a batch becomes images. The trainer (`editdiff.train`) calls only
what is declared here.
"""
from __future__ import annotations

import abc
from typing import Any, Mapping

import jax
import ml_collections
from flax import nnx

Batch = Mapping[str, jax.Array]


class Method(abc.ABC):
    """One editing method, configured by the experiment's ConfigDict."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @abc.abstractmethod
    def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """Builds the whole model (trainable and frozen parts), randomly initialised or loaded from the
        pretrained directories named in the config."""

    @property
    @abc.abstractmethod
    def trainable(self) -> nnx.filterlib.Filter:
        """The nnx filter selecting the parameters that get gradients, optimiser state and EMA."""

    @abc.abstractmethod
    def loss(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar float32 training loss and a dict of scalar metrics for one (sharded) batch."""

    @abc.abstractmethod
    def sample(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> jax.Array:
        """Edited images `(B, H, W, 3)` in [-1, 1] for the batch's inputs, with the config's sampler."""

    @abc.abstractmethod
    def dummy_batch(self, batch_size: int) -> dict[str, Any]:
        """A batch of the right shapes and dtypes (zeros), for tracing and parameter overviews."""

    def eval_sets(self) -> dict[str, dict[str, Any]]:
        """Fixed, seeded evaluation batches by name (numpy arrays with the training batch's fields plus
        `target`), for periodic sample grids and evaluation tables; none unless a method defines them."""
        return {}

    def export(self, model: nnx.Module, directory: str) -> list[str]:
        """Writes the trained model as PyTorch-loadable directories (diffusers layout where one exists) under
        `directory`; returns the paths written."""
        raise NotImplementedError(f"{type(self).__name__} has no PyTorch export")
