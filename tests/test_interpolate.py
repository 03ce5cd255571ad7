"""Spherical interpolation of noises (DDIM interpolation, Song et al. 2021 app. D.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.interpolate import interpolation_noises, slerp


def test_slerp_endpoints_exact_and_equal_norms_preserved(key):
    k0, k1 = jax.random.split(key)
    z0 = jax.random.normal(k0, (3, 4, 4, 2))
    z1 = jax.random.normal(k1, (3, 4, 4, 2))
    alpha = jnp.linspace(0.0, 1.0, 7)
    path = jax.jit(slerp)(z0, z1, alpha)
    assert path.shape == (3, 7, 4, 4, 2)
    np.testing.assert_array_equal(path[:, 0], z0)
    np.testing.assert_array_equal(path[:, -1], z1)
    # on the great circle of two vectors of one norm r every point has norm r exactly
    r = jnp.linalg.norm(z0.reshape(3, -1), axis=-1)
    z1r = z1 * (r / jnp.linalg.norm(z1.reshape(3, -1), axis=-1))[:, None, None, None]
    norms = jnp.linalg.norm(slerp(z0, z1r, alpha).reshape(3, 7, -1), axis=-1)
    np.testing.assert_allclose(norms, jnp.broadcast_to(r[:, None], (3, 7)), rtol=1e-5)
    # the angle to z0 grows linearly in alpha: cos(angle) = cos(alpha theta)
    f0, f = z0.reshape(3, 1, -1), slerp(z0, z1r, alpha).reshape(3, 7, -1)
    cos = jnp.sum(f0 * f, -1) / (jnp.linalg.norm(f0, axis=-1) * jnp.linalg.norm(f, axis=-1))
    theta = jnp.arccos(cos[:, -1])
    np.testing.assert_allclose(cos, jnp.cos(alpha[None] * theta[:, None]), atol=2e-5)


def test_slerp_of_gaussian_noise_stays_on_the_gaussian_shell(key):
    """For z0, z1 ~ N(0, I_D) independent, |x(alpha)|^2 / D has mean 1 at every alpha (within
    4 standard errors over B pairs); the linear interpolation's is (1 - a)^2 + a^2 = 1/2 at
    a = 1/2, which the test tells apart."""
    b, d = 400, 256
    k0, k1 = jax.random.split(key)
    z0, z1 = jax.random.normal(k0, (b, d)), jax.random.normal(k1, (b, d))
    alpha = jnp.array([0.25, 0.5, 0.75])
    sq = np.asarray(jnp.sum(slerp(z0, z1, alpha) ** 2, -1) / d)  # [B, 3]
    mean, stderr = sq.mean(0), sq.std(0, ddof=1) / np.sqrt(b)
    assert np.all(np.abs(mean - 1.0) < 4 * stderr + 1e-3), (mean, stderr)
    linear = np.asarray(jnp.sum((0.5 * z0 + 0.5 * z1) ** 2, -1) / d)
    assert abs(linear.mean() - 0.5) < 0.02 and mean[1] - linear.mean() > 0.4


def test_slerp_parallel_inputs_and_bad_shapes(key):
    z = jax.random.normal(key, (2, 5))
    np.testing.assert_allclose(slerp(z, 2 * z, jnp.array([0.5]))[:, 0], 1.5 * z, rtol=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        slerp(z, z[:1], jnp.array([0.5]))
    with pytest.raises(ValueError, match="1-D"):
        slerp(z, z, 0.5)


def test_interpolation_noises_rows(key):
    x = interpolation_noises(key, (4, 4, 1), pairs=3, num=5)
    assert x.shape == (15, 4, 4, 1)
    rows = x.reshape(3, 5, -1)
    again = slerp(rows[:, 0], rows[:, -1], jnp.linspace(0.0, 1.0, 5))
    np.testing.assert_allclose(rows, again, atol=1e-5)
    with pytest.raises(ValueError, match="num >= 2"):
        interpolation_noises(key, (2,), pairs=1, num=1)
