"""Each compositing effect against an independent reference (NumPy / SciPy / Pillow) or its defining property."""
import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import tensorflow as tf
from PIL import Image, ImageFilter

from input_pipeline.effects import former
from input_pipeline.effects.colour_transfer import colour_transfer, lab_to_rgb, match_statistics, rgb_to_lab
from input_pipeline.effects.film_grain import (film_grain, film_grain_monte_carlo, filter_taps, grain_covariance_area,
                                              points_per_pixel_side)
from input_pipeline.effects.inpainting_masks import free_form_mask, rasterise_segments, stroke_segments
from input_pipeline.effects.motion_blur import motion_blur, motion_blur_kernel
from input_pipeline.effects.unsharp import gaussian_blur, unsharp_combine, unsharp_mask


@pytest.fixture(scope="module")
def photo():
    """A 48 x 48 crop of the astronaut photo, float32 in [0, 1]."""
    return skimage.data.astronaut()[180:228, 200:248].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def reference_photo():
    return skimage.data.coffee()[150:198, 300:348].astype(np.float32) / 255.0


# --- motion blur ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length,angle", [(1.0, 0.3), (5.0, 0.0), (8.5, 1.1), (15.0, 2.9)])
def test_motion_kernel_sums_to_one(length, angle):
    kernel = motion_blur_kernel(tf.constant(length), tf.constant(angle), 15).numpy()
    assert kernel.min() >= 0.0
    np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-6)


def test_horizontal_motion_kernel_is_a_centred_segment():
    kernel = motion_blur_kernel(tf.constant(5.0), tf.constant(0.0), 7).numpy()
    expected = np.zeros((7, 7), np.float32)
    expected[3, 1:6] = 0.2
    np.testing.assert_allclose(kernel, expected, atol=1e-6)


def test_zero_blur_is_identity(photo):
    out = motion_blur(tf.constant(photo), tf.constant(0.0), tf.constant(0.7), max_length=11.0).numpy()
    np.testing.assert_array_equal(out, photo)


def test_motion_blur_spreads_a_point_into_the_kernel():
    image = np.zeros((21, 21, 3), np.float32)
    image[10, 10] = 1.0
    out = motion_blur(tf.constant(image), tf.constant(1.0), tf.constant(0.5), max_length=9.0).numpy()
    kernel = motion_blur_kernel(tf.constant(9.0), tf.constant(0.5), 9).numpy()
    np.testing.assert_allclose(out[6:15, 6:15, 0], kernel[::-1, ::-1], atol=1e-6)


@pytest.mark.parametrize("shape,max_length", [((64, 64, 3), 21.0), ((37, 52, 3), 9.0), ((30, 30, 1), 4.0)])
def test_motion_blur_equals_the_full_kernel_convolution(shape, max_length):
    """The cropped depthwise convolution is the former conv2d with the whole kernel_size^2 kernel."""
    rng = np.random.default_rng(5)
    image = tf.constant(rng.uniform(size=shape).astype(np.float32))
    angles = [0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4, np.pi, 2.0, 4.0] + rng.uniform(0, 2 * np.pi, 5).tolist()
    for angle in angles:
        for beta in (0.0, 0.04, 0.37, 0.8, 1.0):
            args = (tf.constant(beta), tf.constant(angle, tf.float32), max_length)
            np.testing.assert_allclose(motion_blur(image, *args).numpy(), former.motion_blur(image, *args).numpy(),
                                       atol=1e-6, err_msg=f"{angle=} {beta=}")


# --- unsharp masking -----------------------------------------------------------------------------------------

def _numpy_unsharp(image, amount, threshold, sigma):
    radius = int(np.ceil(3 * sigma))
    blurred = scipy.ndimage.gaussian_filter(image.astype(np.float64), sigma=(sigma, sigma, 0), mode="mirror",
                                            truncate=radius / sigma)
    detail = image - blurred
    return np.clip(np.where(np.abs(detail) > threshold, image + amount * detail, image), 0.0, 1.0)


@pytest.mark.parametrize("amount,threshold", [(1.0, 0.0), (2.5, 0.03), (3.0, 0.1)])
def test_unsharp_matches_numpy_reference(photo, amount, threshold):
    out = unsharp_mask(tf.constant(photo), tf.constant(amount), tf.constant(threshold), blur_sigma=1.0).numpy()
    np.testing.assert_allclose(out, _numpy_unsharp(photo, amount, threshold, 1.0), atol=2e-5)


@pytest.mark.parametrize("percent,threshold", [(150, 0), (200, 4), (300, 12)])
def test_unsharp_threshold_follows_pillow(photo, percent, threshold):
    """Pillow's UnsharpMask: pixels with |x - blur(x)| <= threshold (uint8 units) stay unchanged."""
    pil = Image.fromarray((photo * 255).round().astype(np.uint8))
    blurred = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=2)), np.float32)
    expected = np.asarray(pil.filter(ImageFilter.UnsharpMask(radius=2, percent=percent, threshold=threshold)),
                          np.float32)
    x = np.asarray(pil, np.float32)
    ours = unsharp_combine(tf.constant(x / 255), tf.constant(blurred / 255), tf.constant(percent / 100),
                           tf.constant(threshold / 255 + 1e-6)).numpy() * 255
    untouched = np.abs(x - blurred) <= threshold
    assert untouched.any() and (~untouched).any()
    np.testing.assert_array_equal(expected[untouched], x[untouched])
    np.testing.assert_array_equal(np.round(ours)[untouched], x[untouched])
    assert np.abs(np.round(ours) - expected).max() <= 1.0


@pytest.mark.parametrize("sigma,shape", [(0.5, (40, 40, 3)), (1.0, (64, 48, 3)), (2.0, (33, 30, 1))])
def test_gaussian_blur_equals_convolution_by_rows_then_columns(sigma, shape):
    """The depthwise separable blur is the former convolve_reflect with k x 1, then 1 x k taps."""
    image = tf.constant(np.random.default_rng(6).uniform(size=shape).astype(np.float32))
    np.testing.assert_allclose(gaussian_blur(image, sigma).numpy(), former.gaussian_blur(image, sigma).numpy(),
                               atol=1e-6)


@pytest.mark.parametrize("amount,threshold", [(1.0, 0.0), (2.5, 0.03), (3.0, 0.1)])
def test_unsharp_equals_the_former_formulation(photo, amount, threshold):
    """The 0 / 1 threshold factor is bit for bit tf.where(|detail| > mu, x + lambda detail, x); with the new blur
    the whole effect agrees except where |detail| is within rounding of mu (the select may flip there)."""
    image, amount, threshold = tf.constant(photo), tf.constant(amount), tf.constant(threshold)
    blurred = former.gaussian_blur(image, 1.0)
    detail = image - blurred
    select = tf.clip_by_value(tf.where(tf.abs(detail) > threshold, image + amount * detail, image), 0.0, 1.0)
    np.testing.assert_array_equal(unsharp_combine(image, blurred, amount, threshold).numpy(), select.numpy())
    away = np.abs(np.abs(detail.numpy()) - threshold.numpy()) > 1e-5
    np.testing.assert_allclose(unsharp_mask(image, amount, threshold, 1.0).numpy()[away],
                               former.unsharp_mask(image, amount, threshold, 1.0).numpy()[away], atol=1e-5)


def test_gaussian_blur_keeps_flat_images():
    flat = np.full((20, 20, 3), 0.4, np.float32)
    np.testing.assert_allclose(gaussian_blur(tf.constant(flat), 1.5).numpy(), flat, atol=1e-6)


# --- Reinhard colour transfer --------------------------------------------------------------------------------

# The paper's matrices (Reinhard et al. 2001, eqs. 1-6), written out independently of the module. Its printed
# LMS -> RGB matrix is not quite the inverse of RGB -> LMS (row 3 is off: B @ A differs from I by 7e-3), so
# the reference inverts the forward matrix, as the module does; the printed one is checked to be close.
_RGB2LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_PRINTED_LMS2RGB = np.array([[4.4679, -3.5873, 0.1193], [-1.2186, 2.3809, -0.1624], [0.0497, -0.2439, 1.2045]])
_LMS2RGB = np.linalg.inv(_RGB2LMS)
_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])
_FROM_LAB = np.array([[1, 1, 1], [1, 1, -1], [1, -2, 0]]) @ np.diag([np.sqrt(3) / 3, np.sqrt(6) / 6, np.sqrt(2) / 2])


def _numpy_reinhard(source, reference):
    def to_lab(rgb):
        return np.log10(np.maximum(rgb.astype(np.float64) @ _RGB2LMS.T, 1e-4)) @ _TO_LAB.T

    src, ref = to_lab(source), to_lab(reference)
    out = (src - src.mean((0, 1))) * ref.std((0, 1)) / src.std((0, 1)) + ref.mean((0, 1))
    return np.clip((10.0 ** (out @ _FROM_LAB.T)) @ _LMS2RGB.T, 0.0, 1.0)


def test_reinhard_matches_numpy_reference(photo, reference_photo):
    np.testing.assert_allclose(_PRINTED_LMS2RGB, _LMS2RGB, atol=0.02)
    out = colour_transfer(tf.constant(photo), tf.constant(reference_photo)).numpy()
    np.testing.assert_allclose(out, _numpy_reinhard(photo, reference_photo), atol=1e-4)


def test_reinhard_output_has_reference_lab_statistics(photo, reference_photo):
    """Before the final clip, the output's per-channel l-alpha-beta mean and std are the reference's."""
    reference_lab = rgb_to_lab(tf.constant(reference_photo)).numpy()
    unclipped = lab_to_rgb(match_statistics(rgb_to_lab(tf.constant(photo)), tf.constant(reference_lab)))
    out_lab = rgb_to_lab(unclipped).numpy()
    np.testing.assert_allclose(out_lab.mean((0, 1)), reference_lab.mean((0, 1)), atol=2e-4)
    np.testing.assert_allclose(out_lab.std((0, 1)), reference_lab.std((0, 1)), rtol=2e-3, atol=1e-5)


def test_reinhard_with_itself_is_identity(photo):
    out = colour_transfer(tf.constant(photo), tf.constant(photo)).numpy()
    np.testing.assert_allclose(out, photo, atol=3e-4)


def test_colour_transfer_equals_the_einsum_formulation(photo, reference_photo):
    """Matmuls, ln / exp and the match folded into the inverse matrix change only the rounding."""
    rng = np.random.default_rng(7)
    pairs = [(photo, reference_photo), (reference_photo, photo), (photo, photo)]
    pairs += [(rng.uniform(size=(40, 56, 3)).astype(np.float32) ** 3, rng.uniform(size=(32, 32, 3)).astype(np.float32))]
    flat = photo.copy()
    flat[..., 1] = 0.3
    pairs += [(flat, reference_photo)]
    # (A flat l-alpha-beta channel, e.g. a black source, is ill-conditioned in both forms: its std is rounding
    # noise, so scale = ref_std / std amplifies rounding either way.)
    for source, reference in pairs:
        source, reference = tf.constant(source), tf.constant(reference)
        np.testing.assert_allclose(rgb_to_lab(source).numpy(), former.rgb_to_lab(source).numpy(), atol=1e-5)
        np.testing.assert_allclose(colour_transfer(source, reference).numpy(),
                                   former.colour_transfer(source, reference).numpy(), atol=1e-5)


# --- film grain ----------------------------------------------------------------------------------------------

_SEED = tf.constant([3, 4], tf.int64)
_RENDERERS = {"field": film_grain, "monte_carlo": film_grain_monte_carlo}


@pytest.mark.parametrize("shape", [(48, 48, 3), (33, 50, 3), (20, 20, 1)])
@pytest.mark.parametrize("samples", [0, 32])
def test_grain_equals_the_sliced_formulation(photo, shape, samples):
    """Depthwise filters on (H, W, C) and the margin by concatenation: the same grain for the same seed."""
    image = tf.constant(np.resize(photo, shape))
    for radius in (0.01, 0.05, 0.1):
        args = (image, tf.constant(radius), _SEED)
        np.testing.assert_allclose(film_grain(*args, monte_carlo_samples=samples).numpy(),
                                   former.film_grain(*args, monte_carlo_samples=samples).numpy(), atol=1e-5)


@pytest.mark.parametrize("grey", [0.2, 0.5, 0.8])
def test_grain_preserves_mean_on_flat_patches(grey):
    flat = tf.constant(np.full((32, 32, 3), grey, np.float32))
    out = film_grain(flat, tf.constant(0.05), _SEED).numpy()
    assert abs(out.mean() - grey) < 0.005
    # It is grain, not the input: the Boolean model's std (film_grain.py), within the estimate's spread.
    expected_std = np.sqrt(grain_covariance_area(np.array(grey), 0.05) / (4 * np.pi * 0.8 ** 2))
    np.testing.assert_allclose(out.std(), expected_std, rtol=0.2)
    reference = film_grain_monte_carlo(flat, tf.constant(0.05), _SEED, monte_carlo_samples=16).numpy()
    assert abs(reference.mean() - grey) < 0.015
    assert reference.std() > 0.02  # grain plus its rendering noise


@pytest.mark.parametrize("renderer,samples", [("field", 0), ("monte_carlo", 256)])
def test_grain_variance_grows_with_radius(renderer, samples):
    flat = tf.fill([32, 32, 3], 0.5)
    variances = [_RENDERERS[renderer](flat, tf.constant(r), _SEED, monte_carlo_samples=samples).numpy().var()
                 for r in (0.01, 0.05, 0.1)]
    assert variances[0] < variances[1] < variances[2], variances
    # Without rendering noise the variance is K(u) / (4 pi sigma^2), K proportional to r^2: a ratio of 100.
    assert variances[2] > (50.0 if renderer == "field" else 1.3) * variances[0], variances


@pytest.mark.parametrize("samples", [32, 200])
def test_grain_noise_matches_the_monte_carlo_sample_count(samples):
    """With tiny grains (no texture) the rendering is pure estimator noise: variance u (1 - u) / N_eff, N_eff >= N."""
    taps, _ = filter_taps(points_per_pixel_side(samples, 0.8), 0.8)
    effective = 1.0 / float(np.sum(taps.numpy() ** 2)) ** 2
    assert samples <= effective <= 1.5 * samples
    flat = tf.fill([48, 48, 3], 0.5)
    out = film_grain_monte_carlo(flat, tf.constant(0.005), _SEED, monte_carlo_samples=samples).numpy()
    np.testing.assert_allclose(out.var(), 0.25 / effective, rtol=0.25)
    # The field's emulation of Newson's N independent offsets per pixel: variance u (1 - u) / N exactly.
    emulated = film_grain(flat, tf.constant(0.005), _SEED, monte_carlo_samples=samples).numpy()
    np.testing.assert_allclose(emulated.var(), 0.25 / samples, rtol=0.1)


@pytest.mark.parametrize("renderer", sorted(_RENDERERS))
def test_grain_is_a_pure_function_of_its_seed(photo, renderer):
    image = tf.constant(photo[:16, :16])
    render = _RENDERERS[renderer]
    first = render(image, tf.constant(0.025), _SEED, monte_carlo_samples=8).numpy()
    again = render(image, tf.constant(0.025), _SEED, monte_carlo_samples=8).numpy()
    other = render(image, tf.constant(0.025), _SEED + 1, monte_carlo_samples=8).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert 0.0 <= first.min() and first.max() <= 1.0


@pytest.mark.parametrize("renderer", sorted(_RENDERERS))
def test_zero_grain_radius_is_identity(photo, renderer):
    out = _RENDERERS[renderer](tf.constant(photo), tf.constant(0.0), _SEED, monte_carlo_samples=4).numpy()
    np.testing.assert_array_equal(out, photo)


# --- free-form masks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [64, 128])
def test_mask_coverage_within_documented_ranges(size):
    """The hole-coverage statistics documented in input_pipeline/effects/inpainting_masks.py."""
    scale = size / 256.0

    def hole_fraction(i):
        mask = free_form_mask(tf.stack([i, tf.constant(11, tf.int64)]), size, min_width=12 * scale,
                              max_width=40 * scale)
        return 1.0 - tf.reduce_mean(mask)

    fractions = np.array(list(tf.data.Dataset.range(300).map(hole_fraction, num_parallel_calls=2)
                              .as_numpy_iterator()))
    assert 0.17 <= fractions.mean() <= 0.25, fractions.mean()
    assert 0.06 <= fractions.std() <= 0.13, fractions.std()
    assert fractions.min() >= 0.005 and fractions.max() <= 0.6, (fractions.min(), fractions.max())


def test_mask_is_binary_and_deterministic():
    seed = tf.constant([5, 6], tf.int64)
    mask = free_form_mask(seed, 64).numpy()
    assert mask.shape == (64, 64, 1)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask, free_form_mask(seed, 64).numpy())


@pytest.mark.parametrize("size", [32, 64, 256])
def test_mask_rasterisation_equals_testing_every_pixel(size):
    """Bounding-box rasterisation is bit-identical to testing all pixels against all segments."""
    scale = size / 256.0
    for i in range(40 if size < 256 else 12):
        seed = tf.constant([i, 21], tf.int64)
        segments = stroke_segments(seed, size, min_width=12 * scale, max_width=40 * scale)
        np.testing.assert_array_equal(rasterise_segments(*segments, size).numpy(),
                                      former.dense_hole(*segments, size).numpy())
        np.testing.assert_array_equal(free_form_mask(seed, size).numpy(), former.free_form_mask(seed, size).numpy())
    # Degenerate and border cases: a point segment, segments along and beyond the edges, a zero width.
    starts = tf.constant([[5.0, 5.0], [0.0, 0.0], [size, 0.0], [3.0, size - 1.0], [10.0, 10.0]])
    ends = tf.constant([[5.0, 5.0], [size, 0.0], [size, size], [size - 3.0, size - 1.0], [20.0, 12.0]])
    half_width = tf.constant([2.5, 1.0, 3.0, 0.5, 0.0])
    for active in ([True] * 5, [True, False, True, False, True], [False] * 5):
        segments = (starts, ends, half_width, tf.constant(active))
        np.testing.assert_array_equal(rasterise_segments(*segments, size).numpy(),
                                      former.dense_hole(*segments, size).numpy())
