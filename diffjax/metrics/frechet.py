"""Frechet distance between Gaussian fits of feature sets (FID), and a statistics cache.

The statistics are computed in float64 numpy on the host: a 2048 x 2048 covariance of
float32 features loses several digits otherwise, and FID is a small difference of large traces.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np

_CHUNK = 4096  # rows converted to float64 at a time (50k x 2048 float64 would be 800 MB)


def _as_features(features, name: str) -> np.ndarray:
    """Return `features` as a numeric [N, D] array (dtype kept), or raise ValueError."""
    arr = np.asarray(features)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array of shape [N, D]; got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(
            f"{name} needs at least 2 samples for a covariance; got N = {arr.shape[0]}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set.

    Args:
      features: [N, D] features (N >= 2), any float dtype; accumulated in float64 in chunks.

    Returns:
      (mu [D], sigma [D, D]) in float64; sigma = sum_i (f_i - mu)(f_i - mu)^T / (N - 1).

    Warns when N <= D: the covariance is then singular (rank <= N - 1), which
    `frechet_distance` handles, but FID from so few samples is strongly biased upwards.

    References:
      Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
      Nash Equilibrium", Sec. 3 (FID uses the first two moments of the Inception features).
    """
    arr = _as_features(features, "features")
    n, d = arr.shape
    if n <= d:
        warnings.warn(
            f"feature_statistics: N = {n} samples <= D = {d} dimensions; the covariance is "
            "singular and the Frechet distance is biased (use N >> D, e.g. 50k for FID)",
            stacklevel=2,
        )
    chunks = range(0, n, _CHUNK)
    mu = sum(arr[i : i + _CHUNK].astype(np.float64).sum(axis=0) for i in chunks) / n  # [D]
    sigma = np.zeros((d, d), dtype=np.float64)
    for i in chunks:
        centred = arr[i : i + _CHUNK].astype(np.float64) - mu  # [chunk, D]
        sigma += centred.T @ centred
    return mu, sigma / (n - 1)


def _check_stats(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: expected mu of shape [D] and sigma of shape [D, D]; "
            f"got {mu.shape} and {sigma.shape}"
        )
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{name}: mu or sigma contains non-finite values")
    return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigh, with negative round-off eigenvalues clipped to 0."""
    sym = 0.5 * (sigma + sigma.T)
    w, v = np.linalg.eigh(sym)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, stable when they are (nearly) singular.

    S1 S2 is similar to the symmetric PSD matrix M = S1^(1/2) S2 S1^(1/2), so its
    eigenvalues are real and non-negative and tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(M)).
    Both square roots use `eigh` (float64) with round-off negatives clipped to zero, so no
    complex parts or NaNs appear for rank-deficient covariances (N < D).
    """
    s1 = np.asarray(sigma1, dtype=np.float64)
    s2 = np.asarray(sigma2, dtype=np.float64)
    root1 = _psd_sqrt(s1)
    m = root1 @ (0.5 * (s2 + s2.T)) @ root1
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sum(np.sqrt(np.clip(lam, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    Args:
      mu1, mu2: [D] means.
      sigma1, sigma2: [D, D] covariances (symmetric PSD, possibly singular).

    Returns:
      The distance as a Python float (host computation in float64, not jit-able). Clipped at
      zero: negative values can only come from round-off.

    References:
      Dowson & Landau 1982 (the closed form); Heusel et al. 2017, Eq. (6) (FID).
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    tr = np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(diff @ diff + tr), 0.0)


def fid(features_a, features_b) -> float:
    """Frechet distance between Gaussian fits of two feature sets ([N_a, D] and [N_b, D]).

    With Inception-v3 pool features (see `diffjax.metrics.inception`) this is the FID of
    Heusel et al. 2017, Eq. (6).
    """
    a = _as_features(features_a, "features_a")
    b = _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def _load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            mu, sigma = data["mu"], data["sigma"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read statistics (mu, sigma) from {path!r}: {err}") from err
    return _check_stats(mu, sigma, f"statistics in {path!r}")


def cached_statistics(
    path: str | os.PathLike, compute_fn: Callable[[], tuple]
) -> tuple[np.ndarray, np.ndarray]:
    """Load (mu, sigma) from an .npz file, or compute them once and store them there.

    Args:
      path: the .npz file (e.g. `workdir/fid_stats_cifar10_train.npz`); its folder is created.
      compute_fn: called with no arguments only when `path` does not exist; returns
        (mu [D], sigma [D, D]), e.g. `lambda: feature_statistics(features_of_dataset())`.

    Returns:
      (mu, sigma) in float64. A file that exists but cannot be read raises ValueError naming
      it (delete it to recompute). The file is written atomically (temporary file + rename).
    """
    path = os.fspath(path)
    if os.path.exists(path):
        return _load_statistics(path)
    mu, sigma = _check_stats(*compute_fn(), "statistics returned by compute_fn")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, mu=mu, sigma=sigma)
    os.replace(tmp, path)
    return mu, sigma
