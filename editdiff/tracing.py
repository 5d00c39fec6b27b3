"""Building NNX models under a trace (`nnx.eval_shape`, a jitted initialiser) in time linear in their size.

JAX 0.10's `Tracer.sharding` raises AttributeError (so that `getattr(x, "sharding", None)` works) with a
message built by `_origin_msg()`, which walks every equation traced so far. flax NNX's `Variable.set_value`
probes `.sharding` of the value and the old value on every write, and every RNG draw of an initialiser writes
its stream's counter: tracing a model's initialiser is therefore quadratic in its number of parameters (the
text-conditioned tiny ldm test spent 30% of its time there: 106 s -> 76 s with `linear_time_probes`). Upstream
drops that part of the message (jax-ml/jax pull request 40041); remove this module when the pinned JAX has it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TypeVar

from flax import nnx
from jax._src.interpreters import partial_eval

M = TypeVar("M")


@contextlib.contextmanager
def linear_time_probes() -> Iterator[None]:
    """While active, an attribute probe on a traced value (`getattr(tracer, "sharding", None)`) costs O(1): the
    error it raises and discards no longer describes where the tracer came from. Errors raised inside the block
    lose only that "the value became a tracer due to ..." hint."""
    tracer = partial_eval.DynamicJaxprTracer
    original = tracer.__dict__.get("_origin_msg")
    if original is None:  # a JAX without it: nothing to do
        yield
        return
    tracer._origin_msg = lambda self: ""
    try:
        yield
    finally:
        tracer._origin_msg = original


def abstract_module(constructor: Callable[[], M]) -> M:
    """`nnx.eval_shape(constructor)`: the module with ShapeDtypeStructs for values (no initialiser runs), traced
    in linear time."""
    with linear_time_probes():
        return nnx.eval_shape(constructor)
