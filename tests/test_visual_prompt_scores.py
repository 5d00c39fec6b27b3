"""The visual-prompting scores (eval.visual_prompt_scores): render -> decode round trips, hand-computed mIoU
and edge F1, PSNR / MSE / SSIM against eval.metrics on [0, 1], depth RMSE, the registries and their errors."""
import numpy as np
import pytest

from eval import metrics
from eval.visual_prompt_scores import (HIGHER_IS_BETTER, TASK_METRICS, decode_depth, decode_segmentation,
                                       main_metric, task_scores)
from input_pipeline.visual_tasks.examples import ALL_TASKS
from input_pipeline.visual_tasks.render import render_depth, render_segmentation


def _signed(images):
    """[0, 1] -> [-1, 1], the method's (and the answers') range."""
    return np.asarray(images, np.float32) * 2.0 - 1.0


def _segmentation_renders(*id_maps):
    """`(N, H, W, 3)` in [-1, 1]: each `(H, W)` id map through render_segmentation."""
    return _signed(np.stack([render_segmentation(np.asarray(ids)).numpy() for ids in id_maps]))


def _depth_renders(*depth_maps):
    return _signed(np.stack([render_depth(np.asarray(d, np.float32)).numpy() for d in depth_maps]))


def test_segmentation_render_decode_round_trip_is_exact():
    ids = np.array([[0, 1, 2, 3], [15, 20, 21, 37], [128, 200, 254, 255]], np.int32)
    decoded = decode_segmentation(_segmentation_renders(ids, ids[::-1]))
    assert decoded.dtype == np.int32 and decoded.shape == (2, 3, 4)
    np.testing.assert_array_equal(decoded, np.stack([ids, ids[::-1]]))


def test_depth_render_decode_round_trip_within_quantisation():
    depth = np.random.default_rng(0).uniform(2.0, 30.0, (2, 12, 10))
    decoded = decode_depth(_depth_renders(*depth))
    assert decoded.dtype == np.float32 and decoded.shape == (2, 12, 10)
    low, high = depth.min(axis=(1, 2), keepdims=True), depth.max(axis=(1, 2), keepdims=True)
    # Rendering rounds the normalised depth to the nearest of 256 entries: half a step at most.
    np.testing.assert_allclose(decoded, (depth - low) / (high - low), atol=0.5 / 255 + 1e-6)
    assert decoded.min() == 0.0 and decoded.max() == 1.0


def test_miou_hand_computed_with_ignored_pixels():
    target = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [255, 255, 0, 0]])
    pred = np.array([[0, 0, 0, 1], [1, 1, 0, 0], [1, 1, 255, 0]])
    # Target-255 pixels are not counted; predicting 255 on a class-0 pixel is a miss of class 0.
    # Class 0: TP 4, FP 2 (row 1), FN 2 (row 0's 1, row 2's 255): IoU 4/8. Class 1: TP 2, FP 1, FN 2: IoU 2/5.
    scores = task_scores("segmentation", _segmentation_renders(pred), _segmentation_renders(target))
    assert scores == {"mIoU": pytest.approx((4 / 8 + 2 / 5) / 2)}
    perfect = task_scores("segmentation", _segmentation_renders(target, pred), _segmentation_renders(target, pred))
    assert perfect["mIoU"] == pytest.approx(1.0)


def test_miou_of_only_ignored_pixels_is_an_error():
    ignored = _segmentation_renders(np.full((2, 2), 255))
    with pytest.raises(ValueError, match="ignore"):
        task_scores("segmentation", ignored, ignored)


def test_edge_f1_hand_computed_and_pooled_over_images():
    target = np.zeros((2, 8, 8, 3), np.float32)
    pred = np.zeros_like(target)
    target[0, 1, 2:6] = 1.0  # 4 edge pixels, all in image 0
    pred[0, 1, 2:4] = 1.0  # 2 right
    pred[1, 5, 5] = 1.0  # 1 wrong, in image 1 (no target edges)
    # Pooled: TP 2, FP 1, FN 2 (the per-image mean would be (2/3 + 0) / 2).
    assert task_scores("edges", _signed(pred), _signed(target)) == {"F1": pytest.approx(2 * 2 / (2 * 2 + 1 + 2))}
    empty = _signed(np.zeros((1, 8, 8, 3)))
    assert task_scores("edges", empty, empty) == {"F1": 1.0}


def test_psnr_mse_ssim_on_unit_scale_agree_with_eval_metrics():
    rng = np.random.default_rng(1)
    target = rng.uniform(0.0, 0.8, (3, 16, 16, 3)).astype(np.float32)
    pred = target + 0.1  # a constant offset of 0.1 on [0, 1]: 0.2 on [-1, 1]
    denoising = task_scores("denoising", _signed(pred), _signed(target))
    assert denoising["PSNR"] == pytest.approx(20.0, abs=1e-3)  # -10 log10(0.1^2)
    assert denoising["SSIM"] == pytest.approx(float(np.mean(metrics.ssim(pred, target, 1.0))), abs=1e-5)
    assert task_scores("colourisation", _signed(pred), _signed(target)) == {"MSE": pytest.approx(0.01, rel=1e-4)}
    inpainting = task_scores("inpainting", _signed(pred), _signed(target))
    assert list(inpainting) == ["SSIM", "MSE"] and all(type(v) is float for v in inpainting.values())
    noisy = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1).astype(np.float32)
    got = task_scores("super_resolution", _signed(noisy), _signed(target))["PSNR"]
    assert got == pytest.approx(float(np.mean(metrics.psnr(noisy, target, 1.0))), abs=1e-4)


def test_depth_rmse_of_perfect_and_inverted_renders():
    ramp = np.tile(np.arange(16, dtype=np.float32), (4, 1))  # renders to entries 17 i: decodes to i / 15 exactly
    truth = _depth_renders(ramp, 3.0 * ramp[:, ::-1] + 7.0)
    assert task_scores("depth", truth, truth)["RMSE"] == pytest.approx(0.0, abs=1e-7)
    inverted = _depth_renders(ramp[:, ::-1], ramp)  # the other way round, in each image
    want = np.sqrt(np.mean(np.square((15 - 2 * np.arange(16)) / 15)))
    assert task_scores("depth", inverted, truth)["RMSE"] == pytest.approx(want, abs=1e-6)
    assert want > 0.5


def test_registries_cover_every_task_and_metric():
    assert set(TASK_METRICS) == set(ALL_TASKS)
    assert {m for names in TASK_METRICS.values() for m in names} <= set(HIGHER_IS_BETTER)
    assert [main_metric(t) for t in ("depth", "colourisation", "inpainting", "segmentation", "edges")] == [
        "RMSE", "MSE", "SSIM", "mIoU", "F1"]
    assert not HIGHER_IS_BETTER["RMSE"] and not HIGHER_IS_BETTER["MSE"] and HIGHER_IS_BETTER["PSNR"]


def test_unknown_task_and_bad_shapes_raise():
    images = np.zeros((1, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="'painting'.*inpainting"):
        task_scores("painting", images, images)
    with pytest.raises(ValueError, match="'sketch'"):
        main_metric("sketch")
    with pytest.raises(ValueError, match="differ in shape"):
        task_scores("denoising", images, images[:, :8])
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        decode_segmentation(images[..., :1])
