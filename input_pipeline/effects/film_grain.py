"""Film grain after Newson, Delon and Galerne 2017: the Boolean grain model, filtered as their renderer does.

The model, per colour channel (channels are independent, as Newson et al. do for colour): grains are discs of
radius r whose centres form a Poisson process with intensity, at a point of an input pixel of grey level u,

    lambda(u) = 1 / (pi r^2) * log(1 / (1 - u))          (so P(point covered) = 1 - exp(-lambda pi r^2) = u),

and the output pixel y is the Gaussian-filtered coverage indicator of the union Z of the grains,

    F(y) = integral G_sigma(x - y) 1[x in Z] dx,      sigma = filter_sigma (0.8 px).

Two renderers, both `(H, W, C)` in [0, 1] -> `(H, W, C)` in [0, 1], stateless in a (2,) seed:

`film_grain` (training) draws F as the Gaussian random field with F's exact mean and covariance. The mean is the
filtered image, E F = G_sigma * u (u piecewise constant on the pixels: `pixel_integrated_taps`). The covariance
of the coverage indicator at distance d is C_u(d) = (1 - u)^2 ((1 - u)^(-gamma(d) / (pi r^2)) - 1), gamma(d) the
area of the lens of two grains at distance d (zero beyond 2 r). As r <= 0.1 px is far below sigma, C_u acts on
the filter as a point mass of weight K(u) = r^2 (1 - u)^2 J(u) (J independent of r: `grain_covariance_area`), so

    Cov F(y, y + l) = K(u) (G_sigma * G_sigma)(l) = K(u) exp(-|l|^2 / (4 sigma^2)) / (4 pi sigma^2),

which is what filtering white noise of variance K(u_p) per pixel p with the sampled Gaussian gives (by Poisson
summation the unit-spaced sum matches the integral to 2 exp(-pi^2 sigma^2) = 0.4% per axis). Neglecting C_u's
width (second moment m2 <= 0.0098 px^2 at r = 0.1) lowers the lag-0 covariance by m2 / (4 sigma^2) < 0.4%.
F is Gaussian in the limit of many grains under the filter (4 pi sigma^2 lambda = 2.6 log(1 / (1 - u)) / r^2
grains: ~180 at u = 0.5, r = 0.1); its skew near u = 0 or 1 at the largest radii is the one statistic not
reproduced. Cost: two 7-tap separable filters and one normal draw per
pixel, as depthwise convolutions on the (H, W, C) image (`convolution.separable_valid`) with the margin replicated
by concatenation: 2.8 ms per 64 px and 11.7 ms per 256 px RGB example on the idle 2-core box
(`benchmarks/input_pipeline.py --effects`, 2026-12-02, load 0.74; benchmarks/RESULTS.md), the same output to
float rounding as the former shifted-slice form (tests/test_effects.py).

Why not pre-rendered plates: the grain depends on the grey level per pixel, so plates would be needed per
(radius, grey level) — 5 x 256 plates of >= 256^2 px rendered at 800 samples (hours at ~1.3 s per 64^2 px) — and
sampling two plates across a grey-level edge needs a blend that changes the variance; the analytic field has
neither problem and its rendering noise is zero (the N -> infinity limit of Newson's estimator).
`monte_carlo_samples` N > 0 adds back the per-pixel rendering noise of Newson's code with N samples, to mimic
data made with it.

`film_grain_monte_carlo` (the reference: agreement tests, the benchmark) estimates F by stratified Monte Carlo.
We estimate the integral with s x s jittered points per pixel (one uniform point in each cell of an s x s grid)
weighted by the Gaussian at their grid positions, sum_p w(p - y) 1[p in Z]: stratified Monte Carlo with the same
expectation as Newson's N random offsets per pixel, 1/N sum_k 1[y + xi_k in Z], xi_k ~ N(0, sigma^2 I), whose
points are shared by neighbouring output pixels, so each point serves ~4 pi sigma^2 pixels instead of one. The
jitter matters: pairs of points closer than 2 r occur as often as in the random-offset estimator, which is where
the grain texture's dependence on r comes from (a regular grid coarser than 2 r would render every radius
alike). s is chosen so the estimator's noise matches N random samples, 1 / sum w^2 ~= 4 pi sigma^2 s^2 >= N:
N = 800 (the reference code) gives s = 10, N = 32 gives s = 2. One difference remains: the Monte-Carlo noise of
neighbouring output pixels is correlated over ~sigma (as the grain itself is), where Newson's is independent.

Coverage of a point is evaluated exactly as in Newson's pixel-wise algorithm: the plane is cut into square
cells of side delta = 1 / floor(1 / (2 r)) >= 2 r (aligned with the pixels, so each cell takes u from the 8-bit
grey level of the pixel it lies in); a cell's grain count ~ Poisson(lambda(u) delta^2) (inverted through a
per-grey-level table) and its grain centres are uniform, all drawn from a hash of (example seed, channel,
cell), so every query of a cell sees the same grains; since delta >= 2 r, only the point's own cell and its
neighbours on the nearer side (a 2 x 2 block) can hold a grain within r of it. u is scaled by 255 / 255.1
(Newson's epsilon grey level) so that lambda stays finite on white; the output is scaled back, so the mean
intensity is preserved.

Rendering noise of the reference: variance at most u (1 - u) / N on top of the grain (N = 800: std <= 0.018;
N = 32: std <= 0.088), while the grain itself has std sqrt(K(u) / (4 pi sigma^2)) = 0.0028 / 0.014 / 0.028 at
u = 0.5 and r = 0.01 / 0.05 / 0.1: even 800 samples bury the smallest radii in rendering noise, and cost ~1.3 s
per 64 px example on one core (N = 32: ~27 ms).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

from input_pipeline.effects.convolution import separable_valid
from input_pipeline.effects.unsharp import gaussian_kernel_1d
from input_pipeline.randomness import mix32, uniform_from_hash

GREY_EPSILON = 0.1 / 255.0  # Newson's EPSILON_GREY_LEVEL on the [0, 1] scale
MAX_GRAINS = 40  # cell means stay <= 4 * 1.44 * 7.84 / pi = 14.4 (delta <= 2.4 r): P(count > 40) < 1e-8
POISSON_BINS = 1024
_ELEMENTS_PER_CHUNK = 1 << 21  # bounds the (channels, rows, columns, 4) point-cell working set per band


def cells_per_pixel(radius: tf.Tensor) -> tf.Tensor:
    """n = floor(1 / (2 r)): cells of side delta = 1 / n >= 2 r tile each pixel n x n (int32)."""
    return tf.maximum(tf.cast(tf.floor(0.5 / radius + 1e-6), tf.int32), 1)


def poisson_tables(radius: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per 8-bit grey level: the Poisson CDF of a cell's grain count, and its inverse on a grid of uniforms.

    Returns `cdf` (256, MAX_GRAINS + 1) and `count_at_bin` (256, POISSON_BINS) int32, the count whose CDF
    interval holds the left edge of each of POISSON_BINS equal bins of [0, 1).
    """
    delta = 1.0 / tf.cast(cells_per_pixel(radius), tf.float32)
    u = tf.range(256, dtype=tf.float32) / 255.0 / (1.0 + GREY_EPSILON)
    mean = tf.math.log(1.0 / (1.0 - u)) / (math.pi * radius ** 2) * delta ** 2
    pmf = [tf.exp(-mean)]
    for j in range(1, MAX_GRAINS + 1):
        pmf.append(pmf[-1] * mean / j)
    cdf = tf.cumsum(tf.stack(pmf, axis=-1), axis=-1)
    edges = tf.tile(tf.range(POISSON_BINS, dtype=tf.float32)[None] / POISSON_BINS, [256, 1])
    count_at_bin = tf.searchsorted(cdf, edges, side="right")
    return cdf, tf.minimum(count_at_bin, MAX_GRAINS)


def _cell_hash(channel_hash: tf.Tensor, cell_x: tf.Tensor, cell_y: tf.Tensor) -> tf.Tensor:
    """One uint32 per (channel, cell): a single mixing round over a linear combination of the indices."""
    key = tf.cast(cell_x, tf.uint32) * tf.constant(0x9E3779B1, tf.uint32) + tf.cast(cell_y, tf.uint32) * tf.constant(
        0x85EBCA77, tf.uint32)
    return mix32(channel_hash + key)


def _slot_uniform(cell_hash: tf.Tensor, slot: tf.Tensor) -> tf.Tensor:
    """The uniform number `slot` of a cell (0: its grain count; 1 + 2k, 2 + 2k: grain k's position)."""
    return uniform_from_hash(mix32(cell_hash + tf.cast(slot, tf.uint32) * tf.constant(0xC2B2AE3D, tf.uint32)))


def _coverage(levels: tf.Tensor, points_x: tf.Tensor, points_y: tf.Tensor, radius: tf.Tensor,
              channel_hash: tf.Tensor, cdf: tf.Tensor, count_at_bin: tf.Tensor) -> tf.Tensor:
    """Boolean-model coverage of the points `(S, H, W)` (input-pixel units) for each channel.

    `levels` (C, H, W) int32 8-bit grey levels; `channel_hash` (C,) uint32 selects the grain realisation.
    Returns `(C, S, H, W)` bool.
    """
    channels, height, width = levels.shape
    n = cells_per_pixel(radius)
    n_f = tf.cast(n, tf.float32)
    delta = 1.0 / n_f
    # Each point's own cell and, per axis, the neighbour on its nearer side: delta >= 2 r means no other cell
    # holds a grain centre within r of the point. (1, S, H, W, 4) cell indices.
    scaled_x, scaled_y = points_x * n_f, points_y * n_f
    own_x, own_y = tf.floor(scaled_x), tf.floor(scaled_y)
    side_x = tf.where(scaled_x - own_x < 0.5, -1.0, 1.0)
    side_y = tf.where(scaled_y - own_y < 0.5, -1.0, 1.0)
    corner = tf.constant([0.0, 1.0, 0.0, 1.0]), tf.constant([0.0, 0.0, 1.0, 1.0])
    cell_x = tf.cast(own_x[..., None] + side_x[..., None] * corner[0], tf.int32)[None]
    cell_y = tf.cast(own_y[..., None] + side_y[..., None] * corner[1], tf.int32)[None]
    channel = tf.range(channels)[:, None, None, None, None]
    pixel_x = tf.clip_by_value(tf.math.floordiv(cell_x, n), 0, width - 1)
    pixel_y = tf.clip_by_value(tf.math.floordiv(cell_y, n), 0, height - 1)
    level = tf.gather(tf.reshape(levels, [-1]), (channel * height + pixel_y) * width + pixel_x)  # (C, S, H, W, 4)
    cell_hash = _cell_hash(tf.reshape(channel_hash, [-1, 1, 1, 1, 1]), cell_x, cell_y)

    # Poisson count: the table gives the count at the uniform's bin edge; one comparison with the next CDF
    # value finishes the inversion (exact unless two CDF steps share one bin, a < 1e-3 tail event).
    count_u = _slot_uniform(cell_hash, 0)
    bin_index = tf.cast(count_u * POISSON_BINS, tf.int32)
    count = tf.gather(tf.reshape(count_at_bin, [-1]), level * POISSON_BINS + bin_index)
    next_cdf = tf.gather(tf.reshape(cdf, [-1]), level * (MAX_GRAINS + 1) + count)
    count = tf.minimum(count + tf.cast(count_u > next_cdf, tf.int32), MAX_GRAINS)

    # Only the existing grains are tested: one row per (channel, point, neighbour cell, grain rank).
    shape = tf.shape(count)
    flat_count = tf.reshape(count, [-1])
    starts = tf.cumsum(flat_count, exclusive=True)
    num_grains = starts[-1] + flat_count[-1]
    # pair of grain g = (number of pairs starting at or before g) - 1; empty pairs share the next start.
    starts_at = tf.math.unsorted_segment_sum(tf.ones_like(flat_count), starts, num_grains + 1)[:num_grains]
    pair = tf.cumsum(starts_at) - 1
    rank = tf.range(num_grains) - tf.gather(starts, pair)
    spatial_pair = pair % tf.size(cell_x)  # the cell geometry is shared by the channels
    corner_x = tf.gather(tf.reshape(tf.cast(cell_x, tf.float32) * delta - points_x[..., None], [-1]), spatial_pair)
    corner_y = tf.gather(tf.reshape(tf.cast(cell_y, tf.float32) * delta - points_y[..., None], [-1]), spatial_pair)
    grain_hash = tf.gather(tf.reshape(cell_hash, [-1]), pair)
    offset_x = corner_x + _slot_uniform(grain_hash, 1 + 2 * rank) * delta
    offset_y = corner_y + _slot_uniform(grain_hash, 2 + 2 * rank) * delta
    inside = offset_x * offset_x + offset_y * offset_y < radius * radius
    hits = tf.math.unsorted_segment_max(tf.cast(inside, tf.int32), pair // 4, tf.reduce_prod(shape[:-1]))
    return tf.reshape(hits > 0, shape[:-1])


def points_per_pixel_side(monte_carlo_samples: int, filter_sigma: float) -> int:
    """s such that an s x s grid of points per pixel under the Gaussian weights matches N random samples."""
    return max(1, math.ceil(math.sqrt(monte_carlo_samples / (4.0 * math.pi * filter_sigma ** 2))))


def filter_taps(points_per_side: int, filter_sigma: float) -> tuple[tf.Tensor, int]:
    """1-D normalised Gaussian weights of the fine points around one output pixel, and the margin in pixels.

    The taps cover pixels [-margin, margin] around the output pixel, `points_per_side` points each, at the
    points' offsets from the pixel centre.
    """
    margin = math.ceil(3.0 * filter_sigma)
    t = tf.range((2 * margin + 1) * points_per_side, dtype=tf.float32)
    offset = -margin + (t + 0.5) / points_per_side - 0.5
    taps = tf.exp(-0.5 * (offset / filter_sigma) ** 2)
    return taps / tf.reduce_sum(taps), margin



@functools.lru_cache(maxsize=None)
def _amplitude_table() -> np.ndarray:
    """A(u) = (1 - u) sqrt(J(u)) per 8-bit grey level (256,), times (1 + GREY_EPSILON) (the output scale).

    J(u) = int_0^2 ((1 - u)^(-g(t)) - 1) 2 pi t dt, g(t) = lens area of two unit discs at distance t / pi, by
    the midpoint rule on 4096 points (relative error < 1e-6; the integrand is smooth on [0, 2]).
    """
    u = np.arange(256) / 255.0 / (1.0 + GREY_EPSILON)
    t = (np.arange(4096) + 0.5) * (2.0 / 4096)
    lens = (2.0 * np.arccos(t / 2.0) - t / 2.0 * np.sqrt(4.0 - t * t)) / np.pi
    integrand = np.expm1(-np.log1p(-u)[:, None] * lens[None]) * 2.0 * np.pi * t
    j = integrand.sum(axis=1) * (2.0 / 4096)
    return ((1.0 - u) * np.sqrt(j) * (1.0 + GREY_EPSILON)).astype(np.float32)


def grain_covariance_area(grey: np.ndarray, radius: float) -> np.ndarray:
    """K(u) = int C_u(d) d^2 d (pixels^2): the integral of the coverage covariance of grey levels in [0, 1].

    The output grain's covariance at lag l is K(u) (G_sigma * G_sigma)(l) = K(u) exp(-|l|^2 / (4 sigma^2)) /
    (4 pi sigma^2) up to the O((r / sigma)^2) width of C_u (see the module docstring).
    """
    levels = np.clip(np.round(np.asarray(grey) * 255.0), 0, 255).astype(np.int64)
    return (radius * _amplitude_table()[levels]) ** 2


def pixel_integrated_taps(sigma: float, margin: int) -> tf.Tensor:
    """1-D weights of pixels -margin..margin in the Gaussian filter of a piecewise-constant image (sum 1)."""
    edges = (np.arange(-margin, margin + 2) - 0.5) / (sigma * math.sqrt(2.0))
    cdf = 0.5 * (1.0 + np.array([math.erf(e) for e in edges]))
    taps = np.diff(cdf)
    return tf.constant(taps / taps.sum(), tf.float32)


def _replicate_edges(image: tf.Tensor, margin: int) -> tf.Tensor:
    """`(H, W, C)` -> `(H + 2 margin, W + 2 margin, C)`, the border pixels repeated outwards."""
    height, width, channels = image.shape
    image = tf.concat([tf.broadcast_to(image[:1], [margin, width, channels]), image,
                       tf.broadcast_to(image[-1:], [margin, width, channels])], axis=0)
    return tf.concat([tf.broadcast_to(image[:, :1], [height + 2 * margin, margin, channels]), image,
                      tf.broadcast_to(image[:, -1:], [height + 2 * margin, margin, channels])], axis=1)


def film_grain(image: tf.Tensor, radius: tf.Tensor, seed: tf.Tensor, *, filter_sigma: float = 0.8,
               monte_carlo_samples: int = 0) -> tf.Tensor:
    """`(H, W, C)` image in [0, 1] rendered as film grain of `radius` (input pixels, in (0, 0.1]).

    The Gaussian field with the Boolean model's mean and covariance (module docstring). `seed` is a (2,)
    stateless seed: the output is a pure function of (image, radius, seed). `monte_carlo_samples` N > 0 adds
    the rendering noise of Newson's code with N samples (independent per pixel, variance (m (1 - m) - var) / N);
    0 renders the N -> infinity limit. The result is in [0, 1]; a radius of 0 returns the image unchanged.
    """
    height, width, channels = image.shape
    margin = math.ceil(3.0 * filter_sigma)
    mean_taps = pixel_integrated_taps(filter_sigma, margin)
    noise_taps = gaussian_kernel_1d(filter_sigma)  # radius ceil(3 sigma) = margin
    amplitude = tf.constant(_amplitude_table())
    radius = tf.cast(radius, tf.float32)

    def render():
        levels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.int32)
        # Edge-replicated margin (as the reference's clipped pixel lookup): grains beyond the border are drawn
        # from the border pixels, so border pixels carry the same grain variance as interior ones.
        padded = _replicate_edges(levels, margin)  # (H + 2m, W + 2m, C)
        # The normals are drawn channel-major, (C, H + 2m, W + 2m), as they always were: the same seed gives the
        # same grain.
        white = tf.transpose(tf.random.stateless_normal([channels, height + 2 * margin, width + 2 * margin], seed),
                             [1, 2, 0])
        mean = separable_valid(tf.cast(padded, tf.float32) / 255.0, mean_taps)
        grain = separable_valid(radius * tf.gather(amplitude, padded) * white, noise_taps)
        out = mean + grain
        if monte_carlo_samples:
            # Newson's N random offsets per pixel: given the grains, a mean of N Bernoulli(F(y)) draws, whose
            # variance averages to (u (1 - u) - Var F) / N, independent from pixel to pixel.
            grain_var = tf.square(radius * tf.gather(amplitude, levels)) * tf.reduce_sum(tf.square(noise_taps)) ** 2
            render_var = tf.nn.relu(mean * (1.0 - mean) - grain_var) / monte_carlo_samples
            out += tf.sqrt(render_var) * tf.transpose(tf.random.stateless_normal(
                [channels, height, width], tf.random.experimental.stateless_fold_in(seed, 1)), [1, 2, 0])
        return tf.clip_by_value(out, 0.0, 1.0)

    return tf.cond(radius > 0, render, lambda: image)

def film_grain_monte_carlo(image: tf.Tensor, radius: tf.Tensor, seed: tf.Tensor, *, filter_sigma: float = 0.8,
                           monte_carlo_samples: int = 800, jitter_seed: tf.Tensor | None = None) -> tf.Tensor:
    """The Monte-Carlo reference: `(H, W, C)` image in [0, 1] as film grain of `radius` (input pixels, (0, 0.1]).

    `seed` (2,) draws the grains and, unless `jitter_seed` (2,) is given, the sampling points: two renderings
    with one `seed` and different `jitter_seed`s see the same grains with independent rendering noise (what the
    agreement test uses to separate the two). The result is in [0, 1]; a radius of 0 returns the image unchanged.
    """
    jitter_seed = seed if jitter_seed is None else jitter_seed
    height, width, channels = image.shape
    side = points_per_pixel_side(monte_carlo_samples, filter_sigma)
    taps, margin = filter_taps(side, filter_sigma)
    channel_hash = tf.cast(tf.random.stateless_uniform([channels], seed, minval=0, maxval=1 << 32, dtype=tf.int64),
                           tf.uint32)
    fine_height, fine_width = (height + 2 * margin) * side, (width + 2 * margin) * side
    fine_x = (tf.range(fine_width, dtype=tf.float32) + 0.5) / side - margin
    fine_y = (tf.range(fine_height, dtype=tf.float32) + 0.5) / side - margin
    rows_per_band = max(1, _ELEMENTS_PER_CHUNK // (fine_width * channels * 4))
    radius = tf.cast(radius, tf.float32)

    def render():
        levels = tf.cast(tf.round(tf.clip_by_value(tf.transpose(image, [2, 0, 1]), 0.0, 1.0) * 255.0), tf.int32)
        cdf, count_at_bin = poisson_tables(radius)
        bands = []
        for top in range(0, fine_height, rows_per_band):
            band_y, band_x = tf.meshgrid(fine_y[top:top + rows_per_band], fine_x, indexing="ij")
            band_seed = tf.random.experimental.stateless_fold_in(jitter_seed, 1 + top)
            jitter = (tf.random.stateless_uniform(tf.concat([[2], tf.shape(band_x)], 0), band_seed) - 0.5) / side
            covered = _coverage(levels, (band_x + jitter[0])[None], (band_y + jitter[1])[None], radius,
                                channel_hash, cdf, count_at_bin)
            bands.append(tf.cast(covered[:, 0], tf.float32))
        coverage = tf.concat(bands, axis=1)[..., None]  # (C, fine_height, fine_width, 1)
        kernel_size = int(taps.shape[0])
        filtered = tf.nn.conv2d(coverage, tf.reshape(taps, [kernel_size, 1, 1, 1]), [1, side, 1, 1], "VALID")
        filtered = tf.nn.conv2d(filtered, tf.reshape(taps, [1, kernel_size, 1, 1]), [1, 1, side, 1], "VALID")
        return tf.clip_by_value(tf.transpose(filtered[..., 0], [1, 2, 0]) * (1.0 + GREY_EPSILON), 0.0, 1.0)

    return tf.cond(radius > 0, render, lambda: image)
