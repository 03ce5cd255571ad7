"""The exact-Gaussian oracle of tests/helpers.py against identities it does not use (finite
differences, Tweedie's formula, precision-form Bayes), and diffjax.toy against the oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import toy
from tests.helpers import KINDS, PROCESSES, Gaussian, coeffs

G = Gaussian.random(3, seed=4)
TIMES = (0.1, 0.4, 0.75)


def _points(n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, G.d)) * 2.0


def test_score_is_the_gradient_of_the_log_density(x64):
    """Central differences of scipy's log N(x; a mu, C) (h = 1e-5, error O(h^2) ~ 1e-10)."""
    p, x, h = PROCESSES["vp"], _points(), 1e-5
    for t in TIMES:
        c = coeffs(p, t)
        grad = np.stack(
            [(G.logp(p, t, x + h * e) - G.logp(p, t, x - h * e)) / (2 * h) for e in np.eye(G.d)],
            axis=-1,
        )
        np.testing.assert_allclose(G.score_np(c["a"], c["s"], x), grad, rtol=1e-5, atol=1e-6)


def test_posterior_moments_by_tweedie_and_precision_form():
    """E[x0 | x_t] = (x_t + sigma^2 score) / alpha (Tweedie) and Cov[x0 | x_t]^-1 =
    Sigma^-1 + alpha^2 / sigma^2 I (precision form of Bayes' rule for a linear observation)."""
    x = _points()
    for a, s in ((0.9, 0.3), (0.5, 0.8), (0.05, 1.0)):
        tweedie = (x + s**2 * G.score_np(a, s, x)) / a
        np.testing.assert_allclose(G.posterior_mean_np(a, s, x), tweedie, rtol=1e-10, atol=1e-10)
        prec = np.linalg.inv(G.cov) + a**2 / s**2 * np.eye(G.d)
        np.testing.assert_allclose(G.posterior_cov_np(a, s), np.linalg.inv(prec), rtol=1e-10)
        tr, tr2 = G.posterior_trace(a, s)
        lam = np.linalg.eigvalsh(np.linalg.inv(prec))
        np.testing.assert_allclose([tr, tr2], [lam.sum(), (lam**2).sum()], rtol=1e-10)


def test_conditional_by_the_precision_matrix():
    """x_u | x_k: cov = (Lambda_uu)^-1, mean = mu_u - Lambda_uu^-1 Lambda_uk (x_k - mu_k)."""
    known, x_known = np.array([True, False, True]), np.array([0.7, -1.2])
    mean, cov = G.conditional(known, x_known)
    lam = np.linalg.inv(G.cov)
    u, k = ~known, known
    cov_ref = np.linalg.inv(lam[np.ix_(u, u)])
    mean_ref = G.mu[u] - cov_ref @ lam[np.ix_(u, k)] @ (x_known - G.mu[k])
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-10)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-10)


@pytest.mark.parametrize("name", ["vp", "ve", "rectified_flow", "trig"])
def test_flow_map_solves_the_probability_flow_ode(name, x64):
    """d/dt flow_map(t0, t, x) = velocity(flow_map(t0, t, x), t) (central differences), and the
    map pushes N(alpha_0 mu, C_0) forward to N(alpha_1 mu, C_1)."""
    p, x, h, t0 = PROCESSES[name], _points(), 1e-5, 0.2
    for t in (0.35, 0.6, 0.85):
        y = G.flow_map(p, t0, t, x)
        dy = (G.flow_map(p, t0, t + h, x) - G.flow_map(p, t0, t - h, x)) / (2 * h)
        c = coeffs(p, t)
        np.testing.assert_allclose(dy, G.prediction_np("velocity", c, y), rtol=1e-4, atol=1e-4)
        if float(p.sigma(0.0)) == 0.0:  # the consistency function is the flow map to t = 0
            tb = jnp.full((len(y),), t, jnp.float32)
            cm = G.consistency_model(p)(jnp.asarray(y, jnp.float32), tb)
            np.testing.assert_allclose(cm, G.flow_map(p, t, 0.0, y), rtol=1e-4, atol=1e-4)
    (a0, s0), (a1, s1) = (G._ac(p, t) for t in (t0, 0.9))
    m = G.flow_map(p, t0, 0.9, np.eye(G.d) + a0 * G.mu) - G.flow_map(p, t0, 0.9, a0 * G.mu[None])
    np.testing.assert_allclose(m.T @ G.cov_t(a0, s0) @ m, G.cov_t(a1, s1), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["vp", "ve", "discrete", "rectified_flow"])
def test_jax_model_matches_float64_closed_forms(name):
    p = PROCESSES[name]
    x = jnp.asarray(_points(6, seed=1), jnp.float32)
    t = jnp.asarray([0.05, 0.2, 0.4, 0.6, 0.8, 0.9], jnp.float32)
    names, fns = ("a", "s", "da", "ds"), (p.alpha, p.sigma, p.d_alpha, p.d_sigma)
    cs = np.stack([np.asarray(f(t), np.float64) for f in fns], -1)  # [B, 4]
    outs = jax.jit(lambda x, t: [G.model(p, kind)(x, t) for kind in KINDS])(x, t)
    for kind, out in zip(KINDS, outs, strict=True):
        ref = np.stack([G.prediction_np(kind, dict(zip(names, c, strict=True)), x[i : i + 1])[0]
                        for i, c in enumerate(cs)])  # fmt: skip
        np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-4, err_msg=kind)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "rectified_flow", "trig"])
def test_toy_exact_model_of_one_gaussian_matches_the_oracle(name):
    """diffjax.toy's mixture machinery (Cholesky factors, responsibilities, targets.from_x0_eps)
    with one component against the oracle's eigen-decomposition closed forms."""
    p = PROCESSES[name]
    mix = toy.gaussian(jnp.asarray(G.mu, jnp.float32), jnp.asarray(G.cov, jnp.float32))
    x = jnp.asarray(_points(5, seed=2), jnp.float32)
    t = jnp.asarray([0.1, 0.3, 0.5, 0.7, 0.85], jnp.float32)
    both = jax.jit(lambda x, t: [(toy.exact_model(mix, p, k)(x, t), G.model(p, k)(x, t))
                                 for k in KINDS] + [toy.log_prob_t(mix, p, x, t)])  # fmt: skip
    *pairs, logp = both(x, t)
    for kind, (got, want) in zip(KINDS, pairs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=kind)
    ref = [G.logp(p, float(ti), x[i : i + 1])[0] for i, ti in enumerate(t)]
    np.testing.assert_allclose(logp, ref, rtol=1e-5)


def test_random_and_sampling_are_reproducible():
    a, b = Gaussian.random(3, seed=4), G
    np.testing.assert_array_equal(a.cov, b.cov)
    x = G.sample(jax.random.PRNGKey(0), 20_000)
    np.testing.assert_allclose(np.cov(np.asarray(x, np.float64).T), G.cov, atol=0.06)
    with pytest.raises(ValueError, match="positive definite"):
        Gaussian(np.zeros(2), np.diag([1.0, -1.0]))
