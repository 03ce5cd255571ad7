"""Distances between two low-dimensional sample sets: sliced Wasserstein and unbiased RBF MMD."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from diffjax.typing import Array, ArrayLike


def _check_pair(x, y):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be [n, D] and [m, D]; got shapes {x.shape} and {y.shape}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"need at least 2 points in each set; got {x.shape[0]} and {y.shape[0]}")
    return x, y


def wasserstein_1d(u: Array, v: Array, p: float = 2.0) -> Array:
    """W_p^p between the empirical measures of u [P, n] and v [P, m], row by row -> [P].

    Exact for unequal sizes: W_p^p = int_0^1 |F_u^-1(q) - F_v^-1(q)|^p dq, integrated over the
    merged breakpoints {i/n} U {j/m} of the two step quantile functions.
    """
    n, m = u.shape[-1], v.shape[-1]
    u, v = jnp.sort(u, axis=-1), jnp.sort(v, axis=-1)
    q = jnp.sort(jnp.concatenate([jnp.arange(1, n + 1) / n, jnp.arange(1, m + 1) / m]))
    width = jnp.diff(jnp.concatenate([jnp.zeros((1,), q.dtype), q]))  # [n + m]
    mid = q - 0.5 * width
    iu = jnp.clip(jnp.floor(mid * n).astype(jnp.int32), 0, n - 1)
    iv = jnp.clip(jnp.floor(mid * m).astype(jnp.int32), 0, m - 1)
    return jnp.sum(width[None] * jnp.abs(u[:, iu] - v[:, iv]) ** p, axis=-1)


def sliced_wasserstein(
    key: Array, x: ArrayLike, y: ArrayLike, num_projections: int = 256, p: float = 2.0
) -> Array:
    """Sliced p-Wasserstein distance, (E_theta W_p^p(theta.x, theta.y))^(1/p), Monte Carlo over
    `num_projections` directions theta uniform on the sphere.

    Args:
      key: PRNG key for the directions; x: [n, D]; y: [m, D].
    Returns:
      a scalar. For N(m1, s1^2 I) and N(m2, s2^2 I) in D dims, SW_2^2 = |m1 - m2|^2 / D +
      (s1 - s2)^2 (each projection is a 1-D Gaussian pair).
    References: Bonneel et al. (2015), "Sliced and Radon Wasserstein barycenters", eq. 7.
    """
    x, y = _check_pair(x, y)
    if int(num_projections) < 1:
        raise ValueError(f"num_projections must be >= 1; got {num_projections!r}")
    theta = jax.random.normal(key, (int(num_projections), x.shape[1]), x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)  # [P, D]
    return jnp.mean(wasserstein_1d(theta @ x.T, theta @ y.T, p)) ** (1.0 / p)


def _median_bandwidths(x, y):
    z = jnp.concatenate([x, y], axis=0)
    d2 = jnp.sum((z[:, None] - z[None]) ** 2, axis=-1)
    med = jnp.sqrt(jnp.median(d2))
    return med * jnp.asarray([0.5, 1.0, 2.0], x.dtype)


def mmd(x: ArrayLike, y: ArrayLike, bandwidths: Sequence[float] | None = None) -> Array:
    """Unbiased squared MMD with a sum of RBF kernels k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)):

      MMD_u^2 = 1/(n(n-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
                - 2/(nm) sum_{i, j} k(x_i, y_j).

    Args:
      x: [n, D]; y: [m, D]; bandwidths: the h values (default: the median pairwise distance of
        the pooled sample times 0.5, 1, 2).
    Returns:
      a scalar, unbiased (it can be slightly negative when the distributions are equal).
    References: Gretton et al. (2012), "A kernel two-sample test", JMLR, Lemma 6, eq. 3.
    """
    x, y = _check_pair(x, y)
    h = _median_bandwidths(x, y) if bandwidths is None else jnp.asarray(bandwidths, x.dtype)
    if h.ndim != 1 or (not isinstance(h, jax.core.Tracer) and not bool(jnp.all(h > 0))):
        raise ValueError(f"bandwidths must be a 1-D sequence of positive numbers; got {bandwidths}")

    def gram(a, b):
        d2 = jnp.sum((a[:, None] - b[None]) ** 2, axis=-1)[..., None]  # [n, m, 1]
        return jnp.sum(jnp.exp(-d2 / (2.0 * h[None, None] ** 2)), axis=-1)  # [n, m]

    n, m = x.shape[0], y.shape[0]
    kxx = (jnp.sum(gram(x, x)) - n * h.shape[0]) / (n * (n - 1))  # diagonal k = len(h)
    kyy = (jnp.sum(gram(y, y)) - m * h.shape[0]) / (m * (m - 1))
    return kxx + kyy - 2.0 * jnp.mean(gram(x, y))
