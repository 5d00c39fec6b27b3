"""optax AdamW with linear warm-up, a constant, cosine or staircase-exponential schedule, gradient clipping and
accumulation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate of the optimiser update that follows `count` earlier updates (an update is
    grad_accum_steps micro-steps; warmup_steps, decay_every and num_steps count micro-steps).

    Linear warm-up over W updates, lr * (count + 1) / W, so the first update already moves; then, counted from
    the end of the warm-up (optax schedules joined at W):
      constant     lr
      cosine       lr * 0.5 * (1 + cos(pi * (count - W) / (T - W))), reaching 0 just after the last update
      exponential  lr * decay_rate ** floor((count - W) / decay_every)  (staircase: e.g. x0.9 every N steps)
    """
    accum = train_config.grad_accum_steps
    warmup = train_config.warmup_steps // accum
    total = train_config.num_steps // accum
    peak = train_config.learning_rate
    if train_config.schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, decay_steps=max(total - warmup, 1))
    elif train_config.schedule == "exponential":
        main = optax.exponential_decay(peak, transition_steps=max(train_config.decay_every // accum, 1),
                                       decay_rate=train_config.decay_rate, staircase=True)
    else:
        main = optax.constant_schedule(peak)
    if warmup <= 1:
        return main
    return optax.join_schedules([optax.linear_schedule(peak / warmup, peak, warmup - 1), main], [warmup])


def _decay_mask(params):
    # Weight decay on matrices and kernels only: decaying biases and norm scales just fights normalisation.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def create_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Clip by global norm (if grad_clip_norm > 0), then AdamW; with grad_accum_steps > 1 wrapped in
    optax.MultiSteps, which averages that many micro-batch gradients before each update."""
    adamw = optax.adamw(
        learning_rate_schedule(train_config),
        b1=train_config.adam_b1,
        b2=train_config.adam_b2,
        eps=train_config.adam_eps,
        weight_decay=train_config.weight_decay,
        mask=_decay_mask,
    )
    if train_config.grad_clip_norm > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(train_config.grad_clip_norm), adamw)
    else:
        optimizer = adamw
    if train_config.grad_accum_steps > 1:
        return optax.MultiSteps(optimizer, every_k_schedule=train_config.grad_accum_steps)
    return optimizer


def applied_update(optimizer: optax.GradientTransformation, opt_state) -> jax.Array:
    """Whether the optimiser step that produced `opt_state` changed the parameters (always, without
    accumulation; on every k-th micro-step with it)."""
    if isinstance(optimizer, optax.MultiSteps):
        return optimizer.has_updated(opt_state)
    return jnp.asarray(True)
