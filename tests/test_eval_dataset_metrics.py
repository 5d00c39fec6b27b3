"""FID, KID, mIoU, depth and selector metrics against independent NumPy / SciPy formulas."""
import numpy as np
import pytest
import scipy.linalg

from eval import depth, distribution, embedding, multilabel, segmentation, streaming


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- FID -------------------------------------------------------------------------------------------------

def _random_spd(rng, dim):
    a = rng.normal(size=(dim, 2 * dim))
    return a @ a.T / (2 * dim) + 0.1 * np.eye(dim)


def test_frechet_distance_closed_form_gaussians(rng):
    dim = 6
    mu_a, mu_b = rng.normal(size=dim), rng.normal(size=dim)
    same = distribution.GaussianStatistics(mu_a, _random_spd(rng, dim))
    assert distribution.frechet_distance(same, same) == pytest.approx(0.0, abs=1e-9)
    # Isotropic: |mu_a - mu_b|^2 + D (sqrt(s) - sqrt(t))^2.
    s, t = 2.0, 0.5
    got = distribution.frechet_distance(distribution.GaussianStatistics(mu_a, s * np.eye(dim)),
                                        distribution.GaussianStatistics(mu_b, t * np.eye(dim)))
    assert got == pytest.approx(np.sum((mu_a - mu_b) ** 2) + dim * (np.sqrt(s) - np.sqrt(t)) ** 2, rel=1e-12)
    # Diagonal: sum_i (sqrt(s_i) - sqrt(t_i))^2 for equal means.
    s_diag, t_diag = rng.uniform(0.1, 3, dim), rng.uniform(0.1, 3, dim)
    got = distribution.frechet_distance(distribution.GaussianStatistics(mu_a, np.diag(s_diag)),
                                        distribution.GaussianStatistics(mu_a, np.diag(t_diag)))
    assert got == pytest.approx(np.sum((np.sqrt(s_diag) - np.sqrt(t_diag)) ** 2), rel=1e-10)


@pytest.mark.parametrize("dim", [3, 32, 128])
def test_frechet_distance_matches_scipy_sqrtm_on_random_spd(rng, dim):
    a = distribution.GaussianStatistics(rng.normal(size=dim), _random_spd(rng, dim))
    b = distribution.GaussianStatistics(rng.normal(size=dim), _random_spd(rng, dim))
    root = scipy.linalg.sqrtm(a.cov @ b.cov).real
    want = np.sum((a.mean - b.mean) ** 2) + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(root)
    assert distribution.frechet_distance(a, b) == pytest.approx(want, rel=1e-6)


def test_fid_from_features_uses_unbiased_covariance(rng):
    x, y = rng.normal(size=(50, 4)), rng.normal(1.0, 2.0, size=(60, 4))
    stats = distribution.feature_statistics(x)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False))
    want = distribution.frechet_distance(distribution.GaussianStatistics(x.mean(0), np.cov(x.T)),
                                         distribution.GaussianStatistics(y.mean(0), np.cov(y.T)))
    assert distribution.fid(x, y) == pytest.approx(want)


def test_fid_of_small_sets_takes_the_exact_low_rank_route(rng):
    x, y = rng.normal(size=(5, 12)), rng.normal(0.5, 1.5, size=(7, 12))  # fewer samples than dimensions
    want = distribution.frechet_distance(distribution.feature_statistics(x), distribution.feature_statistics(y))
    # rel 1e-7: the eigenvalue route adds sqrt(round-off) for each of the D - N zero eigenvalues.
    assert distribution.fid(x, y) == pytest.approx(want, rel=1e-7)


# --- KID: torch-fidelity's formula written out independently --------------------------------------------

def _torch_fidelity_kid(f1, f2, subsets, subset_size, seed):
    def mmd2(x, y):
        gamma = 1.0 / x.shape[1]
        k_xx, k_yy, k_xy = [(p @ q.T * gamma + 1) ** 3 for p, q in ((x, x), (y, y), (x, y))]
        m = k_xx.shape[0]
        kt_xx_sum = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
        kt_yy_sum = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
        return (kt_xx_sum + kt_yy_sum) / (m * (m - 1)) - 2 * k_xy.sum(axis=0).sum() / (m * m)

    rng = np.random.RandomState(seed)
    mmds = []
    for _ in range(subsets):
        a = f1[rng.choice(len(f1), subset_size, replace=False)]
        b = f2[rng.choice(len(f2), subset_size, replace=False)]
        mmds.append(mmd2(a, b))
    return np.mean(mmds), np.std(mmds)


def test_kid_matches_torch_fidelity_formula(rng):
    f1, f2 = rng.normal(size=(120, 16)), rng.normal(0.3, 1.2, size=(90, 16))
    got = distribution.kid(f1, f2, subsets=20, subset_size=50, seed=7)
    np.testing.assert_allclose(got, _torch_fidelity_kid(f1, f2, 20, 50, 7), rtol=1e-10)
    # Fewer samples than the subset size: subsets of min(n_a, n_b) rows.
    got = distribution.kid(f1, f2, subsets=5)
    np.testing.assert_allclose(got, _torch_fidelity_kid(f1, f2, 5, 90, distribution.KID_SEED), rtol=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two(rng):
    f1, f2 = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    mean_same, std_same = distribution.kid(f1, f2, subsets=10, subset_size=200)
    mean_far, _ = distribution.kid(f1, f2 + 1.0, subsets=10, subset_size=200)
    assert abs(mean_same) < 3 * std_same and mean_far > 10 * abs(mean_same)


# --- mIoU --------------------------------------------------------------------------------------------------

def test_confusion_matrix_and_miou_match_numpy(rng):
    classes = 5
    target = rng.integers(0, classes, size=(3, 16, 16))
    target[0, :4] = 255  # ignored pixels
    pred = np.where(rng.uniform(size=target.shape) < 0.6, target, rng.integers(0, classes, size=target.shape))
    pred[target == 255] = 0
    want = np.zeros((classes, classes), np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        if t != 255:
            want[t, p] += 1
    got = np.asarray(segmentation.confusion_matrix(pred, target, classes, ignore_index=255))
    np.testing.assert_array_equal(got, want)
    ious = [want[c, c] / (want[c].sum() + want[:, c].sum() - want[c, c]) for c in range(classes)]
    assert segmentation.miou(got) == pytest.approx(np.mean(ious))


def test_miou_skips_classes_absent_from_target_and_prediction():
    confusion = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    assert segmentation.miou(confusion) == pytest.approx((3 / 4 + 2 / 3) / 2)


# --- depth -------------------------------------------------------------------------------------------------

def _numpy_depth(pred, gt, min_depth, median_scaling):
    rows = []
    for p, g in zip(pred, gt):
        valid = g > min_depth
        p, g = p[valid], g[valid]
        if median_scaling:
            p = p * np.median(g) / np.median(p)
        p = np.clip(p, min_depth, None)
        thresh = np.maximum(p / g, g / p)
        rows.append([np.mean(np.abs(p - g) / g), np.mean((p - g) ** 2 / g), np.sqrt(np.mean((p - g) ** 2)),
                     np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)), np.mean(np.abs(np.log10(p) - np.log10(g))),
                     *[np.mean(thresh < 1.25 ** k) for k in (1, 2, 3)]])
    return np.array(rows)


@pytest.mark.parametrize("median_scaling", [False, True])
def test_depth_metrics_match_numpy(rng, median_scaling):
    gt = rng.uniform(0.5, 10, size=(3, 12, 10))
    gt[:, :3] = 0.0  # no ground truth there
    pred = gt * rng.uniform(0.7, 1.4, size=gt.shape) * (2.0 if median_scaling else 1.0)
    got = depth.depth_metrics(pred, gt, min_depth=1e-3, median_scaling=median_scaling)
    want = _numpy_depth(pred, gt, 1e-3, median_scaling)
    for column, name in enumerate(depth.DEPTH_METRICS):
        np.testing.assert_allclose(got[name], want[:, column], rtol=2e-5, err_msg=name)


# --- plugin selector ------------------------------------------------------------------------------------------

def _ml_gcn_ap(scores, labels):
    order = np.argsort(-scores, kind="stable")
    hits, total, precision_sum = 0, 0, 0.0
    for i in order:
        total += 1
        if labels[i]:
            hits += 1
            precision_sum += hits / total
    return precision_sum / hits


def test_selector_metrics_match_loops(rng):
    scores = rng.normal(size=(40, 6))
    labels = (scores + rng.normal(scale=1.0, size=scores.shape)) > 0.3
    got = multilabel.selector_metrics(scores, labels, threshold=0.0)
    assert got["mAP"] == pytest.approx(np.mean([_ml_gcn_ap(scores[:, k], labels[:, k]) for k in range(6)]))
    predicted = scores > 0
    tp = (predicted & labels).sum(0)
    cp, cr = np.mean(tp / predicted.sum(0)), np.mean(tp / labels.sum(0))
    op, o_r = tp.sum() / predicted.sum(), tp.sum() / labels.sum()
    assert got["CP"] == pytest.approx(cp) and got["CR"] == pytest.approx(cr)
    assert got["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert got["OP"] == pytest.approx(op) and got["OR"] == pytest.approx(o_r)
    assert got["OF1"] == pytest.approx(2 * op * o_r / (op + o_r))
    zta = np.mean([all(scores[i, j] > 0 for j in range(6) if labels[i, j])
                   and all(scores[i, k] <= 0 for k in range(6) if not labels[i, k]) for i in range(40)])
    assert got["ZTA"] == pytest.approx(zta)


def test_cosine_similarity(rng):
    a, b = rng.normal(size=(2, 4, 7))
    want = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(embedding.cosine_similarity(a, b), want, rtol=1e-5)
    assert float(embedding.cosine_similarity(np.zeros((1, 3)), np.ones((1, 3)))[0]) == 0.0


# --- streaming accumulation ---------------------------------------------------------------------------------

def test_streaming_accumulators_equal_one_shot_results(rng):
    pred, target = rng.integers(0, 4, size=(2, 6, 8, 8))
    confusion = streaming.ConfusionMatrix(4, ignore_index=None)
    for p, t in zip(pred, target):  # one image at a time
        confusion.add(p, t)
    np.testing.assert_array_equal(confusion.counts, segmentation.confusion_matrix(pred, target, 4, ignore_index=None))
    assert confusion.miou() == pytest.approx(segmentation.miou(confusion.counts))
    features = rng.normal(size=(30, 5))
    bank = streaming.FeatureBank()
    for chunk in np.split(features, [7, 19]):
        bank.add(chunk)
    assert len(bank) == 30
    np.testing.assert_allclose(bank.statistics().cov, np.cov(features.astype(np.float32), rowvar=False), rtol=1e-6)
