"""Monocular depth metrics (Eigen et al. 2014): AbsRel, SqRel, RMSE, RMSE-log, log10, delta < 1.25^k.

Per image over the valid pixels (target depth in (min_depth, max_depth]), so the dataset value is the mean of
per-image rows, as the Eigen / Monodepth evaluation code reports them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")


def _masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(valid, values, 0), axis=1) / jnp.sum(valid, axis=1)


def depth_metrics(pred: jax.Array, target: jax.Array, *, min_depth: float = 1e-3,
                  max_depth: float | None = None, median_scaling: bool = False) -> dict[str, jax.Array]:
    """Each of DEPTH_METRICS as a (B,) array for depth maps (B, H, W) or (B, H, W, 1).

    Pixels count where `min_depth < target` (and `target <= max_depth` when given); predictions are clipped
    to [min_depth, max_depth] first so the logs exist. `median_scaling` multiplies each prediction by
    median(target) / median(pred) over its valid pixels (for scale-ambiguous monocular methods). An image
    without valid pixels gives NaN rows.
    """
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape; got {pred.shape} and {target.shape}")
    pred = pred.reshape(pred.shape[0], -1)
    target = target.reshape(target.shape[0], -1)
    valid = target > min_depth
    if max_depth is not None:
        valid &= target <= max_depth
    if median_scaling:
        ratio = (jnp.nanmedian(jnp.where(valid, target, jnp.nan), axis=1)
                 / jnp.nanmedian(jnp.where(valid, pred, jnp.nan), axis=1))
        pred = pred * ratio[:, None]
    pred = jnp.clip(pred, min_depth, max_depth)
    safe_target = jnp.where(valid, target, 1.0)  # keeps divisions and logs finite off the valid region
    error = pred - safe_target
    threshold = jnp.maximum(pred / safe_target, safe_target / pred)
    log_error = jnp.log(pred) - jnp.log(safe_target)
    return {
        "abs_rel": _masked_mean(jnp.abs(error) / safe_target, valid),
        "sq_rel": _masked_mean(jnp.square(error) / safe_target, valid),
        "rmse": jnp.sqrt(_masked_mean(jnp.square(error), valid)),
        "rmse_log": jnp.sqrt(_masked_mean(jnp.square(log_error), valid)),
        "log10": _masked_mean(jnp.abs(log_error) / jnp.log(10.0), valid),
        **{f"delta{k}": _masked_mean((threshold < 1.25 ** k).astype(jnp.float32), valid) for k in (1, 2, 3)},
    }
