"""Improved precision and recall (k-NN manifold estimates in feature space)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared Euclidean distances [M, D], [N, D] -> [M, N], clipped at 0 (round-off)."""
    aa = jnp.sum(a * a, axis=-1)[:, None]  # [M, 1]
    bb = jnp.sum(b * b, axis=-1)[None, :]  # [1, N]
    return jnp.maximum(aa + bb - 2.0 * jnp.matmul(a, b.T, precision=_HIGHEST), 0.0)


@functools.partial(jax.jit, static_argnames=("k", "batch_size"))
def knn_radii(features: jax.Array, k: int = 3, batch_size: int = 256) -> jax.Array:
    """Squared distance from each point to its k-th nearest other point: [N, D] -> [N].

    The point itself is the nearest (distance 0), so this is the (k + 1)-th smallest entry
    of its distance row, as in Kynkaanniemi et al.'s reference.
    """

    def one(x):  # [D] -> []
        d2 = _sq_dists(x[None, :], features)[0]  # [N]
        return -jax.lax.top_k(-d2, k + 1)[0][k]

    return jax.lax.map(one, features, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def in_manifold(
    queries: jax.Array, support: jax.Array, radii: jax.Array, batch_size: int = 256
) -> jax.Array:
    """Whether each query lies in some support ball: ||q - s_j||^2 <= radii_j. -> [Q] bool."""

    def one(q):  # [D] -> []
        return jnp.any(_sq_dists(q[None, :], support)[0] <= radii)

    return jax.lax.map(one, queries, batch_size=batch_size)


def precision_recall(
    real_features, fake_features, *, k: int = 3, batch_size: int = 256
) -> tuple[jax.Array, jax.Array]:
    """Improved precision and recall of generated samples.

    The real manifold is the union of balls around each real feature with radius the distance
    to its k-th nearest real neighbour (likewise for the fake manifold):
      precision = fraction of fake samples inside the real manifold,
      recall    = fraction of real samples inside the fake manifold.

    Args:
      real_features: [N_r, D]; fake_features: [N_f, D] (N > k each).
      k: neighbourhood size (3 in the paper).
      batch_size: rows of the distance matrix held at once (memory vs speed).

    Returns:
      (precision, recall), scalars in [0, 1].

    References:
      Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
      Generative Models", Eqs. (1)-(3), k = 3.
    """
    real = jnp.asarray(real_features, dtype=jnp.float32)
    fake = jnp.asarray(fake_features, dtype=jnp.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"features must be [N, D] with the same D; got shapes {real.shape} and {fake.shape}"
        )
    if k < 1 or min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(
            f"k must satisfy 1 <= k < N for both sets; got k = {k}, "
            f"N_real = {real.shape[0]}, N_fake = {fake.shape[0]}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    real_radii = knn_radii(real, k, batch_size)  # [N_r]
    fake_radii = knn_radii(fake, k, batch_size)  # [N_f]
    precision = in_manifold(fake, real, real_radii, batch_size).mean()
    recall = in_manifold(real, fake, fake_radii, batch_size).mean()
    return precision, recall
