"""Drawing a degradation's parameters from its ranges, statelessly from the example's `(2,)` seed.

A degradation folds a fixed small integer per independent use into the seed (`sub_seed(seed, i)`), so its
draws are independent of each other and a pure function of the seed. A range `(lo, hi)` with lo == hi fixes the
parameter (the tests use this to check the formulas with known values).
"""
from __future__ import annotations

import tensorflow as tf


def sub_seed(seed: tf.Tensor, index: int) -> tf.Tensor:
    """The `(2,)` seed of the `index`-th independent use of `seed` (int32 or int64)."""
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), index)


def uniform(seed: tf.Tensor, bounds: tuple[float, float], shape=()) -> tf.Tensor:
    """float32 uniform in [lo, hi) (exactly lo when lo == hi)."""
    lo, hi = bounds
    return lo + (hi - lo) * tf.random.stateless_uniform(shape, seed)


def log_uniform(seed: tf.Tensor, bounds: tuple[float, float], shape=()) -> tf.Tensor:
    """float32 whose log is uniform between log lo and log hi (scale parameters: noise levels, densities)."""
    lo, hi = tf.math.log(float(bounds[0])), tf.math.log(float(bounds[1]))
    return tf.exp(lo + (hi - lo) * tf.random.stateless_uniform(shape, seed))


def uniform_int(seed: tf.Tensor, bounds: tuple[int, int]) -> tf.Tensor:
    """int32 uniform in [lo, hi], both ends included."""
    return tf.random.stateless_uniform([], seed, minval=bounds[0], maxval=bounds[1] + 1, dtype=tf.int32)


def pixel_grid(height: int, width: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`(H, W)` float32 row (y) and column (x) coordinates of the pixel centres, in pixels."""
    return tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")


def luminance(image: tf.Tensor) -> tf.Tensor:
    """`(H, W)` Rec. 709 luma of an `(H, W, 3)` image."""
    return tf.tensordot(image, tf.constant([0.2126, 0.7152, 0.0722]), axes=1)
