"""Endless batches of low-dimensional toy data drawn from `diffjax.toy` Gaussian mixtures.

Each step draws a fresh global batch with the key fold_in(fold_in(PRNGKey(seed), 0), step), so
the stream is deterministic and resumes exactly at any step; host p of P keeps rows
[p B/P, (p + 1) B/P) of it, so the global batch does not depend on the topology (drawing the
whole batch on every host costs B low-dimensional points). The label of a point is the index of
the mixture component it was drawn from.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import toy
from diffjax.data.pipeline import Batches, check_host, host_batch_size


def sample_labelled(
    key: jax.Array, mix: toy.GaussianMixture, n: int
) -> tuple[jax.Array, jax.Array]:
    """n points x [n, D] of the mixture and their components k [n].

    The draw of `toy.sample` (a component by its weight, then x = mu_k + L_k z with
    Sigma_k = L_k L_k^T, z ~ N(0, I)), done here as well because it also returns k.
    """
    comp_key, noise_key = jax.random.split(key)
    k = jax.random.categorical(comp_key, jnp.log(mix.weights), shape=(n,))  # [n]
    z = jax.random.normal(noise_key, (n, mix.dim), mix.means.dtype)  # [n, D]
    chol = jnp.linalg.cholesky(mix.covs)  # [K, D, D]
    return mix.means[k] + jnp.einsum("nij,nj->ni", chol[k], z), k


def toy_batches(
    preset: str,
    *,
    batch_size: int,
    seed: int = 0,
    preset_kwargs: dict | None = None,
    with_labels: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> Batches:
    """Batches {'x': float32 [b, D], 'label': int32 [b]} from `toy.PRESETS[preset]`.

    `batch_size` is global; each host yields its batch_size // process_count rows of it.
    """
    if preset not in toy.PRESETS:
        raise ValueError(f"unknown toy preset {preset!r}; expected one of {tuple(toy.PRESETS)}")
    check_host(process_index, process_count)
    per_host = host_batch_size(batch_size, process_count)
    mix = toy.PRESETS[preset](**(preset_kwargs or {}))
    # the trailing 0 keeps the stream of earlier single-host runs
    stream_key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    draw = jax.jit(functools.partial(sample_labelled, mix=mix, n=batch_size))
    rows = slice(process_index * per_host, (process_index + 1) * per_host)

    def batch_at(step: int) -> dict[str, np.ndarray]:
        x, k = draw(jax.random.fold_in(stream_key, step))
        x, k = x[rows], k[rows]
        out = {"x": np.asarray(x, np.float32)}
        if with_labels:
            out["label"] = np.asarray(k, np.int32)
        return out

    info = {
        "key": "x",
        "shape": (mix.dim,),
        "num_classes": int(mix.weights.shape[0]),
        "per_host_batch": per_host,
        "mixture": mix,
    }
    return Batches(batch_at, num_batches=None, start_step=start_step, info=info)
