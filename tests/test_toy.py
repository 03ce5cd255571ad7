"""Tests of diffjax.toy against scipy (float64), finite differences and Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffjax import processes, schedules, toy

PROCS = {
    "vp": processes.vp(),
    "subvp": processes.subvp(),
    "ve": processes.ve(),
    "cosine": processes.cosine(),
    "discrete": processes.discrete(schedules.linear_betas(100)),
    "rectified_flow": processes.rectified_flow(),
    "trig": processes.trig(),
}


def _f64(mix):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), mix)


def _scipy_logpdf(weights, means, covs, x):
    comps = [
        np.log(w) + stats.multivariate_normal(m, c).logpdf(x)
        for w, m, c in zip(weights, means, covs, strict=True)
    ]
    return np.logaddexp.reduce(np.stack(comps, axis=0), axis=0)


def test_log_prob_matches_scipy():
    mix = toy.random_mixture(1, k=4, dim=3)
    x = np.random.default_rng(0).standard_normal((7, 3)) * 2
    expected = _scipy_logpdf(*[np.asarray(a, np.float64) for a in mix], x)
    np.testing.assert_allclose(toy.log_prob(mix, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(PROCS))
def test_log_prob_t_matches_scipy_marginal(name):
    """p_t is the mixture with means alpha mu_k and covs alpha^2 Sigma_k + sigma^2 I (numpy)."""
    process, mix = PROCS[name], toy.random_mixture(2, k=3, dim=2)
    x = np.random.default_rng(1).standard_normal((5, 2)) * 2
    for t in (0.0, 0.3, 0.97, 1.0):
        a, s = float(process.alpha(t)), float(process.sigma(t))
        w, mu, cov = (np.asarray(v, np.float64) for v in mix)
        expected = _scipy_logpdf(w, a * mu, a**2 * cov + s**2 * np.eye(2), x)
        got = toy.log_prob_t(mix, process, x, jnp.full((5,), t))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        marg = toy.marginal(mix, process, t)
        np.testing.assert_allclose(marg.covs, a**2 * cov + s**2 * np.eye(2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["vp", "ve", "discrete", "rectified_flow"])
def test_score_is_gradient_of_log_prob_t(x64, name):
    """Central differences of log_prob_t in float64 (truncation error O(h^2) ~ 1e-10)."""
    process, mix = PROCS[name], _f64(toy.random_mixture(3, k=3, dim=2))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((6, 2)) * 2)
    t = jnp.asarray([0.0, 0.05, 0.3, 0.6, 0.9, 1.0])
    h = 1e-5
    logp = lambda y: toy.log_prob_t(mix, process, y, t)  # noqa: E731
    fd = jnp.stack(
        [(logp(x + h * e[None]) - logp(x - h * e[None])) / (2 * h) for e in jnp.eye(2)], -1
    )
    np.testing.assert_allclose(toy.score(mix, process, x, t), fd, rtol=1e-6, atol=1e-6)


def test_denoiser_single_gaussian_closed_form(x64):
    """For x0 ~ N(m, S): E[x0 | x_t] = m + a S (a^2 S + s^2 I)^-1 (x_t - a m) (numpy)."""
    m, S = np.array([1.0, -2.0]), np.array([[2.0, 0.6], [0.6, 0.5]])
    mix, process = _f64(toy.gaussian(m, S)), PROCS["vp"]
    x = np.random.default_rng(3).standard_normal((4, 2))
    t = np.array([0.1, 0.4, 0.7, 1.0])
    a, s = np.asarray(process.alpha(t)), np.asarray(process.sigma(t))
    expected = [
        m + ai * S @ np.linalg.solve(ai**2 * S + si**2 * np.eye(2), xi - ai * m)
        for ai, si, xi in zip(a, s, x, strict=True)
    ]
    got = toy.denoiser(mix, process, jnp.asarray(x), jnp.asarray(t))
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-6, atol=1e-6)  # f32-stored inputs


def test_denoiser_mixture_monte_carlo():
    """E[x0 | x_t] by self-normalised importance sampling from the prior (numpy, n = 200k);
    tolerance 5 standard errors with the effective sample size of the weights."""
    mix, process = toy.ring(k=4, radius=2.0, std=0.5), PROCS["vp"]
    t = 0.5
    a, s = float(process.alpha(t)), float(process.sigma(t))
    x0 = np.asarray(toy.sample(jax.random.PRNGKey(1), mix, 200_000), np.float64)
    for xt in ([0.5, 0.3], [-1.0, 1.2]):
        logw = -0.5 * np.sum((np.asarray(xt) - a * x0) ** 2, axis=-1) / s**2
        w = np.exp(logw - logw.max())
        w /= w.sum()
        est = w @ x0
        ess = 1.0 / np.sum(w**2)
        se = np.sqrt(w @ (x0 - est) ** 2 / ess)
        got = toy.denoiser(mix, process, jnp.asarray([xt]), jnp.asarray([t]))[0]
        assert np.all(np.abs(np.asarray(got) - est) < 5 * se + 1e-4), (got, est, se)


@pytest.mark.parametrize("name", ["subvp", "ve", "trig"])
@pytest.mark.parametrize("kind", ["eps", "x0", "v", "score", "velocity"])
def test_exact_model_kinds_agree(name, kind):
    """Each kind converts back to the same eps, and velocity = f x - g2/2 score (Song et al. 2021,
    eq. 13), an identity computed here from process.sde independently of targets."""
    process, mix = PROCS[name], toy.random_mixture(4, k=3, dim=2)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((5, 2)), jnp.float32)
    t = jnp.asarray([0.05, 0.2, 0.5, 0.8, 0.95])
    from diffjax import targets

    eps = toy.exact_model(mix, process, "eps")(x, t)
    out = toy.exact_model(mix, process, kind)(x, t)
    np.testing.assert_allclose(
        targets.convert(out, kind, "eps", x, t, process), eps, rtol=2e-3, atol=2e-3
    )
    f, g2 = process.sde(t)
    vel = f[:, None] * x - 0.5 * g2[:, None] * toy.score(mix, process, x, t)
    got = toy.exact_model(mix, process, "velocity")(x, t)
    np.testing.assert_allclose(got, vel, rtol=2e-3, atol=2e-3 * float(jnp.max(jnp.abs(vel))))


def test_exact_model_finite_where_alpha_is_zero():
    process, mix = PROCS["rectified_flow"], toy.ring()
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 2))
    t = jnp.ones((6,))
    for kind in ("x0", "v", "velocity", "eps"):
        assert np.all(np.isfinite(toy.exact_model(mix, process, kind)(x, t)))
    # at alpha = 0 nothing is known about x0: its posterior mean is the data mean
    np.testing.assert_allclose(
        toy.denoiser(mix, process, x, t), 0 * x + mix.mean()[None], atol=1e-5
    )


def test_sample_moments():
    """Mean within 5 standard errors (se = sqrt(var / n)); covariance within 5 se of the
    sample covariance entries (se ~ sqrt((S_ii S_jj + S_ij^2) / n) for near-Gaussian data)."""
    mix = toy.random_mixture(5, k=3, dim=2)
    n = 100_000
    x = np.asarray(toy.sample(jax.random.PRNGKey(2), mix, n), np.float64)
    mean, cov = np.asarray(mix.mean()), np.asarray(mix.cov())
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(np.diag(cov) / n))
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    # the mixture is not Gaussian: allow 3x the Gaussian standard error for the fourth moments
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 15 * se)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="positive"):
        toy.gaussian_mixture([1.0, -1.0], np.zeros((2, 2)), np.tile(np.eye(2), (2, 1, 1)))
    with pytest.raises(ValueError, match="positive definite"):
        toy.gaussian([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="shape"):
        toy.gaussian_mixture([1.0], np.zeros((2, 2)), np.tile(np.eye(2), (2, 1, 1)))
    with pytest.raises(ValueError, match="x_t must have shape"):
        toy.score(toy.ring(), PROCS["vp"], jnp.zeros((3, 3)), jnp.zeros((3,)))
    with pytest.raises(ValueError, match="k = 0"):
        toy.ring(k=0)
