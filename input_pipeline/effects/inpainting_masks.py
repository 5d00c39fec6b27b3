"""Free-form inpainting masks after Yu et al. 2019 (DeepFill v2's brush strokes), optionally OR'ed with a box.

Per mask: 1 to `max_strokes` strokes; a stroke starts at a uniform point and walks `num_vertices` in
[min_vertices, max_vertices] steps of length ~ N(r, r/2) clipped to [0, 2r], r = |image diagonal| / 8, turning
by angles drawn around 2 pi / 5 (+- up to 2 pi / 15, alternately mirrored), each vertex clipped to the image;
the polyline is drawn with one width in [min_width, max_width] (12-40 px at 256 px, scaled with the crop) and
round joins. With `box_probability` a rectangle of sides in [crop/4, crop/2] is added to the hole.

Convention: 1 = keep, 0 = hole. Hole fraction over 1,000 masks at 256 px with the default config: mean 0.21,
std 0.10, min 0.008, max 0.52, 1st / 99th percentiles 0.02 / 0.43 (strokes alone: mean 0.15, max 0.39); the
same at 64 px. tests/test_effects.py checks mean in [0.17, 0.25], std in [0.06, 0.13], all in [0.005, 0.6].
"""
from __future__ import annotations

import math

import tensorflow as tf

MEAN_ANGLE = 2.0 * math.pi / 5.0
ANGLE_RANGE = 2.0 * math.pi / 15.0


def _segment_distance_sq(xs: tf.Tensor, ys: tf.Tensor, start: tf.Tensor, end: tf.Tensor) -> tf.Tensor:
    """Squared distance from points (xs, ys) `(P, 1)` to each of the `(S, 2)` segments start->end: `(P, S)`."""
    dx, dy = end[:, 0] - start[:, 0], end[:, 1] - start[:, 1]
    rel_x, rel_y = xs - start[:, 0], ys - start[:, 1]
    t = tf.clip_by_value((rel_x * dx + rel_y * dy) / tf.maximum(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    off_x, off_y = rel_x - t * dx, rel_y - t * dy
    return off_x * off_x + off_y * off_y


def free_form_mask(seed: tf.Tensor, size: int, *, min_vertices: int = 4, max_vertices: int = 11,
                   min_width: float = 12.0, max_width: float = 40.0, max_strokes: int = 3,
                   box_probability: float = 0.5) -> tf.Tensor:
    """`(size, size, 1)` float32 mask (1 keep, 0 hole) drawn from the (2,) stateless `seed`.

    `min_width` / `max_width` are in pixels of this `size` (the caller scales them from 256 px).
    """
    def uniform(shape, index, low=0.0, high=1.0):
        return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, index),
                                           minval=low, maxval=high)

    strokes, steps = max_strokes, max_vertices
    extent = float(size)
    average_radius = math.sqrt(2.0) * extent / 8.0
    num_strokes = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 0),
                                              minval=1, maxval=max_strokes + 1, dtype=tf.int32)
    num_vertices = tf.random.stateless_uniform([strokes], tf.random.experimental.stateless_fold_in(seed, 1),
                                               minval=min_vertices, maxval=max_vertices + 1, dtype=tf.int32)
    angle_min = MEAN_ANGLE - uniform([strokes, 1], 2, 0.0, ANGLE_RANGE)
    angle_max = MEAN_ANGLE + uniform([strokes, 1], 3, 0.0, ANGLE_RANGE)
    angles = angle_min + uniform([strokes, steps], 4) * (angle_max - angle_min)
    mirrored = tf.range(steps) % 2 == 0
    angles = tf.where(mirrored[None], 2.0 * math.pi - angles, angles)
    radii = tf.clip_by_value(
        average_radius + average_radius / 2.0 * tf.random.stateless_normal(
            [strokes, steps], tf.random.experimental.stateless_fold_in(seed, 5)), 0.0, 2.0 * average_radius)
    vertex = uniform([strokes, 2], 6, 0.0, extent)
    vertices = [vertex]
    for i in range(steps):  # each step is clipped to the image before the next, as in DeepFill v2
        step = tf.stack([radii[:, i] * tf.cos(angles[:, i]), radii[:, i] * tf.sin(angles[:, i])], axis=-1)
        vertex = tf.clip_by_value(vertex + step, 0.0, extent)
        vertices.append(vertex)
    vertices = tf.stack(vertices, axis=1)  # (strokes, steps + 1, 2) as (x, y)
    widths = uniform([strokes], 7, min_width, max_width)

    coords = tf.range(size, dtype=tf.float32) + 0.5
    ys, xs = tf.meshgrid(coords, coords, indexing="ij")
    starts = tf.reshape(vertices[:, :-1], [-1, 2])
    ends = tf.reshape(vertices[:, 1:], [-1, 2])
    step_index = tf.tile(tf.range(steps)[None], [strokes, 1])
    active = (step_index < num_vertices[:, None]) & (tf.range(strokes)[:, None] < num_strokes)
    half_width = tf.reshape(tf.tile(widths[:, None] / 2.0, [1, steps]), [-1])
    distance_sq = _segment_distance_sq(tf.reshape(xs, [-1, 1]), tf.reshape(ys, [-1, 1]), starts, ends)
    hit = (distance_sq <= (half_width * half_width)[None]) & tf.reshape(active, [-1])[None]
    hole = tf.reshape(tf.reduce_any(hit, axis=-1), [size, size])

    flips = uniform([2], 8)
    hole = tf.cond(flips[0] < 0.5, lambda: tf.reverse(hole, [1]), lambda: hole)
    hole = tf.cond(flips[1] < 0.5, lambda: tf.reverse(hole, [0]), lambda: hole)

    box_draw = uniform([5], 9)
    box_h = tf.cast(extent / 4 + box_draw[0] * extent / 4, tf.int32)
    box_w = tf.cast(extent / 4 + box_draw[1] * extent / 4, tf.int32)
    top = tf.cast(box_draw[2] * tf.cast(size - box_h, tf.float32), tf.int32)
    left = tf.cast(box_draw[3] * tf.cast(size - box_w, tf.float32), tf.int32)
    rows = tf.range(size)
    in_box = (((rows >= top) & (rows < top + box_h))[:, None] & ((rows >= left) & (rows < left + box_w))[None])
    hole = hole | (in_box & (box_draw[4] < box_probability))
    return 1.0 - tf.cast(hole, tf.float32)[..., None]
