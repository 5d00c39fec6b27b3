"""Multi-label classification metrics for the plugin selector: ZTA, mAP, CP, CR, CF1, OP, OR, OF1.

scores: (Q, K) similarity or confidence per sample and class; labels: (Q, K) with 1 for the classes a sample
asks for. A class is predicted positive when its score is greater than `threshold` (Diff-Plugin uses 0).
Dataset-level NumPy: these are computed once over all Q samples.
"""
from __future__ import annotations

import numpy as np


def _check(scores, labels):
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores and labels must both be (Q, K); got {scores.shape} and {labels.shape}")
    return scores, labels


def zero_tolerance_accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.0) -> float:
    """ZTA (Diff-Plugin eq. 7): the fraction of samples whose every positive class scores above `threshold`
    and every negative class at or below it, i.e. whose predicted set equals the requested set exactly."""
    scores, labels = _check(scores, labels)
    return float(np.mean(np.all((scores > threshold) == labels, axis=1)))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Non-interpolated AP per class (K,): the mean, over the class's positives ranked by descending score, of
    the precision at each positive's rank. NaN for a class without positives."""
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, axis=0, kind="stable")
    ranked = np.take_along_axis(labels, order, axis=0)
    hits = np.cumsum(ranked, axis=0)
    precision_at_rank = hits / np.arange(1, len(scores) + 1)[:, None]
    positives = ranked.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, (precision_at_rank * ranked).sum(axis=0) / positives, np.nan)


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP: the mean of `average_precision` over classes that have positives."""
    return float(np.nanmean(average_precision(scores, labels)))


def _ratio(numerator, denominator):
    """numerator / denominator with 0/0 = 0 (a class never predicted has no correct predictions)."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _f1(precision, recall):
    return float(_ratio(2 * precision * recall, precision + recall))


def precision_recall_f1(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.0) -> dict[str, float]:
    """Per-class averages CP, CR, CF1 and overall (pooled) OP, OR, OF1, as in ML-GCN (Chen et al. 2019).

    CP / CR average each class's precision / recall; CF1 = 2 CP CR / (CP + CR); OP / OR pool the counts of
    all classes first. A precision or recall with an empty denominator counts as 0.
    """
    scores, labels = _check(scores, labels)
    predicted = scores > threshold
    correct = (predicted & labels).sum(axis=0)
    predicted_count, label_count = predicted.sum(axis=0), labels.sum(axis=0)
    cp = float(np.mean(_ratio(correct, predicted_count)))
    cr = float(np.mean(_ratio(correct, label_count)))
    op = float(_ratio(correct.sum(), predicted_count.sum()))
    recall_overall = float(_ratio(correct.sum(), label_count.sum()))
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": recall_overall, "OF1": _f1(op, recall_overall)}


def selector_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.0) -> dict[str, float]:
    """Every plugin-selector number of Diff-Plugin's table: ZTA, mAP, CP, CR, CF1, OP, OR, OF1."""
    return {"ZTA": zero_tolerance_accuracy(scores, labels, threshold), "mAP": mean_average_precision(scores, labels),
            **precision_recall_f1(scores, labels, threshold)}
