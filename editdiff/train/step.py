"""One optimiser micro-step as a pure function of (state, frozen, batch), jitted over the mesh."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from editdiff.methods.base import Batch, Method
from editdiff.train.optimizer import applied_update
from editdiff.train.state import TrainState, ema_update

TrainStep = Callable[[TrainState, nnx.State, Batch], tuple[TrainState, dict[str, jax.Array]]]


def step_rng(seed: int, step: jax.Array) -> jax.Array:
    """The key for micro-step `step`: one seed folded by the step, so a resumed run draws the same noise.

    Every process computes the same key: the step is one global computation over the mesh."""
    return jax.random.fold_in(jax.random.key(seed), step)


def make_train_step(
    method: Method, graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *, seed: int, ema_decay: float
) -> TrainStep:
    """The un-jitted step: loss and gradients of the trainable params, optimiser update, EMA update.

    The frozen parameters are read-only: they enter the loss but get no gradient. The model's non-parameter
    variables (BatchNorm statistics, RNG counters) leave the loss as the method left them and become the
    next state's. The EMA moves only on micro-steps where the optimiser applied an update (every step
    without gradient accumulation). Metrics are the method's plus `loss` and `grad_norm` (global norm
    before clipping).
    """

    def train_step(state: TrainState, frozen: nnx.State, batch: Batch):
        rng = step_rng(seed, state.step)

        def loss_fn(params):
            # copy: fresh variables at this trace level, so the loss may update the model state.
            model = nnx.merge(graphdef, params, state.model_state, frozen, copy=True)
            loss, metrics = method.loss(model, batch, rng)
            return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)))

        (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = jax.lax.cond(
            applied_update(optimizer, opt_state),
            lambda: ema_update(state.ema_params, params, ema_decay),
            lambda: state.ema_params,
        )
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params,
                               model_state=model_state)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)

    return train_step


def jit_train_step(train_step: TrainStep, *, state_sharding, frozen_sharding, batch_sharding, replicated) -> TrainStep:
    """The step jitted over the mesh with the given layouts; the incoming state is donated."""
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, frozen_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
