"""optax AdamW with linear warm-up, a constant or cosine schedule, gradient clipping and accumulation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate of the optimiser update that follows `count` earlier updates (an update is
    grad_accum_steps micro-steps; warmup_steps and num_steps count micro-steps).

    lr(count) = learning_rate * min(1, (count + 1) / W) * d(count), W = warm-up updates; d = 1 (constant) or
    the cosine 0.5 * (1 + cos(pi * (count - W) / (T - W))) clipped to [0, 1], T = total updates. The first
    update already moves (lr / W), and the cosine reaches 0 just after the last update.
    """
    accum = train_config.grad_accum_steps
    warmup = train_config.warmup_steps // accum
    total = train_config.num_steps // accum
    peak = train_config.learning_rate
    cosine = train_config.schedule == "cosine"

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        rate = peak * jnp.minimum(1.0, (count + 1.0) / max(warmup, 1))
        if cosine:
            progress = jnp.clip((count - warmup) / max(total - warmup, 1), 0.0, 1.0)
            rate = rate * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return rate

    return schedule


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
