"""Plumbing for frozen networks: build without running initialisers, and jit inference once."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx


def build_with_zeros(constructor: Callable[[nnx.Rngs], nnx.Module]) -> nnx.Module:
    """`constructor(rngs)`'s module with every variable zero, skipping the random initialisers.

    Loading a checkpoint overwrites every parameter anyway, and on CPU the initialisers of a VGG16 take tens
    of seconds where zeros (host arrays, replaced on loading) take well under one.
    """
    abstract = nnx.eval_shape(lambda: constructor(nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))


def jit_inference(model: nnx.Module, **call_options) -> Callable:
    """`model(*args, **call_options)` as a jitted function of `args` (compiled once per input shape and dtype);
    `call_options` are fixed Python values such as flags."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, *args):
        return nnx.merge(graphdef, state)(*args, **call_options)

    return lambda *args: run(state, *args)
