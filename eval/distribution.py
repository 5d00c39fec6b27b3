"""Distances between sets of image features: FID (Frechet distance of Gaussians) and KID (polynomial MMD).

Both run on the host in float64 NumPy: they are computed once per evaluation from (N, D) features, and their
results are small differences of large sums where float32 loses digits.
"""
from __future__ import annotations

import dataclasses

import numpy as np

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020  # torch-fidelity's default, so subsets (and results) match its `kid_*` outputs


@dataclasses.dataclass(frozen=True)
class GaussianStatistics:
    """Mean (D,) and covariance (D, D) of a feature set, the sufficient statistics of FID."""

    mean: np.ndarray
    cov: np.ndarray


def feature_statistics(features: np.ndarray) -> GaussianStatistics:
    """Mean and unbiased covariance (N - 1, as numpy.cov and pytorch-fid) of (N, D) features."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2; got {features.shape}")
    return GaussianStatistics(features.mean(axis=0), np.cov(features, rowvar=False))


def _check_feature_sets(features_a, features_b) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as float64 (N, D) arrays with N >= 2 and one D, or a ValueError saying which is not."""
    features_a, features_b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D; got {features_a.shape} and {features_b.shape}")
    if min(len(features_a), len(features_b)) < 2:
        raise ValueError(f"need at least 2 samples in each set; got {len(features_a)} and {len(features_b)}")
    return features_a, features_b


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric PSD matrix; round-off negative eigenvalues count as zero."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(a: GaussianStatistics, b: GaussianStatistics) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

    The trace of the matrix root is the sum of the roots of the eigenvalues of S_a S_b, which equal those of
    the symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2); two `eigh` calls replace `scipy.linalg.sqrtm`, never
    produce complex parts, and need no epsilon on the diagonal.
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature dimensions differ: {a.mean.shape} and {b.mean.shape}")
    root_a = _symmetric_sqrt(np.asarray(a.cov, np.float64))
    middle = root_a @ np.asarray(b.cov, np.float64) @ root_a
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    mean_term = np.sum(np.square(np.asarray(a.mean, np.float64) - np.asarray(b.mean, np.float64)))
    return float(mean_term + np.trace(a.cov) + np.trace(b.cov) - 2 * trace_sqrt)


def _fid_from_few_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID for sets smaller than the feature dimension, in O(N_a N_b D) instead of O(D^3).

    With centred features X_a (N_a, D) and S_a = X_a^T X_a / (N_a - 1), the non-zero eigenvalues of S_a S_b
    are the squared singular values of X_a X_b^T / sqrt((N_a - 1)(N_b - 1)), so tr((S_a S_b)^(1/2)) is that
    matrix's nuclear norm, and tr(S_a) = ||X_a||_F^2 / (N_a - 1). Exact, not an approximation.
    """
    centred_a = features_a - features_a.mean(axis=0)
    centred_b = features_b - features_b.mean(axis=0)
    scale_a, scale_b = len(features_a) - 1, len(features_b) - 1
    cross = centred_a @ centred_b.T / np.sqrt(scale_a * scale_b)
    trace_sqrt = np.sum(np.linalg.svd(cross, compute_uv=False))
    mean_term = np.sum(np.square(features_a.mean(axis=0) - features_b.mean(axis=0)))
    return float(mean_term + np.sum(np.square(centred_a)) / scale_a + np.sum(np.square(centred_b)) / scale_b
                 - 2 * trace_sqrt)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two (N, D) feature sets (Inception pool3 features for the standard metric).

    Sets with fewer samples than dimensions take the exact low-rank route (`_fid_from_few_features`).
    """
    features_a, features_b = _check_feature_sets(features_a, features_b)
    if max(len(features_a), len(features_b)) < features_a.shape[1]:
        return _fid_from_few_features(features_a, features_b)
    return frechet_distance(feature_statistics(features_a), feature_statistics(features_b))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of (m, D) and (m, D) features under k(u, v) = (u.v / D + 1)^3 (Binkowski et al. 2018)."""
    m, dim = x.shape
    k_xx = (x @ x.T / dim + 1) ** 3
    k_yy = (y @ y.T / dim + 1) ** 3
    k_xy = (x @ y.T / dim + 1) ** 3
    off_diagonal = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_diagonal - 2 * k_xy.sum() / (m * m))


def kid(features_a: np.ndarray, features_b: np.ndarray, *, subsets: int = KID_SUBSETS,
        subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED) -> tuple[float, float]:
    """KID as (mean, std) of the unbiased polynomial MMD^2 over random subsets (papers report x100).

    Each of `subsets` draws min(N_a, N_b, subset_size) rows without replacement from each set, in
    torch-fidelity's order (one numpy RandomState(seed), a-rows then b-rows per subset).
    """
    features_a, features_b = _check_feature_sets(features_a, features_b)
    size = min(len(features_a), len(features_b), subset_size)
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        rows_a = features_a[rng.choice(len(features_a), size, replace=False)]
        rows_b = features_b[rng.choice(len(features_b), size, replace=False)]
        values[i] = polynomial_mmd2(rows_a, rows_b)
    return float(values.mean()), float(values.std())
