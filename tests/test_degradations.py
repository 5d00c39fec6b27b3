"""Each Diff-Plugin degradation against its defining property, plus determinism, range, shape and graph mode."""
import math

import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import tensorflow as tf

from input_pipeline.degradations import DEGRADATIONS, degrade, paired_example
from input_pipeline.degradations.blur import defocus_blur, degrade_deblur, disc_kernel
from input_pipeline.degradations.face import KERNEL_SIZE, degrade_face, face_blur_kernel, gaussian_kernel_2d
from input_pipeline.degradations.haze import degrade_dehaze, haze_parameters
from input_pipeline.degradations.highlight import degrade_highlight
from input_pipeline.degradations.low_light import degrade_lowlight
from input_pipeline.degradations.moire import degrade_demoire
from input_pipeline.degradations.rain import VERTICAL, degrade_derain, rain_layer
from input_pipeline.degradations.sampling import sub_seed, uniform
from input_pipeline.degradations.snow import degrade_desnow, snow_alpha
from input_pipeline.effects.motion_blur import motion_blur_kernel

SEED = tf.constant([7, 11], tf.int64)


@pytest.fixture(scope="module")
def photo():
    """A 64 x 64 crop of the astronaut photo (face and suit), float32 in [0, 1]."""
    return skimage.data.astronaut()[40:296:4, 120:376:4].astype(np.float32) / 255.0


def _fixed(value):
    return (value, value)


def _high_frequency_energy(image):
    """Energy of the discrete Laplacian of each channel (fine detail and noise)."""
    return float(sum(np.sum(scipy.ndimage.laplace(image[..., c].astype(np.float64)) ** 2) for c in range(3)))


# --- all tasks -----------------------------------------------------------------------------------------------

def test_registry_has_the_eight_tasks():
    assert set(DEGRADATIONS) == {"deblur", "derain", "desnow", "dehaze", "lowlight", "demoire", "highlight", "face"}
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade("sharpen", tf.zeros([32, 32, 3]), SEED)


@pytest.mark.parametrize("task", sorted(DEGRADATIONS))
def test_deterministic_in_range_and_same_in_tf_data(task, photo):
    out = degrade(task, photo, SEED).numpy()
    assert out.shape == photo.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not np.allclose(out, photo, atol=1e-3)
    np.testing.assert_array_equal(out, degrade(task, photo, SEED).numpy())
    assert not np.array_equal(out, degrade(task, photo, SEED + 1).numpy())
    # Graph mode, and an int32 seed of the same value gives the same draws.
    dataset = tf.data.Dataset.from_tensors((photo, tf.constant([7, 11], tf.int32))).map(
        lambda image, seed: paired_example(task, image, seed))
    pair = next(dataset.as_numpy_iterator())
    np.testing.assert_array_equal(pair["target"], photo)
    np.testing.assert_allclose(pair["source"], out, atol=1e-5)


# --- deblur --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("radius", [0.0, 1.5, 3.2, 5.0])
def test_disc_kernel_sums_to_one_and_is_a_round_disc(radius):
    kernel = disc_kernel(tf.constant(radius), 11).numpy()
    np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-7)
    np.testing.assert_allclose(kernel, kernel[::-1], atol=1e-7)
    distance = np.hypot(*np.meshgrid(np.arange(11) - 5, np.arange(11) - 5))
    assert np.all(kernel[distance > radius + 0.5] == 0) and np.all(kernel[distance <= radius - 0.5] == kernel.max())


def test_defocus_turns_a_delta_into_the_disc():
    image = np.zeros((25, 25, 3), np.float32)
    image[12, 12] = 1.0
    out = defocus_blur(tf.constant(image), tf.constant(4.0), max_radius=5.0).numpy()
    np.testing.assert_allclose(out[7:18, 7:18, 1], disc_kernel(tf.constant(4.0), 11).numpy(), atol=1e-6)


@pytest.mark.parametrize("motion_probability", [0.0, 1.0])
def test_deblur_delta_becomes_the_chosen_kernel(motion_probability):
    """With fixed ranges the blurred delta is the disc (defocus) or the motion segment, each summing to 1."""
    image = np.zeros((41, 41, 3), np.float32)
    image[20, 20] = 1.0
    out = degrade_deblur(tf.constant(image), SEED, motion_probability=motion_probability,
                         motion_length_range=_fixed(9.0), defocus_radius_range=_fixed(3.0)).numpy()[..., 0]
    np.testing.assert_allclose(out.sum(), 1.0, rtol=1e-5)
    if motion_probability == 0.0:
        np.testing.assert_allclose(out[17:24, 17:24], disc_kernel(tf.constant(3.0), 7).numpy(), atol=1e-6)
    else:
        angle = uniform(sub_seed(SEED, 2), (0.0, math.pi))  # the angle degrade_deblur draws
        kernel = motion_blur_kernel(tf.constant(9.0), angle, 9).numpy()
        np.testing.assert_allclose(out[16:25, 16:25], kernel[::-1, ::-1], atol=1e-6)


# --- derain --------------------------------------------------------------------------------------------------

def test_rain_streaks_are_oriented_along_their_angle():
    """Vertical streaks: intensity changes across them (along x) and hardly along them (along y)."""
    layer = rain_layer(SEED, 96, 96, angle_range=_fixed(VERTICAL), density_range=_fixed(0.01)).numpy()[..., 0]
    along = np.sum(np.diff(layer, axis=0) ** 2)
    across = np.sum(np.diff(layer, axis=1) ** 2)
    assert across > 5.0 * along, (across, along)
    tilted = rain_layer(SEED, 96, 96, angle_range=_fixed(VERTICAL + 0.3), density_range=_fixed(0.01)).numpy()[..., 0]
    gy, gx = np.gradient(tilted)
    # Gradient energy along the streak direction (cos a, sin a) in (x, y) vs across it.
    a = VERTICAL + 0.3
    along = np.sum((gx * math.cos(a) + gy * math.sin(a)) ** 2)
    across = np.sum((-gx * math.sin(a) + gy * math.cos(a)) ** 2)
    assert across > 4.0 * along, (across, along)


def test_rain_is_the_layer_screened_on(photo):
    """A black image becomes the streak layer itself; any image only brightens, by the screen formula."""
    layer = rain_layer(SEED, 64, 64).numpy()
    np.testing.assert_allclose(degrade_derain(tf.zeros([64, 64, 3]), SEED).numpy(), np.repeat(layer, 3, -1),
                               atol=1e-6)
    out = degrade_derain(tf.constant(photo), SEED).numpy()
    np.testing.assert_allclose(out, 1 - (1 - photo) * (1 - layer), atol=1e-6)
    assert np.all(out >= photo - 1e-6) and 0.005 < layer.mean() < 0.3


# --- desnow --------------------------------------------------------------------------------------------------

def test_snow_only_brightens_with_isolated_blobs(photo):
    out = degrade_desnow(tf.constant(photo), SEED).numpy()
    assert np.all(out >= photo - 1e-6)
    alpha = snow_alpha(SEED, 96, 96, fall_length_range=_fixed(1.0)).numpy()[..., 0]
    labels, count = scipy.ndimage.label(alpha > 0.3)
    areas = np.bincount(labels.ravel())[1:]
    assert count >= 10, count
    assert np.median(areas) <= 12 and areas.max() < 0.05 * alpha.size, (np.median(areas), areas.max())
    assert (alpha > 0.3).mean() < 0.2
    sizes = [np.sum(snow_alpha(SEED, 96, 96, flake_sigmas=(s,), density_ranges=(_fixed(2e-3),)).numpy() > 0.25)
             for s in (0.8, 2.0)]
    assert sizes[1] > 3 * sizes[0], sizes  # the flake size parameter sets the blob size


def test_snow_fall_streaks_the_largest_flakes():
    still, falling = (snow_alpha(SEED, 96, 96, flake_sigmas=(1.5,), density_ranges=(_fixed(5e-4),),
                                 fall_length_range=_fixed(length), fall_angle_range=_fixed(math.pi / 2))
                      .numpy()[..., 0] for length in (1.0, 13.0))
    # Falling flakes cover more pixels (streaks) and keep a lone flake's peak brightness.
    assert np.sum(falling > 0.2) > 2 * np.sum(still > 0.2)
    assert falling.max() > 0.5 * still.max()


# --- dehaze --------------------------------------------------------------------------------------------------

def test_haze_is_the_scattering_model(photo):
    transmission, airlight = haze_parameters(SEED, 64, 64)
    t, a = transmission.numpy(), float(airlight)
    out = degrade_dehaze(tf.constant(photo), SEED).numpy()
    np.testing.assert_allclose(out, photo * t + a * (1 - t), atol=1e-6)
    assert 0.7 <= a <= 1.0 and t.shape == (64, 64, 1)
    assert math.exp(-1.8) - 1e-6 <= t.min() and t.max() <= 1.0 + 1e-6


def test_haze_contrast_falls_with_depth_and_mean_moves_to_airlight():
    texture = tf.random.stateless_uniform([96, 96, 3], [1, 2]) * 0.6
    out = degrade_dehaze(texture, SEED, beta_range=_fixed(1.5), airlight_range=_fixed(0.9), noise_amplitude=0.0)
    out, texture = out.numpy(), texture.numpy()
    # The depth proxy is far at the top: the top rows keep the least contrast.
    ratio_top = out[:16].std() / texture[:16].std()
    ratio_bottom = out[-16:].std() / texture[-16:].std()
    assert ratio_top < 0.5 * ratio_bottom, (ratio_top, ratio_bottom)
    assert abs(out.mean() - 0.9) < abs(texture.mean() - 0.9)
    np.testing.assert_allclose(ratio_bottom, 1.0, atol=0.1)


# --- low light -----------------------------------------------------------------------------------------------

def test_lowlight_darkens_and_noise_variance_grows_with_signal():
    """Flat patches: mean = scale x^gamma, variance = shot * mean + read (Poisson-Gaussian)."""
    levels = np.array([0.3, 0.6, 0.9], np.float32)
    image = np.repeat(levels, 64 * 64 // 3 + 1)[: 64 * 64].reshape(64, 64, 1).repeat(3, -1).astype(np.float32)
    out = degrade_lowlight(tf.constant(image), SEED, gamma_range=_fixed(2.0), scale_range=_fixed(0.5),
                           shot_range=_fixed(4e-3), read_log_std=0.0).numpy()
    read = math.exp(2.18 * math.log(4e-3) + 1.20)
    assert out.mean() < 0.5 * image.mean()
    variances = []
    for level in levels:
        pixels = out[image == level]
        mean = 0.5 * level ** 2
        np.testing.assert_allclose(pixels.mean(), mean, rtol=0.03)
        np.testing.assert_allclose(pixels.var(), 4e-3 * mean + read, rtol=0.15)
        variances.append(pixels.var())
    assert variances[0] < variances[1] < variances[2]


# --- demoire -------------------------------------------------------------------------------------------------

def test_moire_adds_energy_in_a_narrow_band_at_the_beat_frequency():
    size, frequency, rotation = 96, 0.2, 0.15
    out = degrade_demoire(tf.fill([size, size, 3], 0.5), SEED, frequency_range=_fixed(frequency),
                          rotation_range=_fixed(rotation), scale_range=_fixed(1.0), curvature_range=_fixed(0.0),
                          amplitude_range=_fixed(0.3)).numpy()
    added = out[..., 1] - 0.5
    window = np.outer(np.hanning(size), np.hanning(size))
    power = np.abs(np.fft.fft2(added * window)) ** 2
    nu = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    beat = 2 * frequency * math.sin(rotation / 2)  # |k1 - k2| for equal lengths
    in_band = np.abs(nu - beat) < 0.025
    assert power[in_band].sum() > 0.9 * power.sum(), power[in_band].sum() / power.sum()
    assert added.std() > 0.05


def test_moire_colour_bands_are_phase_shifted():
    out = degrade_demoire(tf.fill([64, 64, 3], 0.5), SEED, curvature_range=_fixed(0.0)).numpy() - 0.5
    correlation = np.corrcoef(out[..., 0].ravel(), out[..., 1].ravel())[0, 1]
    assert correlation < 0.0  # 120 degrees apart: cos(2 pi / 3) = -1/2


# --- highlight -----------------------------------------------------------------------------------------------

def test_highlight_only_brightens_saturates_and_sits_on_bright_regions():
    base = tf.random.stateless_uniform([64, 64, 3], [3, 4]) * 0.1
    image = tf.concat([base[:, :32] + 0.05, base[:, 32:] + 0.75], axis=1).numpy()  # dark left, bright right
    out = degrade_highlight(tf.constant(image), SEED, count_range=_fixed(4)).numpy()
    added = out - image
    assert added.min() >= -1e-6
    assert np.mean(out == 1.0) > 0.005 and np.mean(image == 1.0) == 0.0
    assert added[:, 32:].sum() > 0.8 * added.sum()
    # Grey-white: a highlight adds the same amount to each channel until one saturates.
    unclipped = out.max(-1) < 1.0
    np.testing.assert_allclose(added[unclipped][:, 0], added[unclipped][:, 2], atol=1e-5)


# --- face ----------------------------------------------------------------------------------------------------

def test_face_kernels_sum_to_one_and_have_the_drawn_shape():
    kernel = gaussian_kernel_2d(tf.constant(3.0), tf.constant(1.0), tf.constant(0.0)).numpy()
    assert kernel.shape == (KERNEL_SIZE, KERNEL_SIZE)
    np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-5)
    coords = np.arange(KERNEL_SIZE) - KERNEL_SIZE // 2
    np.testing.assert_allclose(np.sqrt(np.sum(kernel.sum(0) * coords ** 2)), 3.0, rtol=1e-3)  # x spread
    np.testing.assert_allclose(np.sqrt(np.sum(kernel.sum(1) * coords ** 2)), 1.0, rtol=1e-3)  # y spread
    for i in range(4):
        drawn = face_blur_kernel(tf.random.experimental.stateless_fold_in(SEED, i)).numpy()
        np.testing.assert_allclose(drawn.sum(), 1.0, rtol=1e-5)
        np.testing.assert_allclose(drawn, drawn[::-1, ::-1], atol=1e-6)  # a centred Gaussian


def test_face_downsample_and_jpeg_lower_high_frequency_energy(photo):
    image = np.clip(photo + 0.05 * np.random.default_rng(0).standard_normal(photo.shape), 0, 1).astype(np.float32)

    def ratio(downsample, quality):
        out = degrade_face(tf.constant(image), SEED, sigma_range=_fixed(0.1), noise_range=_fixed(0.0),
                           downsample_range=_fixed(downsample), jpeg_range=_fixed(quality)).numpy()
        assert abs(out.mean() - image.mean()) < 0.02
        return _high_frequency_energy(out) / _high_frequency_energy(image)

    assert ratio(4.0, 100) < 0.1  # x4 down and back up: little above the small image's Nyquist survives
    # JPEG's chroma subsampling removes some at any quality; coarser quantisation removes more.
    assert ratio(1.0, 60) < min(0.85, ratio(1.0, 100) - 0.05)


# --- paired batches (input_pipeline.captions with `degrade`) -------------------------------------------------

def test_paired_batches_carry_the_degraded_crop_rebuilt_exactly_from_its_index():
    import functools

    from input_pipeline.captions import ImageBatches, default_image_data_config, fixed_examples
    from input_pipeline.randomness import example_seed, purpose_seed

    cfg = default_image_data_config()
    cfg.crop_size, cfg.resize_short_side, cfg.batch_size = 24, 32, 4
    derain = functools.partial(degrade, "derain")
    first = next(ImageBatches(cfg, degrade=derain))
    assert set(first) == {"image", "source"} and first["source"].shape == first["image"].shape == (4, 24, 24, 3)
    assert first["source"].min() >= -1.0 and first["source"].max() <= 1.0
    # example i's source is its clean crop degraded with its own seed: recomputed here outside the pipeline
    for i in range(4):
        expected = derain(tf.constant((first["image"][i] + 1.0) / 2.0),
                          purpose_seed(example_seed(cfg.seed, tf.constant(i, tf.int64)), "degradation"))
        np.testing.assert_allclose(first["source"][i], np.asarray(expected) * 2.0 - 1.0, atol=1e-6)
    assert np.abs(first["source"] - first["image"]).mean() > 0.01  # rain streaks, not the clean crop
    resumed = next(ImageBatches(cfg, degrade=derain, start_step=1))
    batches = ImageBatches(cfg, degrade=derain)
    next(batches)
    np.testing.assert_array_equal(next(batches)["source"], resumed["source"])  # resume: the same pairs

    held_out = fixed_examples(cfg, "heldout", 2, seed=0, degrade=derain)
    again = fixed_examples(cfg, "heldout", 2, seed=0, degrade=derain)
    assert held_out["source"].shape == held_out["image"].shape == (2, 24, 24, 3)
    np.testing.assert_array_equal(held_out["source"], again["source"])
    assert np.abs(held_out["source"] - held_out["image"]).mean() > 0.01
