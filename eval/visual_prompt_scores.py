"""Per-task scores of the GENIE visual-prompting method: the metrics of its paper's table, one set per task.

Predictions and targets are the method's answers and the rendered ground-truth answers, `(N, H, W, 3)` float
in [-1, 1] (NumPy or JAX). Every score is computed on [0, 1] images, x -> (x + 1) / 2, predictions clipped to
[0, 1] (as an image file of them would be):

- TASK_METRICS[task]: the metric names of a task (every task of input_pipeline.visual_tasks.ALL_TASKS), the
  main one (the paper's) first: depth RMSE; denoising, deraining, contrast PSNR / SSIM; super-resolution and
  deblurring PSNR; colourisation MSE; inpainting SSIM / MSE; segmentation mIoU; edges F1 (absent from the
  paper's table). HIGHER_IS_BETTER[metric] says which way each metric improves; `main_metric(task)`.
- `decode_segmentation`: the class id of each pixel, the VOC palette colour nearest in RGB (Euclidean on
  [0, 1]); it inverts render.render_segmentation exactly.
- `decode_depth`: the relative depth of each pixel, index / 255 of the nearest DEPTH_TABLE colour; it inverts
  render.render_depth up to its 1/255 quantisation (of the min-max normalised map).
- `task_scores(task, predictions, targets)`: {metric: Python float} for TASK_METRICS[task].
  PSNR (data range 1), SSIM (eval.metrics, scikit-image's paper settings) and MSE: per image, then the mean
  over images (an exact match's +inf PSNR makes the mean +inf). Depth RMSE: per image between the decoded
  relative depths of prediction and target, then the mean. Segmentation mIoU: one confusion matrix over all
  N images of the decoded class ids (256 palette ids, target pixels of VOC's 255 "ignore" not counted), the
  mean IoU over the classes 0-254 present in target or prediction (a prediction of 255 counts as a miss of
  the target's class). Edges F1: edge pixels are those of luma (tf.image.rgb_to_grayscale's weights) > 0.5,
  F1 = 2 TP / (2 TP + FP + FN) pooled over all images, 1.0 when neither has an edge pixel. An unknown task
  or mismatched shapes raise ValueError.
"""
from __future__ import annotations

import numpy as np

from eval import metrics, segmentation
from input_pipeline.visual_tasks.render import DEPTH_TABLE, SEGMENTATION_PALETTE

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "inpainting": ("SSIM", "MSE"),
    "colourisation": ("MSE",),
    "edges": ("F1",),
    "super_resolution": ("PSNR",),
    "deblurring": ("PSNR",),
    "denoising": ("PSNR", "SSIM"),
    "segmentation": ("mIoU",),
    "depth": ("RMSE",),
    "deraining": ("PSNR", "SSIM"),
    "contrast": ("PSNR", "SSIM"),
}
HIGHER_IS_BETTER: dict[str, bool] = {"PSNR": True, "SSIM": True, "MSE": False, "RMSE": False, "mIoU": True,
                                     "F1": True}

IGNORE_INDEX = 255
EDGE_THRESHOLD = 0.5
_LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale, which the edge task's Canny reads
_DECODE_CHUNK = 1 << 15  # pixels per nearest-colour step: a (chunk, 256) float64 distance block, 64 MiB


def main_metric(task: str) -> str:
    """The paper's metric of `task` (the first of TASK_METRICS[task])."""
    return _metrics_of(task)[0]


def _metrics_of(task: str) -> tuple[str, ...]:
    if task not in TASK_METRICS:
        raise ValueError(f"unknown visual task {task!r}; tasks are {tuple(TASK_METRICS)}")
    return TASK_METRICS[task]


def _unit(images) -> np.ndarray:
    """`(N, H, W, 3)` in [-1, 1] -> float32 on [0, 1]; ValueError for another shape."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3); got {images.shape}")
    return (images + 1.0) / 2.0


def _nearest_entry(images, table: np.ndarray) -> np.ndarray:
    """`(N, H, W)` int32: per pixel of `(N, H, W, 3)` images in [-1, 1], the index of the nearest row of table."""
    pixels = _unit(images)
    flat = pixels.reshape(-1, 3)
    table = table.astype(np.float64)
    # argmin_k |x - t_k|^2 = argmin_k (|t_k|^2 - 2 x . t_k): a matmul instead of an (P, K, 3) difference.
    offsets = np.sum(np.square(table), axis=1)
    nearest = np.empty(len(flat), np.int32)
    for start in range(0, len(flat), _DECODE_CHUNK):
        chunk = flat[start:start + _DECODE_CHUNK].astype(np.float64)
        nearest[start:start + len(chunk)] = np.argmin(offsets - 2.0 * chunk @ table.T, axis=1)
    return nearest.reshape(pixels.shape[:3])


def decode_segmentation(images) -> np.ndarray:
    """`(N, H, W)` int32 class ids of `(N, H, W, 3)` VOC-palette renders in [-1, 1] (nearest palette colour)."""
    return _nearest_entry(images, SEGMENTATION_PALETTE)


def decode_depth(images) -> np.ndarray:
    """`(N, H, W)` float32 relative depth in [0, 1] of `(N, H, W, 3)` ramp renders in [-1, 1] (nearest entry / 255)."""
    return (_nearest_entry(images, DEPTH_TABLE) / 255.0).astype(np.float32)


def _mean(per_image) -> float:
    return float(np.mean(np.asarray(per_image, np.float64)))


def _miou(predictions, targets) -> float:
    confusion = segmentation.confusion_matrix(decode_segmentation(predictions), decode_segmentation(targets),
                                              len(SEGMENTATION_PALETTE), ignore_index=IGNORE_INDEX)
    ious = segmentation.iou_per_class(np.asarray(confusion))[:IGNORE_INDEX]
    if np.all(np.isnan(ious)):
        raise ValueError("segmentation mIoU: every target pixel is VOC's ignore (255), nothing to score")
    return float(np.nanmean(ious))


def _edge_f1(predictions: np.ndarray, targets: np.ndarray) -> float:
    weights = np.asarray(_LUMA_WEIGHTS)
    predicted, actual = predictions @ weights > EDGE_THRESHOLD, targets @ weights > EDGE_THRESHOLD
    true_positive = np.sum(predicted & actual)
    errors = np.sum(predicted ^ actual)  # false positives + false negatives
    if true_positive + errors == 0:
        return 1.0
    return float(2 * true_positive / (2 * true_positive + errors))


def task_scores(task: str, predictions, targets) -> dict[str, float]:
    """{metric: float} for each of TASK_METRICS[task]; predictions and targets `(N, H, W, 3)` in [-1, 1]."""
    names = _metrics_of(task)
    pred, target = np.clip(_unit(predictions), 0.0, 1.0), _unit(targets)
    if pred.shape != target.shape:
        raise ValueError(f"predictions and targets differ in shape: {pred.shape} and {target.shape}")
    if task == "segmentation":
        return {"mIoU": _miou(predictions, targets)}
    if task == "depth":
        rmse = metrics.rmse(decode_depth(predictions)[..., None], decode_depth(targets)[..., None])
        return {"RMSE": _mean(rmse)}
    if task == "edges":
        return {"F1": _edge_f1(pred, target)}
    per_image = {"PSNR": lambda: metrics.psnr(pred, target, 1.0), "SSIM": lambda: metrics.ssim(pred, target, 1.0),
                 "MSE": lambda: metrics.mse(pred, target)}
    return {name: _mean(per_image[name]()) for name in names}
