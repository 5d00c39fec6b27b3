"""optax AdamW with linear warm-up, a constant or cosine schedule, gradient clipping and accumulation."""
from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate as a function of the optimiser update count (micro-steps / grad_accum_steps).

    Linear warm-up from 0 to `learning_rate` over `warmup_steps` micro-steps, then constant, or a cosine
    decay to 0 at `num_steps`.
    """
    accum = train_config.grad_accum_steps
    warmup = train_config.warmup_steps // accum
    total = train_config.num_steps // accum
    peak = train_config.learning_rate
    if train_config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(total, warmup + 1), end_value=0.0
        )
    if warmup == 0:
        return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], boundaries=[warmup]
    )


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
    return jax.numpy.asarray(True)
