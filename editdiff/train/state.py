"""The train state: what the jitted step carries and what a checkpoint holds.

The model is split once by `split_model` into a static graph definition and three states:

    params       the trainable parameters (the method's filter): gradients, optimiser state, EMA
    model_state  every variable that is not a parameter (BatchNorm statistics, RNG counters), of trainable
                 and frozen parts alike: the step updates it, checkpoints hold it
    frozen       the remaining parameters (e.g. a pretrained VAE): read-only, rebuilt by the method at start-up
                 and never checkpointed

`nnx.merge(graphdef, params, model_state, frozen)` is the whole model.
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
    their exponential moving average (same structure); opt_state: the optimiser's state for params;
    model_state: the model's non-parameter variables."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    ema_params: nnx.State
    model_state: nnx.State


def split_model(
    model: nnx.Module, trainable: nnx.filterlib.Filter
) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
    """(graphdef, trainable params, model_state, frozen params) of a model (see the module docstring).
    Raises ValueError when the filter selects no parameter or a trainable parameter is not float32."""
    graphdef, params, model_state, frozen = nnx.split(
        model, nnx.All(nnx.Param, trainable), nnx.Not(nnx.Param), ...
    )
    if not jax.tree.leaves(params):
        raise ValueError(f"The method's trainable filter {trainable!r} selects no parameters of the model")
    # Adam moments and EMA of low-precision parameters lose small updates; compute dtype is separate.
    not_float32 = [
        f"{'.'.join(map(str, path))}: {var.get_raw_value().dtype}"
        for path, var in nnx.to_flat_state(params)
        if var.get_raw_value().dtype != jnp.float32
    ]
    if not_float32:
        raise ValueError("Trainable parameters must be float32; these are not: " + ", ".join(not_float32))
    return graphdef, params, model_state, frozen


def init_train_state(params: nnx.State, model_state: nnx.State, optimizer: optax.GradientTransformation) -> TrainState:
    """The state at step 0: the given parameters and model state, fresh optimiser state, EMA = parameters."""
    # An explicit copy: the EMA must own its buffers, since the step donates the whole state.
    ema_params = jax.tree.map(jnp.copy, params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      ema_params=ema_params, model_state=model_state)


def ema_update(ema_params: nnx.State, params: nnx.State, decay: float) -> nnx.State:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
