"""marginal and posterior against Monte Carlo, Bayes' rule by quadrature, and Ho et al. eq. 7."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import kernels, schedules
from tests.helpers import PROCESSES as ALL


def test_marginal_moments(key):
    p, N = diffjax.vp(), 100_000
    x0 = jnp.full((N, 2), 1.5)
    t = jnp.full((N,), 0.4)
    xt, eps = diffjax.marginal(key, p, x0, t)
    a, s = float(p.alpha(0.4)), float(p.sigma(0.4))
    np.testing.assert_allclose(xt, a * x0 + s * eps, rtol=1e-6)
    assert abs(float(xt.mean()) - 1.5 * a) < 5 * s / np.sqrt(2 * N)
    assert abs(float(xt.var()) - s**2) < 5 * s**2 * np.sqrt(2 / (2 * N))


@pytest.mark.parametrize("name", ALL)
def test_posterior_matches_bayes_rule_by_quadrature(name, x64, maybe_jit):
    """q(x_s | x_t, x0) ∝ q(x_s | x0) q(x_t | x_s): integrate on a fine grid in float64."""
    p = ALL[name]
    x0, x_t = np.array([[0.8]]), np.array([[-0.3]])
    posterior = maybe_jit(lambda *args: diffjax.posterior(p, *args))
    for s_val, t_val in [(0.1, 0.35), (0.4, 0.8), (0.5005, 0.5015)]:
        s, t = np.array([s_val]), np.array([t_val])
        mean, var = posterior(x0, x_t, s, t)
        a_s, sig_s = float(p.alpha(s_val)), float(p.sigma(s_val))
        a_ts, v_ts = (float(v[0]) for v in diffjax.transition(p, s, t))
        grid = np.linspace(a_s * 0.8 - 12 * sig_s, a_s * 0.8 + 12 * sig_s, 200_001)
        logw = -0.5 * (grid - a_s * 0.8) ** 2 / sig_s**2 - 0.5 * (-0.3 - a_ts * grid) ** 2 / v_ts
        w = np.exp(logw - logw.max())
        w /= w.sum()
        m_num = float(np.sum(w * grid))
        v_num = float(np.sum(w * (grid - m_num) ** 2))
        np.testing.assert_allclose(float(mean[0, 0]), m_num, rtol=1e-6, atol=1e-8 * sig_s)
        np.testing.assert_allclose(float(var.ravel()[0]), v_num, rtol=1e-4)


def test_posterior_on_ddpm_grid_matches_ho_eq7(x64, maybe_jit):
    T = 100
    betas = schedules.linear_betas(T, 1e-4, 0.02 * 10)
    p = diffjax.discrete(betas)
    abar = np.concatenate([[1.0], np.cumprod(1 - betas)])
    n = np.array([1, 2, 37, 100])
    x0 = np.array([[0.3], [-1.0], [0.5], [2.0]])
    xt = np.array([[0.1], [0.4], [-0.2], [1.0]])
    mean, var = maybe_jit(lambda *args: diffjax.posterior(p, *args))(x0, xt, (n - 1) / T, n / T)
    b, ab, ab_prev = betas[n - 1], abar[n], abar[n - 1]
    mu = (np.sqrt(ab_prev) * b / (1 - ab))[:, None] * x0 + (
        np.sqrt(1 - b) * (1 - ab_prev) / (1 - ab)
    )[:, None] * xt
    np.testing.assert_allclose(mean, mu, rtol=1e-10)
    np.testing.assert_allclose(var.ravel(), (1 - ab_prev) / (1 - ab) * b, rtol=1e-9, atol=1e-300)


def test_posterior_at_s_zero_is_the_data():
    p = diffjax.vp()
    x0 = jnp.array([[0.3, 0.2]])
    mean, var = diffjax.posterior(
        p, x0, jnp.array([[1.0, -1.0]]), jnp.array([0.0]), jnp.array([0.5])
    )
    np.testing.assert_allclose(mean, x0, rtol=1e-6)
    assert float(var.max()) == 0.0


def test_learned_variance_interpolates_between_the_extremes():
    p = diffjax.discrete(schedules.linear_betas(1000))
    s, t = jnp.array([0.2]), jnp.array([0.201])
    _, large = diffjax.transition(p, s, t)
    _, small = diffjax.posterior(p, jnp.zeros((1, 1)), jnp.zeros((1, 1)), s, t)
    lo = kernels.learned_log_variance(p, -jnp.ones((1, 1)), s, t)
    hi = kernels.learned_log_variance(p, jnp.ones((1, 1)), s, t)
    mid = kernels.learned_log_variance(p, jnp.zeros((1, 1)), s, t)
    np.testing.assert_allclose(jnp.exp(lo).ravel(), small.ravel(), rtol=1e-4)
    np.testing.assert_allclose(jnp.exp(hi).ravel(), large, rtol=1e-4)
    np.testing.assert_allclose(mid, 0.5 * (lo + hi), rtol=1e-6)
    with pytest.raises(ValueError, match="even channel"):
        kernels.split_learned_variance(jnp.zeros((1, 3)))


def test_bad_shapes_raise(key):
    p = diffjax.vp()
    with pytest.raises(ValueError, match=r"t.shape"):
        diffjax.marginal(key, p, jnp.zeros((4, 2)), jnp.zeros((3,)))
    with pytest.raises(ValueError, match=r"t.shape"):
        diffjax.marginal(key, p, jnp.zeros((4, 2)), jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="t must lie in"):
        diffjax.marginal(key, p, jnp.zeros((2, 2)), jnp.array([0.5, 1.2]))
    with pytest.raises(ValueError, match="same shape"):
        diffjax.posterior(p, jnp.zeros((2, 2)), jnp.zeros((2, 3)), jnp.zeros(2), jnp.ones(2))


def test_jit_compatible(key):
    p = diffjax.cosine()
    f = jax.jit(lambda k, x, t: diffjax.marginal(k, p, x, t)[0])
    x = jnp.ones((3, 2))
    np.testing.assert_allclose(
        f(key, x, jnp.full((3,), 0.3)),
        diffjax.marginal(key, p, x, jnp.full((3,), 0.3))[0],
        rtol=1e-6,
    )
