"""Tests for FID statistics, the Frechet distance, KID and precision/recall."""

import os

import jax
import numpy as np
import pytest
import scipy.linalg

from diffjax.metrics.frechet import (
    cached_statistics,
    feature_statistics,
    fid,
    frechet_distance,
    trace_sqrt_product,
)
from diffjax.metrics.kid import kid, polynomial_mmd2
from diffjax.metrics.precision_recall import precision_recall


def _spd(rng, d, rank=None):
    w = rng.normal(size=(d, rank or d))
    return w @ w.T / d


# ---------------------------------------------------------------- Frechet distance


def test_fd_of_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(400, 16)) * 3.0 + 1.0
    mu, sigma = feature_statistics(feats)
    assert abs(fid(feats, feats)) < 1e-9 * np.trace(sigma)


def test_fd_commuting_covariances_closed_form():
    # Diagonal covariances commute: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    a, b = rng.uniform(0.1, 4.0, size=8), rng.uniform(0.1, 4.0, size=8)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))  # same rotation keeps them commuting
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    np.testing.assert_allclose(got, exact, rtol=1e-10)


def test_fd_non_commuting_matches_scipy_sqrtm():
    rng = np.random.default_rng(2)
    d = 20
    s1, s2 = _spd(rng, d), _spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    root = scipy.linalg.sqrtm(s1 @ s2)  # float64 reference, the classic FID code path
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * np.real(root))
    np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), exact, rtol=1e-9)


def test_trace_sqrt_product_rank_deficient_equals_nuclear_norm():
    # n < d: S_k = X_k^T X_k / (n - 1) (centred X_k) has rank n - 1. The non-zero eigenvalues
    # of S1 S2 are the squared singular values of X1 X2^T / (n - 1), so
    # tr((S1 S2)^(1/2)) = ||X1 X2^T||_* / (n - 1): an independent exact reference.
    rng = np.random.default_rng(3)
    n, d = 30, 64
    x1 = rng.normal(size=(n, d))
    x2 = x1 + 0.3 * rng.normal(size=(n, d))
    with pytest.warns(UserWarning, match="singular"):
        (_, s1), (_, s2) = feature_statistics(x1), feature_statistics(x2)
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    exact = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / (n - 1)
    got = trace_sqrt_product(s1, s2)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, exact, rtol=1e-6)
    # Identical singular covariances: distance 0 up to sqrt(eps)-sized round-off.
    assert frechet_distance(np.zeros(d), s1, np.zeros(d), s1) < 1e-5 * np.trace(s1)


def test_trace_sqrt_product_nearly_singular_spectrum():
    # Eigenvalues from 1 down to 1e-14 (shared eigenvectors): exact value sum sqrt(a b).
    rng = np.random.default_rng(4)
    d = 50
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = np.logspace(0, -14, d), np.logspace(-14, 0, d)[rng.permutation(d)]
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    got = trace_sqrt_product(s1, s2)
    np.testing.assert_allclose(got, np.sum(np.sqrt(a * b)), rtol=1e-6, atol=1e-7)


def test_feature_statistics_unbiased_and_errors():
    feats = np.random.default_rng(5).normal(size=(50, 4))
    mu, sigma = feature_statistics(feats)
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False, ddof=1), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_statistics(feats[:1])
    with pytest.raises(ValueError, match="shape"):
        feature_statistics(feats[0])
    with pytest.raises(ValueError, match="dimensions differ"):
        fid(feats, feats[:, :3])
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(mu, sigma[:3, :3], mu, sigma)


def test_feature_statistics_chunked_accumulation(monkeypatch):
    # Large N is accumulated in float64 chunks; with tiny chunks it must still equal np.cov.
    import diffjax.metrics.frechet as frechet

    monkeypatch.setattr(frechet, "_CHUNK", 7)
    feats = np.random.default_rng(13).normal(size=(60, 5)).astype(np.float32) + 100.0
    mu, sigma = feature_statistics(feats)
    ref = feats.astype(np.float64)
    np.testing.assert_allclose(mu, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(ref, rowvar=False), rtol=1e-10)


def test_cached_statistics_computes_once(tmp_path):
    feats = np.random.default_rng(6).normal(size=(40, 3))
    path = os.path.join(tmp_path, "sub", "stats.npz")
    calls = []

    def compute():
        calls.append(1)
        return feature_statistics(feats)

    mu, sigma = cached_statistics(path, compute)
    mu2, sigma2 = cached_statistics(path, lambda: pytest.fail("recomputed a cached file"))
    assert calls == [1] and os.path.exists(path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    bad = os.path.join(tmp_path, "bad.npz")
    with open(bad, "wb") as f:
        f.write(b"not an npz")
    with pytest.raises(ValueError, match="bad.npz"):
        cached_statistics(bad, compute)


# ---------------------------------------------------------------- KID


def _mmd2_numpy(x, y):
    """Independent float64 unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, by explicit loops."""
    m, d = x.shape
    k = lambda u, v: (u @ v / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2.0 * xy / m**2


def test_polynomial_mmd2_matches_numpy():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(24, 10)).astype(np.float32)
    y = (rng.normal(size=(24, 10)) + 0.5).astype(np.float32)
    got = float(jax.jit(polynomial_mmd2)(x, y))
    np.testing.assert_allclose(got, _mmd2_numpy(x.astype(np.float64), y), rtol=1e-4)


def test_kid_full_subsets_equal_full_estimate(key):
    # With subset_size = N every subset is a permutation of the whole set: each subset value
    # is the full-sample estimate, so the mean equals it and the std is ~0.
    rng = np.random.default_rng(8)
    x = rng.normal(size=(20, 6)).astype(np.float32)
    y = (rng.normal(size=(20, 6)) * 1.5).astype(np.float32)
    mean, std = kid(key, x, y, num_subsets=5, subset_size=20)
    np.testing.assert_allclose(float(mean), _mmd2_numpy(x.astype(np.float64), y), rtol=1e-4)
    assert float(std) < 1e-4 * abs(float(mean))


def test_kid_zero_for_same_distribution_positive_for_shift(key):
    # The estimator is unbiased, so under equal distributions the mean over subsets is
    # 0 +- (spread of one subset value); subsets overlap, so the average's spread is at most
    # that of one subset: |KID| < 3 std. A mean shift of 0.5 per dim gives MMD^2 well above 3 std.
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(2, 600, 16)).astype(np.float32)
    k1, k2 = jax.random.split(key)
    same, same_std = kid(k1, a, b, num_subsets=20, subset_size=200)
    assert abs(float(same)) < 3.0 * float(same_std)
    shifted, shifted_std = kid(k2, a, b + 0.5, num_subsets=20, subset_size=200)
    assert float(shifted) > 0 and float(shifted) > 3.0 * float(shifted_std)


def test_kid_bad_inputs(key):
    x = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="subset_size"):
        kid(key, x, x, subset_size=11)
    with pytest.raises(ValueError, match="same D"):
        kid(key, x, x[:, :3])


# ---------------------------------------------------------------- precision / recall


def _precision_recall_numpy(real, fake, k=3):
    """Brute-force float64 reference (Kynkaanniemi et al. 2019, Eqs. 1-3)."""
    d = lambda a, b: np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    r_real = np.sort(d(real, real), axis=1)[:, k]
    r_fake = np.sort(d(fake, fake), axis=1)[:, k]
    precision = np.mean(np.any(d(fake, real) <= r_real[None, :], axis=1))
    recall = np.mean(np.any(d(real, fake) <= r_fake[None, :], axis=1))
    return precision, recall


def test_precision_recall_identical_sets_are_one():
    feats = np.random.default_rng(10).normal(size=(100, 8))
    p, r = precision_recall(feats, feats)
    assert float(p) == 1.0 and float(r) == 1.0


def test_precision_recall_disjoint_clusters():
    # Real: 30 points in cluster A, 70 in cluster B. Fake: copies of the 30 A points and 20
    # points in a far cluster C. Precision = 30/50 (C is outside the real balls, whose radii
    # are cluster-sized), recall = 30/100 (B is outside every fake ball).
    rng = np.random.default_rng(11)
    a = rng.normal(size=(30, 4))
    b = rng.normal(size=(70, 4)) + 50.0
    c = rng.normal(size=(20, 4)) - 50.0
    p, r = precision_recall(np.concatenate([a, b]), np.concatenate([a, c]))
    np.testing.assert_allclose([float(p), float(r)], [0.6, 0.3], atol=1e-7)


def test_precision_recall_matches_numpy_reference():
    rng = np.random.default_rng(12)
    real = rng.normal(size=(150, 6))
    fake = rng.normal(size=(120, 6)) * 0.9 + 1.2
    p, r = precision_recall(real, fake, batch_size=32)
    p_ref, r_ref = _precision_recall_numpy(real, fake)
    # float32 vs float64 may flip a point lying on a ball's boundary: allow one point.
    assert abs(float(p) - p_ref) <= 1.0 / 120 + 1e-7
    assert abs(float(r) - r_ref) <= 1.0 / 150 + 1e-7
    assert 0.05 < p_ref < 0.95 and 0.05 < r_ref < 0.95  # the case is not degenerate


def test_precision_recall_bad_inputs():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="k = 3"):
        precision_recall(x, np.zeros((10, 2)))
    with pytest.raises(ValueError, match="same D"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
