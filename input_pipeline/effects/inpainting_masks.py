"""Free-form inpainting masks after Yu et al. 2019 (DeepFill v2's brush strokes), optionally OR'ed with a box.

Per mask: 1 to `max_strokes` strokes; a stroke starts at a uniform point and walks `num_vertices` in
[min_vertices, max_vertices] steps of length ~ N(r, r/2) clipped to [0, 2r], r = |image diagonal| / 8, turning
by angles drawn around 2 pi / 5 (+- up to 2 pi / 15, alternately mirrored), each vertex clipped to the image;
the polyline is drawn with one width in [min_width, max_width] (12-40 px at 256 px, scaled with the crop) and
round joins. With `box_probability` a rectangle of sides in [crop/4, crop/2] is added to the hole.

Convention: 1 = keep, 0 = hole. Hole fraction over 1,000 masks at 256 px with the default config: mean 0.21,
std 0.10, min 0.008, max 0.52, 1st / 99th percentiles 0.02 / 0.43 (strokes alone: mean 0.15, max 0.39); the
same at 64 px. tests/test_effects.py checks mean in [0.17, 0.25], std in [0.06, 0.13], all in [0.005, 0.6].

Rasterisation (`rasterise_segments`): a pixel is in the hole when its centre lies within half the width of an
active segment. Each active segment is tested only on the pixels of its bounding box grown by half its width
plus one pixel (outside it the distance exceeds the half width by over a pixel, far beyond rounding): at 256 px
~35k (segment, pixel) pairs on average instead of all 65536 pixels x 33 segments. The per-pair arithmetic is
that of testing every pixel against every segment, so the mask is bit-identical to it (tests/test_effects.py).
"""
from __future__ import annotations

import math

import tensorflow as tf

MEAN_ANGLE = 2.0 * math.pi / 5.0
ANGLE_RANGE = 2.0 * math.pi / 15.0


def _distance_sq(xs: tf.Tensor, ys: tf.Tensor, start_x: tf.Tensor, start_y: tf.Tensor, end_x: tf.Tensor,
                 end_y: tf.Tensor) -> tf.Tensor:
    """Squared distance from points (xs, ys) to segments (start_x, start_y)->(end_x, end_y), broadcasting."""
    dx, dy = end_x - start_x, end_y - start_y
    rel_x, rel_y = xs - start_x, ys - start_y
    t = tf.clip_by_value((rel_x * dx + rel_y * dy) / tf.maximum(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    off_x, off_y = rel_x - t * dx, rel_y - t * dy
    return off_x * off_x + off_y * off_y


def _segment_distance_sq(xs: tf.Tensor, ys: tf.Tensor, start: tf.Tensor, end: tf.Tensor) -> tf.Tensor:
    """Squared distance from points (xs, ys) `(P, 1)` to each of the `(S, 2)` segments start->end: `(P, S)`."""
    return _distance_sq(xs, ys, start[:, 0], start[:, 1], end[:, 0], end[:, 1])


def stroke_segments(seed: tf.Tensor, size: int, *, min_vertices: int = 4, max_vertices: int = 11,
                    min_width: float = 12.0, max_width: float = 40.0,
                    max_strokes: int = 3) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The strokes of `free_form_mask` as `max_strokes * max_vertices` segments: `(S, 2)` starts and ends as
    (x, y) pixels, `(S,)` half widths, and `(S,)` bool: whether the segment is drawn."""
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

    starts = tf.reshape(vertices[:, :-1], [-1, 2])
    ends = tf.reshape(vertices[:, 1:], [-1, 2])
    step_index = tf.tile(tf.range(steps)[None], [strokes, 1])
    active = (step_index < num_vertices[:, None]) & (tf.range(strokes)[:, None] < num_strokes)
    half_width = tf.reshape(tf.tile(widths[:, None] / 2.0, [1, steps]), [-1])
    return starts, ends, half_width, tf.reshape(active, [-1])


def rasterise_segments(starts: tf.Tensor, ends: tf.Tensor, half_width: tf.Tensor, active: tf.Tensor,
                       size: int) -> tf.Tensor:
    """`(size, size)` bool, true at the pixels whose centre (x + 0.5, y + 0.5) lies within `half_width` of an
    `active` segment; each active segment is tested on its grown bounding box only (module docstring).

    All the boxes' (segment, pixel) pairs are tested in one flat batch and OR'ed into the image by a segment max.
    """
    grow = half_width[:, None] + 1.0
    first = tf.clip_by_value(tf.floor(tf.minimum(starts, ends) - grow - 0.5), 0.0, size)
    last = tf.clip_by_value(tf.math.ceil(tf.maximum(starts, ends) + grow - 0.5) + 1.0, 0.0, size)
    extent = tf.maximum(last - first, 0.0)  # (S, 2) box sides (width, height); the box is [first, first + extent)
    count = tf.cast(tf.where(active, extent[:, 0] * extent[:, 1], 0.0), tf.int32)
    offset = tf.cumsum(count, exclusive=True)
    segment = tf.repeat(tf.range(tf.size(count)), count)  # one entry per (segment, box pixel) pair
    # One gather of the per-segment numbers a pair needs (the box corner and width are integers <= size).
    table = tf.stack([starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1], half_width, first[:, 0], first[:, 1],
                      extent[:, 0]], axis=1)
    start_x, start_y, end_x, end_y, pair_half_width, first_x, first_y, box_width = tf.unstack(
        tf.gather(table, segment), axis=1)
    local = tf.range(tf.size(segment)) - tf.gather(offset, segment)  # the pixel's index within its box
    width = tf.cast(box_width, tf.int32)
    col = tf.cast(first_x, tf.int32) + local % width
    row = tf.cast(first_y, tf.int32) + local // width
    distance_sq = _distance_sq(tf.cast(col, tf.float32) + 0.5, tf.cast(row, tf.float32) + 0.5, start_x, start_y,
                               end_x, end_y)
    hit = tf.cast(distance_sq <= pair_half_width * pair_half_width, tf.int32)
    # Pixels in no box get the segment max's identity (the lowest int32), hence false.
    return tf.reshape(tf.math.unsorted_segment_max(hit, row * size + col, size * size) > 0, [size, size])


def free_form_mask(seed: tf.Tensor, size: int, *, min_vertices: int = 4, max_vertices: int = 11,
                   min_width: float = 12.0, max_width: float = 40.0, max_strokes: int = 3,
                   box_probability: float = 0.5) -> tf.Tensor:
    """`(size, size, 1)` float32 mask (1 keep, 0 hole) drawn from the (2,) stateless `seed`.

    `min_width` / `max_width` are in pixels of this `size` (the caller scales them from 256 px).
    """
    segments = stroke_segments(seed, size, min_vertices=min_vertices, max_vertices=max_vertices,
                               min_width=min_width, max_width=max_width, max_strokes=max_strokes)
    return finish_mask(rasterise_segments(*segments, size), seed, size, box_probability=box_probability)


def finish_mask(hole: tf.Tensor, seed: tf.Tensor, size: int, *, box_probability: float = 0.5) -> tf.Tensor:
    """The strokes' `(size, size)` bool hole, randomly flipped and OR'ed with the box: the `free_form_mask`."""
    def uniform(shape, index):
        return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, index))

    extent = float(size)
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
