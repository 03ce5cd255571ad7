"""Spherical interpolation between two noises, for DDIM latent-space interpolation (Song et al.
2021, "Denoising Diffusion Implicit Models", sec. 5.4 and app. D.5).

With a deterministic sampler (DDIM at eta = 0, any probability-flow ODE solver) the sample is a
function of x_T; interpolating x_T between two draws gives a smooth path of samples. Linear
interpolation shrinks the norm of Gaussian noise (at alpha = 1/2 to about 1/sqrt(2) of it),
off the shell where N(0, I) concentrates; the spherical interpolation keeps it:

  x(alpha) = sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1,
  theta = arccos(<z0, z1> / (|z0| |z1|)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.typing import Array, ArrayLike, PRNGKey


def slerp(z0: ArrayLike, z1: ArrayLike, alpha: ArrayLike) -> Array:
    """Spherical interpolation of each example's noise (Song et al. 2021, app. D.5, eq. 67).

    Args:
      z0, z1: [B, ...] endpoints (flattened per example for the angle).
      alpha: [K] interpolation weights in [0, 1] (0 gives z0, 1 gives z1 exactly).
    Returns:
      [B, K, ...]: x(alpha_k) for every example and weight. Where z0 and z1 are (numerically)
      parallel, sin(theta) -> 0 and the linear interpolation is returned instead.
    """
    z0, z1, alpha = jnp.asarray(z0), jnp.asarray(z1), jnp.asarray(alpha)
    if z0.shape != z1.shape or z0.ndim < 1:
        raise ValueError(f"slerp needs z0 and z1 of one shape [B, ...]; got {z0.shape}, {z1.shape}")
    if alpha.ndim != 1:
        raise ValueError(f"alpha must be a 1-D array [K] of weights; got shape {alpha.shape}")
    b = z0.shape[0]
    f0, f1 = z0.reshape(b, -1), z1.reshape(b, -1)  # [B, D]
    cos = jnp.sum(f0 * f1, -1) / (jnp.linalg.norm(f0, axis=-1) * jnp.linalg.norm(f1, axis=-1))
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))[:, None]  # [B, 1]
    a = alpha[None, :]  # [1, K]
    sin = jnp.sin(theta)
    parallel = sin < 1e-6
    safe = jnp.where(parallel, 1.0, sin)
    w0 = jnp.where(parallel, 1.0 - a, jnp.sin((1.0 - a) * theta) / safe)  # [B, K]
    w1 = jnp.where(parallel, a, jnp.sin(a * theta) / safe)
    # exact endpoints: the weights at alpha = 0 and 1 are (1, 0) and (0, 1) up to rounding
    w0 = jnp.where(a == 0.0, 1.0, jnp.where(a == 1.0, 0.0, w0))
    w1 = jnp.where(a == 0.0, 0.0, jnp.where(a == 1.0, 1.0, w1))
    out = w0[..., None] * f0[:, None] + w1[..., None] * f1[:, None]  # [B, K, D]
    return out.reshape(b, alpha.shape[0], *z0.shape[1:])


def interpolation_noises(key: PRNGKey, shape: tuple[int, ...], pairs: int, num: int) -> Array:
    """`pairs` pairs of N(0, I) noises of one example's `shape`, each slerped at `num` evenly
    spaced weights alpha = 0, 1 / (num - 1), ..., 1: [pairs * num, *shape], row-major (pair i
    is rows i * num .. i * num + num - 1), to be used as `sample(..., x_init=)`."""
    if num < 2 or pairs < 1:
        raise ValueError(f"interpolation needs num >= 2 points and pairs >= 1; got {num}, {pairs}")
    k0, k1 = jax.random.split(key)
    z0 = jax.random.normal(k0, (pairs, *shape))
    z1 = jax.random.normal(k1, (pairs, *shape))
    path = slerp(z0, z1, jnp.linspace(0.0, 1.0, num))  # [pairs, num, ...]
    return path.reshape(pairs * num, *shape)
