"""Probability-flow ODE likelihoods against closed forms (Gaussian and Gaussian-mixture data)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from diffjax import processes, toy
from diffjax.likelihood import default_t_max, default_t_min, likelihood
from tests.helpers import PROCESSES, Gaussian

# Tolerance of the task: 1e-3 nats per dimension. Measured errors of the adaptive solve at
# rtol = atol = 1e-5 in float32 are 5e-6 to 2e-4 nats per dimension.
TOL_PER_DIM = 1e-3


CASES = [  # (process, prediction, d): VP as asked, and one process of each other family
    (PROCESSES["vp"], "eps", 3),
    (PROCESSES["subvp"], "x0", 2),
    (processes.ve(sigma_max=20.0), "score", 4),
    (PROCESSES["rectified_flow"], "velocity", 3),
    (PROCESSES["trig"], "v", 2),
]


@pytest.mark.parametrize(
    "process,prediction,d", CASES, ids=[f"{type(c[0]).__name__}-{c[1]}" for c in CASES]
)
def test_gaussian_exact_trace_matches_closed_form(key, process, prediction, d):
    # The prior is the exact marginal at t_max, so the only error left is the ODE solve's:
    # -log p_{t_min}(x) must equal the closed-form Gaussian log-density at t_min.
    g = Gaussian.random(d, seed=d)
    x = g.sample_np(8)
    t_min, t_max = default_t_min(process), default_t_max(process, prediction)
    nll = likelihood(
        key,
        g.model(process, prediction),
        process,
        x,
        prediction=prediction,
        trace="exact",
        prior_logp=g.logp_jax(process, t_max),
    )
    np.testing.assert_allclose(nll, -g.logp(process, t_min, x), atol=TOL_PER_DIM * d)


def test_default_prior_mismatch_is_accounted_for(key):
    # VP's p_1 is N(alpha_1 mu, alpha_1^2 cov + sigma_1^2 I), not exactly the N(0, I) prior. With
    # the default prior, -nll = log p_{t_min}(x) + log N(x_1; 0, I) - log p_1(x_1), where x_1 is
    # the analytic flow map of x. That map is also checked against the solver's end state.
    process, g = processes.vp(), Gaussian.random(3, seed=7)
    x = g.sample_np(8, seed=3)
    t_min = default_t_min(process)
    nll, info = likelihood(
        key, g.model(process, "eps"), process, x, trace="exact", return_info=True
    )
    x1 = g.flow_map(process, t_min, 1.0, x)
    np.testing.assert_allclose(info["x1"], x1, atol=1e-3)
    prior = multivariate_normal(np.zeros(3), np.eye(3)).logpdf(x1)
    ref = g.logp(process, t_min, x) + prior - g.logp(process, 1.0, x1)
    np.testing.assert_allclose(nll, -ref, atol=TOL_PER_DIM * 3)
    assert info["nfe"] > 0 and np.all(info["nll_stderr"] == 0.0)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased_within_its_standard_error(key, probe):
    # For Gaussian data the flow is linear, so each probe's estimate is exactly eps^T A eps with
    # A = int dv/dx dt (symmetric, known); its variance is 2 ||A||_F^2 for Gaussian probes and
    # 2 sum_{i != j} A_ij^2 for Rademacher ones (Hutchinson 1990). The B * K estimates are
    # independent, so their mean error over the exact value is ~ N(0, var / (B K)): |z| < 4 has a
    # false-alarm rate of 6e-5, while a wrong divergence (e.g. a missing factor) gives |z| >> 4.
    process, g, b, k = processes.vp(), Gaussian.random(4, seed=11), 16, 32
    x = g.sample_np(b, seed=5)
    t_min = default_t_min(process)
    nll, info = likelihood(
        key,
        g.model(process, "eps"),
        process,
        x,
        trace="hutchinson",
        probe=probe,
        num_probes=k,
        prior_logp=g.logp_jax(process, 1.0),
        return_info=True,
    )
    ref = -g.logp(process, t_min, x)  # [B]
    a = g.jacobian_integral(process, t_min, 1.0)
    off_diag = np.sum(a**2) - np.sum(np.diag(a) ** 2)
    var = 2.0 * (np.sum(a**2) if probe == "gaussian" else off_diag)
    resid = np.asarray(info["nll_probes"], np.float64) - ref[None]  # [K, B]
    assert abs(resid.mean()) / math.sqrt(var / (b * k)) < 4.0
    np.testing.assert_allclose(nll, resid.mean(0) + ref, rtol=1e-5, atol=1e-4)
    # The reported standard error: K * stderr^2 is the sample variance over K probes; averaged
    # over B examples it has ~B (K - 1) = 496 degrees of freedom but heavy (chi-square) tails, so
    # its relative spread is ~0.1 (kurtosis ~ 6); [0.6, 1.6] would still catch a missing sqrt(K).
    ratio = np.mean(np.asarray(info["nll_stderr"]) ** 2 * k) / var
    assert 0.6 < ratio < 1.6


def _mixture_logp(mix, process, t: float, x) -> np.ndarray:
    """Reference log p_t(x) of a Gaussian mixture in float64 with scipy (independent of toy)."""
    a, s = float(process.alpha(t)), float(process.sigma(t))
    w, mu, cov = (np.asarray(v, np.float64) for v in (mix.weights, mix.means, mix.covs))
    x = np.asarray(x, np.float64)
    eye = np.eye(mu.shape[1])
    comps = [
        multivariate_normal(a * m, a**2 * c + s**2 * eye).logpdf(x)
        for m, c in zip(mu, cov, strict=True)
    ]
    return logsumexp(np.stack(comps, -1) + np.log(w), axis=-1)


@pytest.mark.parametrize(
    "process", [processes.vp(), processes.rectified_flow()], ids=["vp", "rectified_flow"]
)
def test_mixture_matches_exact_log_density(key, process):
    # VP: the prior is overridden by the exact mixture marginal at t = 1. Rectified flow has
    # alpha(1) = 0, sigma(1) = 1, so p_1 = N(0, I) is the default prior exactly; an eps model
    # stops at t_max = 1 - 1e-5 where the prior is off by O(1e-5) nats per dimension.
    mix = toy.random_mixture(seed=1, k=3, dim=2)
    x = toy.sample(jax.random.PRNGKey(3), mix, 16)
    prior = None
    if isinstance(process, processes.VP):
        prior = lambda z: toy.log_prob_t(mix, process, z, jnp.ones(z.shape[:1]))  # noqa: E731
    model = toy.exact_model(mix, process, "eps")
    nll = likelihood(key, model, process, x, trace="exact", prior_logp=prior)
    ref = _mixture_logp(mix, process, default_t_min(process), x)
    np.testing.assert_allclose(nll, -ref, atol=TOL_PER_DIM * 2)


def test_nfe_counts_model_calls_and_cond_is_passed(key):
    # Every model evaluation inside the compiled solve fires the callback once. The model is
    # conditional: cond shifts the data mean, N(mu + shift, cov), so the nll must be the closed
    # form at x - alpha_t shift (loose tolerance: rtol = atol = 1e-3 here).
    calls = []
    process, g = processes.vp(), Gaussian.random(2, seed=2)
    inner, shift = g.model(process, "eps"), jnp.array([3.0, -2.0])
    a_min, a_1 = (float(process.alpha(t)) for t in (default_t_min(process), 1.0))

    def model(x, t, cond):
        jax.debug.callback(lambda tt: calls.append(1), t)
        return inner(x - process.alpha(t)[:, None] * cond[None], t)

    x = g.sample_np(4) + shift[None]
    logp_1 = g.logp_jax(process, 1.0)
    prior = lambda z: logp_1(z - a_1 * shift[None])  # noqa: E731
    nll, info = likelihood(
        key,
        model,
        process,
        x,
        rtol=1e-3,
        atol=1e-3,
        cond=shift,
        trace="exact",
        prior_logp=prior,
        return_info=True,
    )
    jax.effects_barrier()
    assert int(info["nfe"]) == len(calls) and len(calls) > 7
    ref = -g.logp(process, default_t_min(process), x - a_min * shift[None])
    np.testing.assert_allclose(nll, ref, atol=1e-2)
