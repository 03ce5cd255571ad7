"""Low-dimensional Gaussian mixtures with exact marginals, scores and denoisers at every t.

For data x0 ~ sum_k w_k N(mu_k, Sigma_k) and x_t = alpha_t x0 + sigma_t eps, the marginal is
again a mixture: p_t = sum_k w_k N(alpha_t mu_k, C_k(t)), C_k(t) = alpha_t^2 Sigma_k + sigma_t^2 I.
Everything below (log-density, score, E[x0 | x_t], E[eps | x_t]) follows from that closed form
through Cholesky factors of C_k and log-sum-exp responsibilities, so it is exact for every process
and every t, including t = 0 (C_k = Sigma_k) and alpha_t = 0 (C_k = sigma_t^2 I).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from diffjax import targets
from diffjax.checks import check_batch_time, check_choice
from diffjax.processes import Process
from diffjax.typing import PREDICTION_KINDS, Array, ArrayLike, ModelFn


class GaussianMixture(NamedTuple):
    """A mixture of K full-covariance Gaussians in D dimensions (a pytree of arrays).

    Attributes:
      weights: [K] mixture weights, positive, summing to 1.
      means: [K, D] component means.
      covs: [K, D, D] symmetric positive-definite component covariances.
    """

    weights: Array  # [K]
    means: Array  # [K, D]
    covs: Array  # [K, D, D]

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    def mean(self) -> Array:
        """Mixture mean sum_k w_k mu_k, [D]."""
        return self.weights @ self.means

    def cov(self) -> Array:
        """Mixture covariance sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T, [D, D]."""
        m = self.mean()
        second = jnp.einsum("k,kij->ij", self.weights, self.covs)
        second = second + jnp.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return second - jnp.outer(m, m)


def gaussian_mixture(weights: ArrayLike, means: ArrayLike, covs: ArrayLike) -> GaussianMixture:
    """Validated constructor; weights are normalised to sum to 1.

    Args:
      weights: [K] positive weights (any positive scale).
      means: [K, D].
      covs: [K, D, D] symmetric positive definite.
    Raises:
      ValueError: on mismatched shapes, non-positive weights or a covariance that is not SPD.
    """
    w = np.asarray(weights, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    cov = np.asarray(covs, dtype=np.float64)
    if (
        w.ndim != 1
        or mu.ndim != 2
        or cov.ndim != 3
        or not (w.shape[0] == mu.shape[0] == cov.shape[0])
    ):
        raise ValueError(
            f"need weights [K], means [K, D], covs [K, D, D]; got shapes {w.shape}, {mu.shape}, "
            f"{cov.shape}"
        )
    if cov.shape[1:] != (mu.shape[1], mu.shape[1]):
        raise ValueError(f"covs must be [K, D, D] with D = {mu.shape[1]}; got {cov.shape}")
    if not (np.all(np.isfinite(w)) and np.all(w > 0)):
        raise ValueError(f"mixture weights must be positive and finite; got {w}")
    if not np.allclose(cov, np.swapaxes(cov, 1, 2), rtol=1e-6, atol=1e-9):
        raise ValueError("covs must be symmetric")
    for k, c in enumerate(cov):
        if np.linalg.eigvalsh(c).min() <= 0:
            raise ValueError(
                f"covs[{k}] is not positive definite; eigenvalues {np.linalg.eigvalsh(c)}"
            )
    dt = jnp.float32
    return GaussianMixture(jnp.asarray(w / w.sum(), dt), jnp.asarray(mu, dt), jnp.asarray(cov, dt))


def gaussian(mean: ArrayLike, cov: ArrayLike) -> GaussianMixture:
    """A single Gaussian N(mean, cov) as a one-component mixture (mean [D], cov [D, D])."""
    return gaussian_mixture([1.0], np.asarray(mean)[None], np.asarray(cov)[None])


def ring(k: int = 8, radius: float = 2.0, std: float = 0.25) -> GaussianMixture:
    """K equal isotropic Gaussians (std `std`) evenly spaced on a circle of `radius` in 2-D."""
    if int(k) != k or k < 1:
        raise ValueError(f"ring needs an integer k >= 1; got k = {k!r}")
    if not (radius >= 0 and std > 0):
        raise ValueError(f"ring needs radius >= 0 and std > 0; got radius={radius!r}, std={std!r}")
    angle = 2 * np.pi * np.arange(k) / k
    means = radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    return gaussian_mixture(np.ones(k), means, np.tile(std**2 * np.eye(2), (k, 1, 1)))


def random_mixture(seed: int = 0, k: int = 3, dim: int = 2, scale: float = 2.0) -> GaussianMixture:
    """A reproducible K-component mixture with random weights, means and full covariances.

    Means are N(0, scale^2 I); covariances are A A^T / D + 0.05 I with A standard normal, so they
    are anisotropic and well conditioned. Drawn with numpy (a fixed preset, not a random function).
    """
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, size=k)
    means = scale * rng.standard_normal((k, dim))
    a = rng.standard_normal((k, dim, dim)) * 0.6
    covs = a @ np.swapaxes(a, 1, 2) / dim + 0.05 * np.eye(dim)
    return gaussian_mixture(weights, means, covs)


def sample(key: Array, mix: GaussianMixture, n: int) -> Array:
    """n samples [n, D]: a component by its weight, then mu_k + L_k z with Sigma_k = L_k L_k^T."""
    comp_key, noise_key = jax.random.split(key)
    k = jax.random.categorical(comp_key, jnp.log(mix.weights), shape=(n,))  # [n]
    z = jax.random.normal(noise_key, (n, mix.dim), mix.means.dtype)  # [n, D]
    chol = jnp.linalg.cholesky(mix.covs)  # [K, D, D]
    return mix.means[k] + jnp.einsum("nij,nj->ni", chol[k], z)


def marginal(mix: GaussianMixture, process: Process, t: ArrayLike) -> GaussianMixture:
    """The mixture p_t at scalar t: means alpha_t mu_k, covs alpha_t^2 Sigma_k + sigma_t^2 I."""
    alpha, sigma = process.alpha(t), process.sigma(t)
    if jnp.ndim(alpha) != 0:
        raise ValueError(f"marginal takes a scalar t; got t of shape {jnp.shape(t)}")
    eye = jnp.eye(mix.dim, dtype=mix.covs.dtype)[None]  # [1, D, D]
    return GaussianMixture(mix.weights, alpha * mix.means, alpha**2 * mix.covs + sigma**2 * eye)


class _Posterior(NamedTuple):
    log_prob: Array  # [B]   log p_t(x_t)
    score: Array  # [B, D] grad log p_t(x_t)
    x0: Array  # [B, D]    E[x0 | x_t]
    eps: Array  # [B, D]   E[eps | x_t]


@jax.jit
def _posterior(mix: GaussianMixture, alpha: Array, sigma: Array, x: Array) -> _Posterior:
    """Exact mixture posterior quantities at per-example (alpha [B], sigma [B]), x [B, D]."""
    d = mix.dim
    a, s = alpha[:, None, None, None], sigma[:, None, None, None]  # [B, 1, 1, 1]
    eye = jnp.eye(d, dtype=x.dtype)[None, None]
    cov_t = a**2 * mix.covs[None] + s**2 * eye  # [B, K, D, D]
    chol = jnp.linalg.cholesky(cov_t)
    diff = x[:, None, :] - alpha[:, None, None] * mix.means[None]  # [B, K, D]
    z = solve_triangular(chol, diff[..., None], lower=True)  # [B, K, D, 1]
    prec_diff = solve_triangular(chol, z, lower=True, trans="T")[
        ..., 0
    ]  # C^-1 (x - a mu) [B, K, D]
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)  # [B, K]
    log_comp = -0.5 * (jnp.sum(z[..., 0] ** 2, axis=-1) + log_det + d * math.log(2 * math.pi))
    log_joint = jnp.log(mix.weights)[None] + log_comp  # [B, K]
    log_prob = jax.scipy.special.logsumexp(log_joint, axis=-1)  # [B]
    resp = jnp.exp(log_joint - log_prob[:, None])[..., None]  # [B, K, 1]
    score = -jnp.sum(resp * prec_diff, axis=1)  # [B, D]
    # E[x0 | x_t, k] = mu_k + alpha Sigma_k C_k^-1 (x_t - alpha mu_k)
    x0_k = mix.means[None] + alpha[:, None, None] * jnp.einsum("kij,bkj->bki", mix.covs, prec_diff)
    # E[eps | x_t, k] = sigma C_k^-1 (x_t - alpha mu_k), so E[eps | x_t] = -sigma * score
    return _Posterior(log_prob, score, jnp.sum(resp * x0_k, axis=1), -sigma[:, None] * score)


def _at(mix: GaussianMixture, process: Process, x_t: ArrayLike, t: ArrayLike) -> _Posterior:
    x_t = jnp.asarray(x_t)
    if x_t.ndim != 2 or x_t.shape[-1] != mix.dim:
        raise ValueError(f"x_t must have shape [B, {mix.dim}]; got {x_t.shape}")
    check_batch_time(t, x_t)
    t = jnp.asarray(t, x_t.dtype)
    return _posterior(mix, process.alpha(t), process.sigma(t), x_t)


def log_prob(mix: GaussianMixture, x: ArrayLike) -> Array:
    """log p_0(x) of the data mixture, x [n, D] -> [n]."""
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[-1] != mix.dim:
        raise ValueError(f"x must have shape [n, {mix.dim}]; got {x.shape}")
    ones = jnp.ones(x.shape[:1], x.dtype)
    return _posterior(mix, ones, 0.0 * ones, x).log_prob


def log_prob_t(mix: GaussianMixture, process: Process, x_t: ArrayLike, t: ArrayLike) -> Array:
    """log p_t(x_t) of the marginal at per-example times: x_t [B, D], t [B] -> [B]."""
    return _at(mix, process, x_t, t).log_prob


def score(mix: GaussianMixture, process: Process, x_t: ArrayLike, t: ArrayLike) -> Array:
    """grad_x log p_t(x_t) = -sum_k r_k(x_t) C_k^-1 (x_t - alpha mu_k), [B, D] (t [B])."""
    return _at(mix, process, x_t, t).score


def denoiser(mix: GaussianMixture, process: Process, x_t: ArrayLike, t: ArrayLike) -> Array:
    """E[x0 | x_t] (Tweedie: = (x_t + sigma^2 score) / alpha where alpha > 0), [B, D].

    References: Efron (2011), "Tweedie's formula and selection bias", eq. 2.8.
    """
    return _at(mix, process, x_t, t).x0


def exact_model(mix: GaussianMixture, process: Process, prediction: str = "eps") -> ModelFn:
    """The Bayes-optimal model `model(x_t, t)` of the given prediction kind for this mixture.

    The pair (E[x0 | x_t], E[eps | x_t]) is exact, and the kind is formed from it by
    `targets.from_x0_eps` (or, for 'score', returned directly), so no division by alpha or sigma
    happens here: the model is finite at t = 0 and at alpha_t = 0.
    """
    check_choice(prediction, PREDICTION_KINDS, "prediction kind")

    def model(x_t: Array, t: Array) -> Array:
        post = _at(mix, process, x_t, t)
        if prediction == "score":
            return post.score
        t = jnp.asarray(t, post.x0.dtype)
        return targets.from_x0_eps(post.x0, post.eps, prediction, t, process)

    return model


PRESETS = {"ring": ring, "random": random_mixture}
