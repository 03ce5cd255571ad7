"""diffjax.metrics.lowdim (used by the sampler tests) against closed forms and scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffjax.metrics.lowdim import mmd, sliced_wasserstein, wasserstein_1d


def test_wasserstein_1d_matches_scipy_unequal_sizes():
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal(37), rng.standard_normal(52) * 2 + 1
    got = wasserstein_1d(jnp.asarray(u)[None], jnp.asarray(v)[None], p=1.0)[0]
    np.testing.assert_allclose(got, stats.wasserstein_distance(u, v), rtol=1e-5)


def test_sliced_wasserstein_gaussians_closed_form():
    """For N(m1, s1^2 I) vs N(m2, s2^2 I) in D dims, every projection is a 1-D Gaussian pair and
    SW_2^2 = |m1 - m2|^2 / D + (s1 - s2)^2. Over random directions (theta.m)^2 = |m|^2 u^2 with
    u ~ U[-1, 1] in 3-D, sd |m|^2 sqrt(4/45) = 0.17 per direction, 0.0074 for 512 directions;
    with n = 5k points one projection's empirical W_2^2 has sd ~ 0.015 and bias O(log n / n).
    Tolerance 0.06 on SW_2^2 (about 4 combined standard deviations)."""
    kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
    d, n = 3, 5_000
    m = jnp.asarray([0.5, -0.5, 0.25])
    x = 0.5 * jax.random.normal(kx, (n, d))
    y = m[None] + 1.5 * jax.random.normal(ky, (n, d))
    expected = float(jnp.sum(m**2)) / d + 1.0
    got = float(sliced_wasserstein(kp, x, y, num_projections=512)) ** 2
    assert abs(got - expected) < 0.06, (got, expected)
    # 1-D: exact W_2 between the two Gaussians
    got1 = float(sliced_wasserstein(kp, x[:, :1], y[:, :1])) ** 2
    assert abs(got1 - (0.25 + 1.0)) < 0.06, got1


def test_mmd_closed_form_and_identical_distributions():
    """For x ~ N(0, s^2 I), y ~ N(mu, s^2 I) and an RBF kernel of bandwidth h,
    MMD^2 = 2 c (1 - exp(-|mu|^2 / (2 (h^2 + 2 s^2)))), c = (h^2 / (h^2 + 2 s^2))^(D/2).
    The unbiased estimator's sd is O(1/n) under the null and O(1/sqrt(n)) otherwise; n = 1000."""
    kx, ky, kz = jax.random.split(jax.random.PRNGKey(1), 3)
    n, d, s, h = 1000, 2, 1.0, 1.5
    mu = jnp.asarray([1.0, 0.5])
    x = s * jax.random.normal(kx, (n, d))
    y = mu[None] + s * jax.random.normal(ky, (n, d))
    c = (h**2 / (h**2 + 2 * s**2)) ** (d / 2)
    expected = 2 * c * (1 - np.exp(-float(jnp.sum(mu**2)) / (2 * (h**2 + 2 * s**2))))
    got = float(mmd(x, y, bandwidths=(h,)))
    assert abs(got - expected) < 0.03, (got, expected)
    null = float(mmd(x, s * jax.random.normal(kz, (n, d)), bandwidths=(h,)))
    assert abs(null) < 0.01, null
    assert abs(float(mmd(x[:500], x[500:]))) < 0.01  # default median-heuristic bandwidths


def test_bad_input_raises():
    with pytest.raises(ValueError, match="shapes"):
        mmd(jnp.zeros((5, 2)), jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(jnp.zeros((5, 2)), jnp.ones((5, 2)), bandwidths=(-1.0,))
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein(jax.random.PRNGKey(0), jnp.zeros((5, 2)), jnp.ones((5, 2)), 0)
