"""Semantic segmentation: a dataset-level confusion matrix and the mean IoU computed from it.

mIoU is a dataset metric: accumulate one confusion matrix over every image (`confusion_matrix` per batch,
summed, or `eval.streaming.ConfusionMatrix`), then take IoU per class once. Averaging per-image IoUs is a
different (and unstable) number.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(pred: jax.Array, target: jax.Array, num_classes: int, *,
                     ignore_index: int | None = 255) -> jax.Array:
    """Counts (num_classes, num_classes), rows = target class, columns = predicted class.

    pred, target: integer labels of any equal shape, e.g. (B, H, W). Pixels whose target is `ignore_index`,
    or lies outside [0, num_classes), are not counted. Jit-able with static `num_classes`.
    """
    pred = jnp.asarray(pred).reshape(-1).astype(jnp.int32)
    target = jnp.asarray(target).reshape(-1).astype(jnp.int32)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in size: {pred.shape} and {target.shape}")
    valid = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    cells = jnp.where(valid, target * num_classes + pred, 0)
    counts = jnp.bincount(cells, weights=valid.astype(jnp.int32), length=num_classes * num_classes)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class (C,); NaN for classes absent from both target and prediction."""
    confusion = np.asarray(confusion, np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def miou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes that occur (in target or prediction) in the accumulated confusion matrix."""
    ious = iou_per_class(confusion)
    if np.all(np.isnan(ious)):
        raise ValueError("mIoU of an empty confusion matrix (no counted pixels)")
    return float(np.nanmean(ious))
