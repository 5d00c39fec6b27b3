"""Accumulating metrics over datasets too large for one batch: per-image rows, feature banks, confusion counts.

Feed each batch's per-image values (or features, or labels) as it is computed; read the aggregates once at
the end. Everything is held on the host in NumPy, so accumulation never triggers a recompilation.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from eval import distribution, segmentation


class MetricTable:
    """Per-image metric rows keyed by image name, and their means.

    The mean of a metric is over the images that have it; a non-finite value (the +inf PSNR of an exact
    match) makes that mean non-finite, as it should: report it rather than hide it.
    """

    def __init__(self):
        self.rows: dict[str, dict[str, float]] = {}

    def add(self, names: Sequence[str], values: Mapping[str, np.ndarray]) -> None:
        """Adds metric `values` {metric: (B,)} for the B images `names` (a later value for a name replaces)."""
        for metric, column in values.items():
            column = np.asarray(column, np.float64).reshape(-1)
            if len(column) != len(names):
                raise ValueError(f"metric {metric!r} has {len(column)} values for {len(names)} images")
            for name, value in zip(names, column):
                self.rows.setdefault(name, {})[metric] = float(value)

    def metrics(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows.values():
            seen.update(dict.fromkeys(row))
        return list(seen)

    def means(self) -> dict[str, float]:
        """{metric: mean over the images that have it}."""
        return {m: float(np.mean([row[m] for row in self.rows.values() if m in row])) for m in self.metrics()}

    def __len__(self) -> int:
        return len(self.rows)


class FeatureBank:
    """Network features (N, D) collected batch by batch, for FID statistics and KID subsets."""

    def __init__(self):
        self._chunks: list[np.ndarray] = []

    def add(self, features: np.ndarray) -> None:
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or (self._chunks and features.shape[1] != self._chunks[0].shape[1]):
            raise ValueError(f"features must be (B, D) with one D throughout; got {features.shape}")
        self._chunks.append(features)

    def array(self) -> np.ndarray:
        return np.concatenate(self._chunks) if self._chunks else np.zeros((0, 0), np.float32)

    def statistics(self) -> distribution.GaussianStatistics:
        return distribution.feature_statistics(self.array())

    def __len__(self) -> int:
        return sum(len(c) for c in self._chunks)


class ConfusionMatrix:
    """A dataset-level segmentation confusion matrix summed over batches; `miou()` at the end."""

    def __init__(self, num_classes: int, *, ignore_index: int | None = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes, num_classes), np.int64)

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        self.counts += np.asarray(segmentation.confusion_matrix(pred, target, self.num_classes,
                                                                ignore_index=self.ignore_index), np.int64)

    def miou(self) -> float:
        return segmentation.miou(self.counts)

    def iou_per_class(self) -> np.ndarray:
        return segmentation.iou_per_class(self.counts)

