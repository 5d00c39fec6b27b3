"""Stateless randomness keyed by (seed, global example index), so any batch can be rebuilt from scratch.

Two kinds of keys: `example_seed` / `purpose_seed` give the shape-(2,) int64 seeds TF's `stateless_*` ops take;
`mix32` / `uniform_from_hash` turn integer keys into independent uniform numbers element-wise (the film grain
needs one per grain cell, far too many cells for per-call seeds).
"""
from __future__ import annotations

import tensorflow as tf

# One id per independent use of randomness inside an example; never renumber (it would change every batch).
PURPOSES = {
    "reference": 2, "labels": 3, "strengths": 4, "crop": 5, "reference_crop": 6, "flip": 7,
    "motion_angle": 8, "grain": 9, "mask": 10, "degradation": 11, "task": 12, "positive": 13, "negatives": 14,
}


def example_seed(seed: int | tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """The (2,) int64 seed of global example `index` under the run's `seed`."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5EED, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def purpose_seed(seed_pair: tf.Tensor, purpose: str) -> tf.Tensor:
    """An independent (2,) seed for one named use (`PURPOSES`) of an example's randomness."""
    return tf.random.experimental.stateless_fold_in(seed_pair, PURPOSES[purpose])


def mix32(x: tf.Tensor) -> tf.Tensor:
    """The 'lowbias32' integer finaliser (Wellons): a bijection on uint32 with good avalanche."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def uniform_from_hash(h: tf.Tensor) -> tf.Tensor:
    """A float32 in [0, 1) from the top 24 bits of a uint32 hash."""
    return tf.cast(tf.bitwise.right_shift(h, tf.constant(8, tf.uint32)), tf.float32) * (1.0 / (1 << 24))
