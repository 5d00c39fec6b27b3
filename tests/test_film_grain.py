"""The training grain (`film_grain`, a Gaussian field) against the Boolean model it stands for.

Two references: the analytic covariance of the filtered Boolean model (film_grain.py's docstring), and a
high-sample Monte-Carlo rendering of the same model (`film_grain_monte_carlo`, N = 800, Newson's setting).

The Monte-Carlo rendering carries its own rendering noise (std up to 0.018 at N = 800), larger than the grain
itself at the small radii (std 0.0028 at r = 0.01). To compare grain with grain, the reference is rendered twice
with the same grains (one `seed`) and independent sampling points (two `jitter_seed`s): the rendering noise is
zero-mean given the grains and independent between the two, so the cross-covariance of the two renderings at
lag l estimates the grain's own covariance at lag l, without the noise.

Tolerances: each statistic's standard error is estimated from the data, from the spread over 12 blocks (3
channels x 4 quadrants of a 64 px patch, nearly independent as the grain decorrelates within ~2 px), and the
renderers must agree within 4 combined standard errors (a 4-sigma band: a false failure about once in 15 000
statistics) plus 2% of the analytic variance, which covers the field's approximations (film_grain.py: treating
the coverage covariance, 2 r <= 0.2 px wide, as a point mass under the 0.8 px filter, < 0.4%; the unit-spaced
filter sum, < 0.8%).
At r = 0.01 the grain variance (8e-6) is below the 800-sample reference's resolution (standard error ~1e-5), so
there the test only bounds the field's grain by what the reference allows; the analytic test covers it tightly.
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline.config import default_data_config
from input_pipeline.effects.film_grain import film_grain, film_grain_monte_carlo, grain_covariance_area

RADII = default_data_config().film_grain.radii
SIGMA = 0.8
LAGS = (0, 1, 2, 3)
SIZE = 64
_SEED = tf.constant([7, 8], tf.int64)


def analytic_covariance(grey: float, radius: float, lag: int) -> float:
    """K(u) exp(-l^2 / (4 sigma^2)) / (4 pi sigma^2): the filtered Boolean model's covariance at lag l."""
    area = float(grain_covariance_area(np.array(grey), radius))
    return area * math.exp(-lag ** 2 / (4 * SIGMA ** 2)) / (4 * math.pi * SIGMA ** 2)


def block_covariances(a: np.ndarray, b: np.ndarray, lag: int) -> np.ndarray:
    """Cross-covariance at `lag` (mean of the x and y lags) per block: 3 channels x 4 quadrants -> (12,)."""
    half = a.shape[0] // 2
    values = []
    for c in range(a.shape[-1]):
        for top in (0, half):
            for left in (0, half):
                x = a[top:top + half, left:left + half, c]
                y = b[top:top + half, left:left + half, c]
                x, y = x - x.mean(), y - y.mean()
                along_x = np.mean(x[:, :half - lag] * y[:, lag:])
                along_y = np.mean(x[:half - lag] * y[lag:])
                values.append(0.5 * (along_x + along_y))
    return np.array(values)


def block_means(a: np.ndarray) -> np.ndarray:
    half = a.shape[0] // 2
    return np.array([a[t:t + half, l:l + half, c].mean() for c in range(a.shape[-1]) for t in (0, half)
                     for l in (0, half)])


def mean_and_error(blocks: np.ndarray) -> tuple[float, float]:
    return float(blocks.mean()), float(blocks.std(ddof=1) / math.sqrt(blocks.size))


def field_realisations(image: tf.Tensor, radius: float, count: int) -> list[np.ndarray]:
    return [film_grain(image, tf.constant(radius), tf.random.experimental.stateless_fold_in(_SEED, k)).numpy()
            for k in range(count)]


@pytest.mark.parametrize("grey", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("radius", RADII)
def test_field_has_the_boolean_models_analytic_covariance(radius, grey):
    """16 realisations of 64 px x 3 channels: each lag's covariance within 5% of the analytic variance."""
    flat = tf.fill([SIZE, SIZE, 3], grey)
    outs = field_realisations(flat, radius, 16)
    level = round(grey * 255) / 255  # the renderer quantises to 8 bits, as Newson's code does
    assert abs(np.mean(outs) - level) < 1e-3
    variance = analytic_covariance(grey, radius, 0)
    for lag in LAGS:
        measured = np.mean([block_covariances(o, o, lag).mean() for o in outs])
        assert abs(measured - analytic_covariance(grey, radius, lag)) < 0.05 * variance, (lag, measured)


@pytest.mark.parametrize("grey,radius", [(0.5, r) for r in RADII] + [(0.2, 0.1), (0.8, 0.05)])
def test_field_agrees_with_an_800_sample_monte_carlo_rendering(grey, radius):
    flat = tf.fill([SIZE, SIZE, 3], grey)
    reference = [film_grain_monte_carlo(flat, tf.constant(radius), _SEED, monte_carlo_samples=800,
                                        jitter_seed=_SEED + k).numpy() for k in (1, 2)]
    outs = field_realisations(flat, radius, 4)
    slack = 0.02 * analytic_covariance(grey, radius, 0)

    ref_mean, ref_err = mean_and_error(0.5 * (block_means(reference[0]) + block_means(reference[1])))
    new_mean, new_err = mean_and_error(np.mean([block_means(o) for o in outs], axis=0))
    assert abs(new_mean - ref_mean) < 4 * math.hypot(ref_err, new_err), (new_mean, ref_mean, ref_err)

    for lag in LAGS:
        ref_cov, ref_err = mean_and_error(block_covariances(reference[0], reference[1], lag))
        new_cov, new_err = mean_and_error(np.mean([block_covariances(o, o, lag) for o in outs], axis=0))
        assert abs(new_cov - ref_cov) < 4 * math.hypot(ref_err, new_err) + slack, (lag, new_cov, ref_cov, ref_err)


def test_field_follows_the_grey_level_across_an_edge():
    """A 0.2 | 0.8 step: per-column mean and grain variance agree with the reference across the edge."""
    columns = np.where(np.arange(SIZE) < SIZE // 2, 0.2, 0.8).astype(np.float32)
    step = tf.constant(np.broadcast_to(columns[None, :, None], (SIZE, SIZE, 3)).copy())
    reference = [film_grain_monte_carlo(step, tf.constant(0.1), _SEED, monte_carlo_samples=800,
                                        jitter_seed=_SEED + k).numpy() for k in (1, 2)]
    outs = np.stack(field_realisations(step, 0.1, 8))
    window = slice(SIZE // 2 - 4, SIZE // 2 + 4)  # the edge and 4 columns either side
    # Per column: 64 rows x 3 channels; the standard errors come from the rows' spread (grain correlates over
    # ~2 rows, hence the factor 2 on the variance of the mean).
    ref_cols = 0.5 * (reference[0] + reference[1])[:, window]
    ref_mean = ref_cols.mean(axis=(0, 2))
    ref_err = np.sqrt(2 * ref_cols.var(axis=(0, 2)) / (SIZE * 3))
    new_mean = outs[:, :, window].mean(axis=(0, 1, 3))
    assert np.all(np.abs(new_mean - ref_mean) < 4 * ref_err + 1e-3), (new_mean, ref_mean, ref_err)

    centred = [r[:, window] - r[:, window].mean(axis=(0, 2), keepdims=True) for r in reference]
    ref_var = np.mean(centred[0] * centred[1], axis=(0, 2))
    ref_var_err = np.sqrt(2 * np.var(centred[0] * centred[1], axis=(0, 2)) / (SIZE * 3))
    new_var = outs[:, :, window].var(axis=(0, 1, 3))
    assert np.all(np.abs(new_var - ref_var) < 4 * ref_var_err + 2e-5), (new_var, ref_var, ref_var_err)
