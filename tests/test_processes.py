"""Forward processes: closed-form SDE coefficients, moment ODEs, chains and end points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import diffjax
from diffjax import schedules
from tests.helpers import CONTINUOUS
from tests.helpers import PROCESSES as ALL


@pytest.mark.parametrize("name", ALL)
def test_finite_at_end_points(name, maybe_jit):
    p = ALL[name]
    t = jnp.array([0.0, 1e-6, 0.5, 1 - 1e-6, 1.0], jnp.float32)

    def coefficients(t):
        return [p.alpha(t), p.sigma(t), p.log_snr(t), *p.sde(t), p.d_alpha(t), p.d_sigma(t)]

    outs = maybe_jit(coefficients)(t)
    for out in outs:
        assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out))), (name, out)
    x = p.prior_sample(jax.random.PRNGKey(0), (3, 2, 2))
    assert bool(jnp.all(jnp.isfinite(p.prior_logp(x))))


def test_paper_closed_forms(x64, maybe_jit):
    t = np.linspace(0.01, 0.99, 7)
    bmin, bmax = 0.1, 20.0
    beta = bmin + t * (bmax - bmin)
    big_b = bmin * t + 0.5 * (bmax - bmin) * t**2
    f, g2 = maybe_jit(diffjax.vp().sde)(t)  # Song et al. 2021 eq. 11
    np.testing.assert_allclose(f, -beta / 2, rtol=1e-12)
    np.testing.assert_allclose(g2, beta, rtol=1e-12)
    f, g2 = maybe_jit(diffjax.subvp().sde)(t)  # eq. 17
    np.testing.assert_allclose(f, -beta / 2, rtol=1e-12)
    np.testing.assert_allclose(g2, beta * (1 - np.exp(-2 * big_b)), rtol=1e-12)
    f, g2 = maybe_jit(diffjax.ve(0.01, 50.0).sde)(t)  # eq. 9: g2 = d sigma^2 / dt
    sig = 0.01 * 5000.0**t
    np.testing.assert_allclose(f, 0.0)
    np.testing.assert_allclose(g2, 2 * sig**2 * np.log(5000.0), rtol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_sde_is_consistent_with_marginals_by_finite_differences(name, x64, maybe_jit):
    p, h = ALL[name], 1e-6
    alpha, sigma, sde, d_log_snr = (maybe_jit(f) for f in (p.alpha, p.sigma, p.sde, p.d_log_snr))
    t = np.array([0.1305, 0.3705, 0.6105, 0.8705])  # between the discrete grid's kinks
    if name == "cosine":
        t = np.array([0.2, 0.4, 0.6, 0.8])
    dlog_alpha = (np.log(alpha(t + h)) - np.log(alpha(t - h))) / (2 * h)
    dsig2 = (sigma(t + h) ** 2 - sigma(t - h) ** 2) / (2 * h)
    f, g2 = sde(t)
    np.testing.assert_allclose(f, dlog_alpha, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g2, dsig2 - 2 * f * sigma(t) ** 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_log_snr(t), -g2 / sigma(t) ** 2, rtol=1e-6)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_moment_odes_reproduce_marginals(name, x64):
    """Integrate m' = f m, P' = 2 f P + g2 (the moments of dx = f x dt + g dW) with scipy and
    compare with alpha(t) x0 and sigma(t)^2."""
    p = CONTINUOUS[name]
    t0, t1 = 1e-3, 0.95

    def rhs(t, y):
        f, g2 = (float(v) for v in p.sde(np.float64(t)))
        return [f * y[0], 2 * f * y[1] + g2]

    y0 = [float(p.alpha(t0)), float(p.sigma(t0)) ** 2]
    ts = np.linspace(t0, t1, 6)
    sol = solve_ivp(rhs, (t0, t1), y0, t_eval=ts, rtol=1e-10, atol=1e-12, method="DOP853")
    np.testing.assert_allclose(sol.y[0], p.alpha(ts), rtol=1e-6)
    np.testing.assert_allclose(sol.y[1], p.sigma(ts) ** 2, rtol=1e-6, atol=1e-10)


def test_cosine_process_matches_nichol_alpha_bar(x64, maybe_jit):
    t = np.linspace(0.05, 0.95, 10)
    np.testing.assert_allclose(
        maybe_jit(diffjax.cosine().alpha)(t) ** 2, schedules.cosine_alpha_bar(t), rtol=1e-10
    )


def test_discrete_grid_values(x64, maybe_jit):
    betas = schedules.linear_betas(50)
    p = diffjax.discrete(betas)
    n = np.arange(51)
    abar = np.concatenate([[1.0], np.cumprod(1 - betas)])
    np.testing.assert_allclose(maybe_jit(p.alpha)(n / 50) ** 2, abar, rtol=1e-12)
    np.testing.assert_allclose(maybe_jit(p.sigma)(n / 50) ** 2, 1 - abar, rtol=1e-10, atol=1e-15)


def test_iterated_chain_reproduces_marginal_monte_carlo(key):
    """x_n = sqrt(1 - beta_n) x_{n-1} + sqrt(beta_n) z iterated from a fixed x0 must have mean
    alpha_n x0 and variance sigma_n^2 (Ho et al. eq. 4)."""
    T, N = 40, 200_000
    betas = schedules.linear_betas(T, 1e-3, 0.2)
    p = diffjax.discrete(betas)
    x0 = 0.7

    def step(x, inp):
        beta, k = inp
        return jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * jax.random.normal(k, x.shape), x

    keys = jax.random.split(key, T)
    xT, _ = jax.lax.scan(step, jnp.full((N,), x0), (jnp.asarray(betas, jnp.float32), keys))
    m, v = float(p.alpha(1.0)) * x0, float(p.sigma(1.0)) ** 2
    # standard errors: mean sqrt(v/N); variance v sqrt(2/N); 5 sigma bounds
    assert abs(float(xT.mean()) - m) < 5 * np.sqrt(v / N)
    assert abs(float(xT.var()) - v) < 5 * v * np.sqrt(2 / N)


@pytest.mark.parametrize("name", ALL)
def test_transitions_compose(name, x64, maybe_jit):
    """q(x_t | x_0) equals q(x_s | x_0) followed by q(x_t | x_s) (exact moment algebra)."""
    p = ALL[name]
    s, t = np.array([0.0, 0.2, 0.5]), np.array([0.3, 0.7, 0.9])
    a_ts, v_ts = maybe_jit(lambda s, t: diffjax.transition(p, s, t))(s, t)
    np.testing.assert_allclose(a_ts * p.alpha(s), p.alpha(t), rtol=1e-10)
    np.testing.assert_allclose(a_ts**2 * p.sigma(s) ** 2 + v_ts, p.sigma(t) ** 2, rtol=1e-9)


def test_prior_logp_matches_scipy(x64):
    from scipy.stats import norm

    x = np.random.default_rng(0).normal(size=(3, 4, 2)) * 30
    for p in (diffjax.vp(), diffjax.ve(0.01, 50.0)):
        ref = norm.logpdf(x, scale=p.prior_std).reshape(3, -1).sum(-1)
        np.testing.assert_allclose(p.prior_logp(x), ref, rtol=1e-12)


@pytest.mark.parametrize("bad_t", [-0.1, 1.5, float("nan")])
def test_time_outside_unit_interval_raises(bad_t):
    with pytest.raises(ValueError, match="t must lie in"):
        diffjax.vp().alpha(jnp.array([0.5, bad_t]))


@pytest.mark.parametrize(
    "ctor, kwargs",
    [
        (diffjax.vp, {"beta_min": -1.0}),
        (diffjax.ve, {"sigma_min": 5.0, "sigma_max": 1.0}),
        (diffjax.ot_flow, {"sigma_min": 1.0}),
    ],
)
def test_bad_process_parameters_raise(ctor, kwargs):
    with pytest.raises(ValueError, match="sigma|beta"):
        ctor(**kwargs)


def test_unknown_process_name():
    with pytest.raises(ValueError, match="'nope'"):
        diffjax.get_process("nope")


def test_processes_are_static_jit_arguments():
    f = jax.jit(lambda p, t: p.alpha(t), static_argnums=0)
    np.testing.assert_allclose(f(diffjax.vp(), 0.5), diffjax.vp().alpha(0.5))
    assert hash(ALL["discrete"]) == hash(diffjax.discrete(schedules.linear_betas(1000)))
