"""eval.grain: hand-computed values on tiny patterns, and the ranking it gives on real film grain."""
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from eval.grain import highpass_std_error, lowpass_l1
from eval.metrics import l1
from input_pipeline.effects.film_grain import film_grain

SIZE = 16  # valid region of the sigma = 1.5 blur (11 taps): 6 x 6


def alternating_tap_sum(sigma: float = 1.5) -> float:
    """s = sum_j w_j (-1)^j over the normalised taps j = -5..5: the blur's gain on a period-2 pattern."""
    j = np.arange(-5, 6)
    w = np.exp(-j ** 2 / (2 * sigma ** 2))
    return float(np.sum(w / w.sum() * (-1.0) ** j))


def pattern(kind: str, channels: int = 3) -> np.ndarray:
    """(1, SIZE, SIZE, channels): 'checker' (-1)^(r + c) or 'stripes' (-1)^c mapped to {0, 1}."""
    r, c = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    sign = (-1.0) ** (r + c) if kind == "checker" else (-1.0) ** c
    return np.repeat(((1 + sign) / 2)[None, :, :, None], channels, axis=-1).astype(np.float32)


def constant(value: float, channels: int = 3) -> np.ndarray:
    return np.full((1, SIZE, SIZE, channels), value, np.float32)


def test_constant_images():
    # No high-pass at all; the low-passes are the constants themselves.
    np.testing.assert_allclose(highpass_std_error(constant(0.3), constant(0.7)), [0.0], atol=1e-7)
    np.testing.assert_allclose(lowpass_l1(constant(0.3), constant(0.7)), [0.4], atol=1e-6)


def test_checkerboard_against_flat_grey():
    """The blur scales (-1)^(r + c) by s^2, so hp = +-0.5 (1 - s^2) (std 0.5 (1 - s^2)), low = 0.5 +- 0.5 s^2."""
    s = alternating_tap_sum()
    assert abs(s) < 2e-3  # the truncated Gaussian barely passes the Nyquist pattern
    np.testing.assert_allclose(highpass_std_error(pattern("checker"), constant(0.5)), [0.5 * (1 - s * s)], rtol=1e-5)
    np.testing.assert_allclose(lowpass_l1(pattern("checker"), constant(0.5)), [0.5 * s * s], atol=1e-6)


def test_stripes_against_checkerboard():
    """Stripes (-1)^c pass the blur along rows unchanged and are scaled by s along columns: hp std 0.5 (1 - s)."""
    s = alternating_tap_sum()
    expected = 0.5 * (1 - s) - 0.5 * (1 - s * s)
    np.testing.assert_allclose(highpass_std_error(pattern("stripes"), pattern("checker")), [abs(expected)],
                               atol=2e-6)


def test_channels_are_averaged_and_images_scored_one_by_one():
    s = alternating_tap_sum()
    one_channel = np.concatenate([pattern("checker", 1), constant(0.5, 2)], axis=-1)
    pred = np.concatenate([one_channel, constant(0.5)])
    target = constant(0.5).repeat(2, axis=0)
    out = highpass_std_error(pred, target)
    assert out.shape == (2,)
    np.testing.assert_allclose(out, [0.5 * (1 - s * s) / 3, 0.0], rtol=1e-5, atol=1e-7)


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="at least 11x11"):
        highpass_std_error(np.zeros((1, 10, 10, 3)), np.zeros((1, 10, 10, 3)))


@pytest.fixture(scope="module")
def grain_set():
    """A 64 px photo crop with grain of radius 0.05 (the target) and candidate outputs, each (1, 64, 64, 3)."""
    photo = skimage.data.astronaut()[180:244, 200:264].astype(np.float32) / 255.0

    def grain(radius, seed):
        return film_grain(tf.constant(photo), tf.constant(radius), tf.constant([seed, 0], tf.int64)).numpy()[None]

    return {"target": grain(0.05, 1), "right radius": grain(0.05, 2), "smaller radius": grain(0.025, 2),
            "larger radius": grain(0.1, 2), "no grain": photo[None]}


def test_highpass_std_ranks_the_right_radius_first(grain_set):
    target = grain_set["target"]
    errors = {name: float(highpass_std_error(images, target)[0]) for name, images in grain_set.items()
              if name != "target"}
    right = errors.pop("right radius")
    assert all(right < 0.5 * wrong for wrong in errors.values()), (right, errors)


def test_lowpass_l1_ignores_the_grain_realisation(grain_set):
    target, right = grain_set["target"], grain_set["right radius"]
    # Pixel L1 sees two independent grains; the low-pass keeps only their coarse part: the difference of two
    # grains has covariance ~ exp(-l^2 / (4 * 0.8^2)), and a blur of sigma 1.5 leaves sqrt(1.28 / (1.28 + 4.5))
    # = 0.47 of its std (L1 of a Gaussian is proportional to its std).
    assert float(lowpass_l1(right, target)[0]) < 0.55 * float(l1(right, target)[0])
    # A content change (a brightness shift of 0.05) still reads as 0.05.
    np.testing.assert_allclose(lowpass_l1(np.clip(target + 0.05, 0, 2), target), [0.05], rtol=1e-4)
