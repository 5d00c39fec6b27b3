"""Jitted inference for frozen networks: split the module once, merge inside the compiled function."""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx


def jit_inference(model: nnx.Module, **call_options) -> Callable:
    """`model(*args, **call_options)` as a jitted function of `args` (compiled once per input shape and dtype);
    `call_options` are fixed Python values such as flags."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, *args):
        return nnx.merge(graphdef, state)(*args, **call_options)

    return lambda *args: run(state, *args)
