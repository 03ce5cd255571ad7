"""Tests of the likelihood bounds of diffjax.losses (discrete VLB, decoders, VDM bound)
against closed forms for Gaussian data (the oracle of tests/helpers.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from diffjax import losses, schedules
from diffjax import processes as P
from diffjax.losses import decoders
from tests.helpers import Gaussian, coeffs, grid_data, init_params, linear_model, pick

D = 3


@pytest.mark.parametrize(
    "variance, decoder",
    [("small", "discretized"), ("large", "gaussian"), ("learned", "discretized")],
)
def test_vlb_all_terms_equals_sampled_average(variance, decoder):
    """terms='all' = T times the average over n of terms='sampled' (exact; same noise per n)."""
    T, batch, d = 10, 4, 3
    process = P.discrete(schedules.linear_betas(T, 1e-3, 0.3))
    params = init_params(jax.random.PRNGKey(4), d, learned=variance == "learned")
    model = lambda x, t: linear_model(params, x, t)  # noqa: E731
    x0 = grid_data(jax.random.PRNGKey(5), (batch, d))
    key = jax.random.PRNGKey(6)
    _, full = losses.vlb(model, key, x0, process, variance=variance, decoder=decoder, terms="all")
    sampled_fn = jax.jit(
        lambda t: losses.vlb(model, key, x0, process, t=t, variance=variance, decoder=decoder)[1]
    )
    sampled = [sampled_fn(jnp.full((batch,), n / T)) for n in range(1, T + 1)]
    for name in ("nats", "prior", "decoder", "diffusion"):
        avg = np.mean([np.asarray(s[name]) for s in sampled], axis=0)
        np.testing.assert_allclose(avg, full[name], rtol=2e-5, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(full["nats"], full["prior"] + full["decoder"] + full["diffusion"],
                               rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize("mean", [-1.3, -0.99, 0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("std", [1e-4, 3e-3, 0.1, 1.0, 30.0])
def test_discretized_decoder_is_normalised(mean, std):
    """The 256 bin probabilities sum to 1 and match Gaussian CDF differences (scipy, float64)."""
    x = jnp.asarray(2.0 * np.arange(256) / 255.0 - 1.0, jnp.float32)
    logp = decoders.discretized_log_likelihood(x, mean, 2.0 * jnp.log(jnp.float32(std)))
    assert np.all(np.isfinite(np.asarray(logp)))
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(logp))), 1.0, rtol=0, atol=2e-6)
    edges = np.concatenate([[-np.inf], (np.arange(1, 256) * 2.0 - 1.0) / 255.0 - 1.0, [np.inf]])
    lower = np.diff(norm.cdf(edges, loc=mean, scale=std))  # accurate below the mean
    upper = -np.diff(norm.sf(edges, loc=mean, scale=std))  # accurate above it
    ref = np.where(np.asarray(x) > mean, upper, lower)
    ok = ref > 1e-300  # compare log-probabilities wherever float64 resolves them
    np.testing.assert_allclose(np.asarray(logp)[ok], np.log(ref[ok]), rtol=1e-3, atol=2e-3)


def vp_betas(T, beta_min=0.1, beta_max=20.0):
    """The VP SDE sampled on t_n = n/T: alpha-bar_n = exp(-int_0^{t_n} beta)."""
    t = np.arange(T + 1) / T
    abar = np.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t**2))
    return 1.0 - abar[1:] / abar[:-1]


def vlb_gap(betas, variance, batch, seed=0):
    """Mean over examples of (bound - exact NLL) per dim and its standard error."""
    from scipy.stats import multivariate_normal

    g = Gaussian.random(D, seed=2)
    mu, cov = g.mu, g.cov
    process = P.discrete(betas)
    x0 = g.sample(jax.random.PRNGKey(seed), batch)
    _, aux = losses.vlb(g.model(process), jax.random.PRNGKey(seed + 1), x0, process,
                        variance=variance, decoder="gaussian", terms="all")  # fmt: skip
    gap = np.asarray(aux["nats"], np.float64) + multivariate_normal(mu, cov).logpdf(np.asarray(x0))
    return gap.mean() / D, gap.std() / math.sqrt(batch) / D


def test_vlb_upper_bounds_nll_and_gap_shrinks_with_T():
    """'small' variance, linear betas: the bound exceeds -log p(x0) of the Gaussian data by a gap
    that shrinks with T (10.7, 1.5, 0.5 nats/dim measured; not 0: the decoder's clipped
    beta-tilde_2 variance at n = 1 (see `vlb`) and the first steps' variance mismatch).
    Tolerances: 5 standard errors of the per-example gaps."""
    gaps = [vlb_gap(schedules.linear_betas(T), "small", 500) for T in (10, 100, 1000)]
    for g, se in gaps:
        assert g - 5 * se > 0, gaps
    for (g1, se1), (g2, se2) in zip(gaps[:-1], gaps[1:], strict=True):
        assert g1 - g2 > 5 * math.hypot(se1, se2), gaps


@pytest.mark.slow
def test_vlb_large_variance_is_tight_for_fine_chains():
    """'large' variance on a fine VP chain: the gap goes to 0 (|gap| < 5 se + 1e-2 nats/dim)."""
    g, se = vlb_gap(vp_betas(1000), "large", 20_000)
    assert -5 * se < g < 5 * se + 1e-2, (g, se)


CONTINUOUS = {
    "cosine15": P.cosine(log_snr_min=-15.0, log_snr_max=15.0),
    **pick("vp", "ve", "rectified_flow"),
}


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_continuous_vlb_terms_match_closed_forms(name):
    """At a fixed t, each term of the VDM bound with the exact model matches its expectation:
    prior = 0.5 sum(s1^2/p^2 - 1 - log(s1^2/p^2) + a1^2 x0^2/p^2) exactly per example;
    reconstruction: E = d/2 (log(2 pi v) + 1), v = sigma^2/alpha^2 at t_min;
    diffusion: E = (1 - t_min)/2 (-dlambda/dt) tr(I - sigma^2 C^-1).
    Monte Carlo tolerances: 5 standard errors of the per-example values (d/2 for the
    reconstruction's variance, 2 tr(E^2) scaled for the diffusion's)."""
    process, g = CONTINUOUS[name], Gaussian.random(D, seed=3)
    cov = g.cov
    batch, t_fixed = 20_000, 0.4
    x0 = g.sample(jax.random.PRNGKey(7), batch)
    _, aux = losses.continuous_vlb(g.model(process), jax.random.PRNGKey(8), x0,
                                   process, t=jnp.full((batch,), t_fixed))  # fmt: skip
    t_min, one = losses.default_t_min(process), coeffs(process, 1.0)
    p2 = process.prior_std**2
    r = one["s"] ** 2 / p2
    x0_64 = np.asarray(x0, np.float64)
    prior = 0.5 * np.sum(r - 1 - np.log(r) + one["a"] ** 2 * x0_64**2 / p2, axis=-1)
    np.testing.assert_allclose(aux["prior"], prior, rtol=1e-4, atol=1e-6)
    c0 = coeffs(process, t_min)
    recon = 0.5 * D * (math.log(2 * math.pi * c0["s"] ** 2 / c0["a"] ** 2) + 1.0)
    assert abs(float(jnp.mean(aux["reconstruction"])) - recon) < 5 * math.sqrt(D / 2 / batch)
    c = coeffs(process, t_fixed)
    lam, _ = np.linalg.eigh(cov)
    e = c["a"] ** 2 * lam / (c["a"] ** 2 * lam + c["s"] ** 2)  # eigenvalues of I - sigma^2 C^-1
    scale = 0.5 * (1.0 - t_min) * -c["dlam"]
    expected, se = scale * e.sum(), scale * math.sqrt(2 * np.sum(e**2) / batch)
    assert abs(float(jnp.mean(aux["diffusion"])) - expected) < 5 * se, (aux["diffusion"], expected)


def expected_vdm_bound(process, mu, cov, t_min, n=20_001):
    """E_x0 of the VDM bound for Gaussian data (float64): E prior + E reconstruction +
    1/2 int tr(I - sigma^2 C^-1) dlambda, the integral by the trapezoid rule in log-SNR."""
    lam_data = np.linalg.eigvalsh(cov)
    ts = np.linspace(t_min, 1.0, n)
    lam = np.asarray(process.log_snr(jnp.asarray(ts, jnp.float32)), np.float64)
    # tr(I - sigma^2 C^-1) = sum_i SNR l_i / (SNR l_i + 1) over the eigenvalues l_i of Sigma
    e = np.sum(lam_data[None] / (lam_data[None] + np.exp(-lam)[:, None]), axis=-1)
    diffusion = 0.5 * np.sum(0.5 * (e[1:] + e[:-1]) * -np.diff(lam))
    one, c0 = coeffs(process, 1.0), coeffs(process, t_min)
    r = one["s"] ** 2 / process.prior_std**2
    ex2 = np.sum(mu**2) + np.trace(cov)
    prior = 0.5 * (D * (r - 1 - np.log(r)) + one["a"] ** 2 * ex2 / process.prior_std**2)
    recon = 0.5 * D * (math.log(2 * math.pi * c0["s"] ** 2 / c0["a"] ** 2) + 1.0)
    return prior + recon + diffusion


def test_continuous_bound_tightens_as_log_snr_range_widens():
    """The expected VDM bound (with the exact model, in closed form) exceeds the entropy of the
    Gaussian data and the gap shrinks toward 0 as the log-SNR range widens: below 1e-2
    nats/dim at +-15; the loss's Monte Carlo estimate at +-15 agrees with it (5 s.e.)."""
    g = Gaussian.random(D, seed=2)
    mu, cov = g.mu, g.cov
    entropy = 0.5 * np.linalg.slogdet(2 * math.pi * math.e * cov)[1]
    gaps = []
    for limit in (2.0, 5.0, 15.0):
        process = P.cosine(log_snr_min=-limit, log_snr_max=limit)
        gaps.append((expected_vdm_bound(process, mu, cov, 0.0) - entropy) / D)
    quad_err = 1e-5  # trapezoid rule on 20001 points and a float32 log-SNR table
    assert all(g > -quad_err for g in gaps) and gaps[0] > gaps[1] > gaps[2] - quad_err, gaps
    assert gaps[2] < 1e-2 and gaps[1] < 1e-2 < gaps[0], gaps
    process, batch = P.cosine(log_snr_min=-15.0, log_snr_max=15.0), 50_000
    x0 = g.sample(jax.random.PRNGKey(9), batch)
    value, aux = losses.continuous_vlb(g.model(process), jax.random.PRNGKey(10), x0,
                                       process, antithetic=True)  # fmt: skip
    nats = np.asarray(aux["nats"], np.float64)
    bound = expected_vdm_bound(process, mu, cov, 0.0)
    assert abs(nats.mean() - bound) < 5 * nats.std() / math.sqrt(batch)
    np.testing.assert_allclose(float(value), nats.mean() / (D * math.log(2)), rtol=1e-5)


def test_continuous_vlb_times():
    """t ~ U(t_min, 1) by default; antithetic times are u + i/B mod 1 mapped into [t_min, 1]."""
    process, x0 = P.vp(), jnp.zeros((64, 2))
    model = lambda x, t: x  # noqa: E731
    _, aux = losses.continuous_vlb(model, jax.random.PRNGKey(0), x0, process, antithetic=True)
    t_min = losses.default_t_min(process)
    u = np.sort((np.asarray(aux["t"], np.float64) - t_min) / (1 - t_min))
    np.testing.assert_allclose(np.diff(u), 1 / 64, atol=1e-5)
    _, aux = losses.continuous_vlb(model, jax.random.PRNGKey(0), jnp.zeros((4000, 1)), process)
    from scipy.stats import kstest

    assert kstest(np.asarray(aux["t"]), "uniform", args=(t_min, 1 - t_min)).pvalue > 1e-4
    assert losses.default_t_min(P.ve()) == 0.0 and t_min == 1e-5
