"""The train state: what the jitted step carries and what a checkpoint holds.

The model is split once into a static graph definition, the trainable parameters (the method's filter) and
the frozen rest. Only the trainable part has optimiser state and an EMA copy; the frozen rest (e.g. a
pretrained VAE) is rebuilt by the method at start-up and never checkpointed.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
    """step: optimiser micro-steps taken (int32 scalar); params / ema_params: the trainable parameters and
    their exponential moving average (same structure); opt_state: the optimiser's state for params."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    ema_params: nnx.State


def split_model(model: nnx.Module, trainable: nnx.filterlib.Filter) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable params, frozen rest) of a model; `nnx.merge(graphdef, params, frozen)` rebuilds it.
    Raises ValueError when the filter selects nothing or a trainable parameter is not float32."""
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    if not jax.tree.leaves(params):
        raise ValueError(f"The method's trainable filter {trainable!r} selects no parameters of the model")
    # Adam moments and EMA of low-precision parameters lose small updates; compute dtype is separate.
    not_float32 = [
        f"{'.'.join(map(str, path))}: {var[...].dtype}"
        for path, var in nnx.to_flat_state(params)
        if var[...].dtype != jnp.float32
    ]
    if not_float32:
        raise ValueError("Trainable parameters must be float32; these are not: " + ", ".join(not_float32))
    return graphdef, params, frozen


def init_train_state(params: nnx.State, optimizer: optax.GradientTransformation) -> TrainState:
    """The state at step 0: the given parameters, fresh optimiser state, EMA equal to the parameters."""
    # An explicit copy: the EMA must own its buffers, since the step donates the whole state.
    ema_params = jax.tree.map(jnp.copy, params)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), ema_params=ema_params
    )


def ema_update(ema_params: nnx.State, params: nnx.State, decay: float) -> nnx.State:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
