"""PSNR / SSIM / L1 / MSE against scikit-image with the paper settings, on random and natural images."""
import numpy as np
import pytest
from skimage import color, data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from eval import metrics

TOL = 1e-5


def _skimage_ssim(a, b, data_range):
    return structural_similarity(a, b, data_range=data_range, channel_axis=-1, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False)


def _natural_pair(rng):
    """A bundled photo (uint8 RGB) and a noisy, blurred-by-shift copy: values a real restoration gives."""
    target = data.astronaut()[::4, ::4]  # (128, 128, 3) keeps the test quick
    noise = rng.normal(0, 12, target.shape)
    pred = np.clip(np.roll(target, 1, axis=1).astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return pred, target


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_psnr_ssim_match_skimage_on_random_images(rng, data_range):
    target = rng.uniform(0, data_range, (3, 32, 40, 3))
    pred = np.clip(target + rng.normal(0, 0.1 * data_range, target.shape), 0, data_range)
    got_psnr = np.asarray(metrics.psnr(pred.astype(np.float32), target.astype(np.float32), data_range))
    got_ssim = np.asarray(metrics.ssim(pred.astype(np.float32), target.astype(np.float32), data_range))
    for i in range(3):
        assert got_psnr[i] == pytest.approx(peak_signal_noise_ratio(target[i], pred[i], data_range=data_range),
                                            abs=TOL)
        assert got_ssim[i] == pytest.approx(_skimage_ssim(target[i], pred[i], data_range), abs=TOL)


def test_psnr_ssim_match_skimage_on_natural_images(rng):
    pred, target = _natural_pair(rng)
    got_psnr = float(metrics.psnr(pred[None], target[None], 255.0)[0])
    got_ssim = float(metrics.ssim(pred[None], target[None], 255.0)[0])
    assert got_psnr == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=255), abs=TOL)
    assert got_ssim == pytest.approx(_skimage_ssim(target, pred, 255), abs=TOL)
    gray_pred, gray_target = data.camera()[::4, ::4], np.clip(data.camera()[::4, ::4] * 0.9 + 10, 0, 255)
    got = float(metrics.ssim(gray_pred[None, ..., None], gray_target[None, ..., None], 255.0)[0])
    want = structural_similarity(gray_target, gray_pred.astype(np.float64), data_range=255, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False)
    assert got == pytest.approx(want, abs=TOL)


def test_y_channel_scores_bt601_luma(rng):
    pred, target = _natural_pair(rng)
    y_pred = color.rgb2ycbcr(pred)[..., :1]  # Y in [16, 235]
    y_target = color.rgb2ycbcr(target)[..., :1]
    got_psnr = float(metrics.psnr(pred[None], target[None], 255.0, y_channel=True)[0])
    got_ssim = float(metrics.ssim(pred[None], target[None], 255.0, y_channel=True)[0])
    assert got_psnr == pytest.approx(peak_signal_noise_ratio(y_target, y_pred, data_range=255), abs=TOL)
    assert got_ssim == pytest.approx(_skimage_ssim(y_target, y_pred, 255), abs=TOL)


def test_l1_mse_rmse_are_per_image_means(rng):
    a, b = rng.uniform(-1, 1, (2, 4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(metrics.l1(a, b), np.abs(a - b).mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(metrics.mse(a, b), ((a - b) ** 2).mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(metrics.rmse(a, b), np.sqrt(((a - b) ** 2).mean(axis=(1, 2, 3))), rtol=1e-6)


def test_identical_images_and_bad_shapes():
    x = np.linspace(0, 1, 2 * 16 * 16 * 3, dtype=np.float32).reshape(2, 16, 16, 3)
    assert np.all(np.isinf(metrics.psnr(x, x, 1.0)))
    np.testing.assert_allclose(metrics.ssim(x, x, 1.0), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(x[:, :8, :8], x[:, :8, :8], 1.0)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        metrics.l1(x, x[:1])
