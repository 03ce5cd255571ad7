"""What is true of a process lives on it: end-point facts, default time ranges, the chain's
step <-> time map and its draw of training times; the one learned-variance interpolation; and
the bad inputs of the process constructors and kernels, each a clear error naming the value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chi2

import diffjax
from diffjax import kernels, losses, schedules, targets
from diffjax import processes as P
from diffjax.likelihood import default_t_max, default_t_min
from diffjax.losses.common import sample_times
from diffjax.samplers import grid, sample
from tests.helpers import PROCESSES

# The documented default end of the sampling loop (samplers/grid.py's docstring table).
SAMPLE_T_MIN = {
    "vp": 1e-3,
    "subvp": 1e-3,
    "ve": 0.0,
    "cosine": 1e-3,
    "discrete": 0.0,
    "discrete_zsnr": 0.0,
    "rectified_flow": 0.0,
    "ot_flow": 0.0,
    "trig": 0.0,
}
ENDS = (0.0, 1e-6, 1.0 - 1e-6, 1.0)


@pytest.mark.parametrize("name", PROCESSES)
def test_end_point_facts_match_the_coefficients(name):
    p = PROCESSES[name]
    alpha1, sigma0 = float(p.alpha(1.0)), float(p.sigma(0.0))
    assert p.alpha_vanishes_at_1 == (alpha1 == 0.0), alpha1
    assert p.sigma_vanishes_at_0 == (sigma0 == 0.0), sigma0
    assert p.sample_t_min == SAMPLE_T_MIN[name]
    assert p.sample_t_max(False) == 1.0
    assert p.sample_t_max(True) == (1.0 - 1e-3 if alpha1 == 0.0 else 1.0)
    assert p.likelihood_t_min == (1e-5 if sigma0 == 0.0 else 0.0)
    assert p.likelihood_t_max(False) == 1.0
    assert p.likelihood_t_max(True) == (1.0 - 1e-5 if alpha1 == 0.0 else 1.0)
    assert p.loss_t_min == (1e-5 if sigma0 == 0.0 else 0.0)
    # the public module-level functions read the process
    assert grid.default_t_min(p) == p.sample_t_min
    assert default_t_min(p) == p.likelihood_t_min
    assert default_t_max(p, "eps") == p.likelihood_t_max(True)
    assert default_t_max(p, "x0") == p.likelihood_t_max(False)
    assert losses.default_t_min(p) == p.loss_t_min
    assert grid.default_spacing(p, "ddim") == (
        "discrete" if name.startswith("discrete") else "uniform"
    )
    assert (p.num_steps == 1000) if name.startswith("discrete") else p.num_steps is None


@pytest.mark.parametrize("name", PROCESSES)
def test_facts_are_python_constants_under_jit(name):
    """Static facts: readable inside a traced function, the process still a hashable static arg."""
    p = PROCESSES[name]

    @jax.jit
    def f(t):
        facts = (p.sample_t_min, p.likelihood_t_min, p.loss_t_min, p.sample_t_max(True))
        assert all(isinstance(v, float) for v in facts)
        assert isinstance(p.alpha_vanishes_at_1, bool) and isinstance(p.sigma_vanishes_at_0, bool)
        return t + p.sample_t_min

    assert float(f(jnp.float32(0.5))) == pytest.approx(0.5 + SAMPLE_T_MIN[name])
    assert hash(p) == hash(type(p)(**{k: getattr(p, k) for k in p.__dataclass_fields__}))


def test_zero_terminal_snr_chain_has_alpha_vanishing_and_the_plain_chain_not():
    assert PROCESSES["discrete_zsnr"].alpha_vanishes_at_1
    assert not PROCESSES["discrete"].alpha_vanishes_at_1
    assert P.ot_flow(0.0).sigma_vanishes_at_0 and not P.ot_flow(1e-4).sigma_vanishes_at_0


def test_chain_draw_t_is_uniform_on_the_grid():
    T, B = 10, 20000
    p = diffjax.discrete(schedules.linear_betas(T))
    t = p.draw_t(jax.random.PRNGKey(3), B, jnp.float32)
    assert t.shape == (B,) and t.dtype == jnp.float32
    n = np.asarray(p.step_of_time(t))
    np.testing.assert_array_equal(np.asarray(t), np.asarray(p.time_of_step(n)))  # on the grid
    assert n.min() >= 1 and n.max() <= T
    counts = np.bincount(n, minlength=T + 1)[1:]
    stat = float(np.sum((counts - B / T) ** 2 / (B / T)))
    assert stat < chi2.ppf(1 - 1e-4, T - 1), (stat, counts)  # U{1..T}: false alarm 1e-4
    # the losses draw their times through the process
    x0 = jnp.zeros((B, 1))
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(sample_times(key, x0, p), t)


def test_continuous_draw_t_is_uniform():
    B = 20000
    t = np.asarray(diffjax.vp().draw_t(jax.random.PRNGKey(4), B, jnp.float32), np.float64)
    assert 0.0 <= t.min() and t.max() < 1.0
    # mean and variance of U(0, 1) within 5 standard errors
    assert abs(t.mean() - 0.5) < 5 * np.sqrt(1 / 12 / B)
    assert abs(t.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / B)
    bf = diffjax.vp().draw_t(jax.random.PRNGKey(4), 8, jnp.bfloat16)
    assert bf.dtype == jnp.bfloat16


def test_step_time_round_trip_on_the_grid():
    T = 1000
    p = diffjax.discrete(schedules.linear_betas(T))
    n = np.arange(T + 1)
    t = p.time_of_step(n)
    # n / T to float32 resolution (XLA's division may be one ulp from the rounded quotient)
    np.testing.assert_allclose(np.asarray(t), n / T, rtol=2.0**-23, atol=0)
    np.testing.assert_array_equal(np.asarray(p.step_of_time(t)), n)
    np.testing.assert_array_equal(np.asarray(p.time_of_step(p.step_of_time(t))), np.asarray(t))
    assert p.step_of_time(t).dtype == jnp.int32
    with pytest.raises(ValueError, match=r"\[0, 1000\].*1001"):
        p.time_of_step(np.array([3, 1001]))
    with pytest.raises(ValueError, match="t must lie in"):
        p.step_of_time(1.5)


@pytest.mark.parametrize("name", [k for k in PROCESSES if not k.startswith("discrete")])
def test_continuous_processes_have_no_steps(name):
    p = PROCESSES[name]
    cls = type(p).__name__
    with pytest.raises(ValueError, match=f"time_of_step needs a discrete chain.*{cls}"):
        p.time_of_step(3)
    with pytest.raises(ValueError, match=f"step_of_time needs a discrete chain.*{cls}"):
        p.step_of_time(0.5)
    with pytest.raises(ValueError, match=f"needs a Discrete chain.*{cls}"):
        losses.vlb(lambda x, t: x, jax.random.PRNGKey(0), jnp.zeros((2, 3)), p)


# ------------------------------------------------------------------ the posterior algebra
def _ddpm_variances(betas, n):
    """(beta-tilde_n, beta_n) of Ho et al. (2020), eq. 7, in float64 numpy, n >= 1."""
    abar = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
    return (1.0 - abar[n - 1]) / (1.0 - abar[n]) * betas[n - 1], betas[n - 1]


def test_variance_ratio_and_extremes_match_ddpm_closed_forms(x64):
    T = 1000
    betas = schedules.linear_betas(T)
    p = diffjax.discrete(betas)
    n = np.array([2, 10, 500, 1000])
    s, t = p.time_of_step(n - 1), p.time_of_step(n)
    small, large = kernels.posterior_variances(p, s, t)
    ref_small, ref_large = _ddpm_variances(betas, n)
    np.testing.assert_allclose(small, ref_small, rtol=1e-9)
    np.testing.assert_allclose(large, ref_large, rtol=1e-9)
    abar = schedules.alphas_cumprod(betas)
    # 1 - SNR_t / SNR_s with SNR = abar / (1 - abar)
    snr = abar / (1.0 - abar)
    np.testing.assert_allclose(kernels.variance_ratio(p, s, t), 1 - snr[n] / snr[n - 1], rtol=1e-9)


V_VALUES = (-100.0, -5.0, -1.0, -0.5, 0.0, 0.5, 1.0, 5.0, 100.0)


def test_learned_log_variance_stays_between_the_extremes(x64):
    T = 1000
    betas = schedules.linear_betas(T)
    p = diffjax.discrete(betas)
    n = np.array([2, 10, 500, 1000])
    s, t = p.time_of_step(n - 1), p.time_of_step(n)
    ref_small, ref_large = _ddpm_variances(betas, n)
    lo, hi = np.log(ref_small), np.log(ref_large)
    for v in V_VALUES:
        out = np.asarray(kernels.learned_log_variance(p, jnp.full((4, 1), v), s, t))[:, 0]
        assert np.all(out >= lo - 1e-9) and np.all(out <= hi + 1e-9), (v, out, lo, hi)
        frac = min(max((v + 1) / 2, 0.0), 1.0)  # Nichol & Dhariwal's (v + 1) / 2, held in [0, 1]
        np.testing.assert_allclose(out, frac * hi + (1 - frac) * lo, rtol=1e-9)
    mid = kernels.learned_log_variance(p, jnp.zeros((4, 1)), s, t)[:, 0]
    np.testing.assert_allclose(np.exp(mid), np.sqrt(ref_small * ref_large), rtol=1e-9)


def _learned_model(v):
    return lambda x, t: jnp.concatenate([0.5 * x, jnp.full_like(x, v)], axis=-1)


def test_vlb_and_ddpm_use_the_bounded_interpolation():
    """v = +-5 gives exactly the v = +-1 extremes in the vlb/hybrid losses and the ddpm sampler."""
    chain = diffjax.discrete(schedules.linear_betas(50))
    key = jax.random.PRNGKey(5)
    x0 = jax.random.uniform(jax.random.PRNGKey(6), (4, 3), minval=-1, maxval=1)
    for far, edge in ((5.0, 1.0), (-5.0, -1.0)):
        for loss in (
            lambda m: losses.vlb(m, key, x0, chain, variance="learned")[1]["nats"],
            lambda m: losses.hybrid(m, key, x0, chain)[1]["vlb"],
        ):
            np.testing.assert_array_equal(loss(_learned_model(far)), loss(_learned_model(edge)))
        a = sample(
            key, _learned_model(far), chain, (4, 2), solver="ddpm", steps=10, variance="learned"
        )
        b = sample(
            key,
            lambda x, t: 0.5 * x,
            chain,
            (4, 2),
            solver="ddpm",
            steps=10,
            variance="large" if far > 0 else "small",
        )
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- bad inputs
def test_posterior_and_transition_refuse_s_after_t():
    p = diffjax.vp()
    x = jnp.zeros((2, 3))
    s, t = jnp.array([0.2, 0.7]), jnp.array([0.5, 0.6])
    with pytest.raises(ValueError, match=r"need s <= t.*0\.7.*0\.6"):
        kernels.posterior(p, x, x, s, t)
    with pytest.raises(ValueError, match=r"need s <= t.*0\.7.*0\.6"):
        kernels.transition(p, s, t)
    _, var = kernels.posterior(p, x, x, jnp.array([0.2, 0.5]), t)  # s <= t is fine
    assert float(var.min()) >= 0.0


def test_cosine_with_swapped_log_snr_bounds_raises():
    with pytest.raises(ValueError, match=r"log_snr_min < log_snr_max.*20\.0.*-20\.0"):
        diffjax.cosine(log_snr_min=20.0, log_snr_max=-20.0)
    with pytest.raises(ValueError, match=r"log_snr_max = nan"):
        diffjax.cosine(log_snr_max=float("nan"))


def test_two_dimensional_beta_table_is_rejected():
    with pytest.raises(ValueError, match=r"1-D table.*\(2, 5\)"):
        diffjax.discrete(np.full((2, 5), 0.01))


@pytest.mark.parametrize("scalar", [np.float32, np.float64, jnp.float32])
def test_constructors_accept_numpy_and_jax_scalars(scalar):
    makers = [
        (diffjax.vp, (0.1, 20.0)),
        (diffjax.subvp, (0.1, 20.0)),
        (diffjax.ve, (0.01, 50.0)),
        (diffjax.cosine, (0.008, -20.0, 20.0)),
        (diffjax.ot_flow, (1e-4,)),
    ]
    for make, args in makers:
        p = make(*(scalar(a) for a in args))
        ref = make(*(float(scalar(a)) for a in args))
        assert p == ref and hash(p) == hash(ref), (p, ref)
        assert all(type(getattr(p, f)) is float for f in p.__dataclass_fields__), p
        np.testing.assert_allclose([getattr(p, f) for f in p.__dataclass_fields__], args, rtol=1e-7)


@pytest.mark.parametrize(
    "call, value",
    [
        (lambda: diffjax.vp(beta_min=-1.0), "beta_min = -1.0"),
        (lambda: diffjax.vp(beta_min=True), "beta_min = True"),
        (lambda: diffjax.ve(sigma_min="0.1"), "sigma_min = '0.1'"),
        (lambda: diffjax.vp(beta_max=np.array([1.0, 2.0])), "beta_max = array"),
        (lambda: diffjax.ot_flow(sigma_min=1.5), "sigma_min = 1.5"),
        (lambda: diffjax.cosine(s=0.0), "s = 0.0"),
    ],
)
def test_constructor_errors_name_the_value(call, value):
    with pytest.raises(ValueError, match=value.replace("(", r"\(").replace("[", r"\[")):
        call()


def test_convert_to_the_same_kind_still_validates():
    x, p = jnp.zeros((2, 3)), diffjax.vp()
    with pytest.raises(ValueError, match="t must lie in"):
        targets.convert(x, "eps", "eps", x, jnp.array([0.5, 2.0]), p)
    with pytest.raises(ValueError, match="same shape"):
        targets.convert(jnp.zeros((2, 4)), "eps", "eps", x, jnp.array([0.5, 0.5]), p)
    with pytest.raises(ValueError, match=r"t.shape"):
        targets.convert(x, "eps", "x0", x, jnp.array([0.5, 0.5, 0.5]), p)


def test_public_coefficients_validate_but_traced_math_is_unchecked():
    p = diffjax.trig()
    for method in ("alpha", "sigma", "log_snr", "d_alpha", "d_sigma", "sde", "d_log_snr"):
        with pytest.raises(ValueError, match="t must lie in"):
            getattr(p, method)(1.5)
    # under jit nothing is inspected (a tracer), and the values are those of the closed form
    np.testing.assert_allclose(jax.jit(p.alpha)(jnp.float32(0.5)), np.cos(np.pi / 4), rtol=1e-6)


# --------------------------------------------------------------------- bfloat16 end points
@pytest.mark.parametrize("name", PROCESSES)
def test_bfloat16_end_points_are_finite(name):
    p = PROCESSES[name]
    t = jnp.array(ENDS, jnp.bfloat16)
    outs = [p.alpha(t), p.sigma(t), p.log_snr(t), *p.sde(t), p.d_alpha(t), p.d_sigma(t)]
    outs.append(p.d_log_snr(t))
    for out in outs:
        assert out.dtype == jnp.bfloat16, (name, out.dtype)
        assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32)))), (name, out)


def test_derivative_clip_is_unchanged_in_float32_and_float64(x64):
    """Rectified flow's f = -1 / (1 - t) is read at t clipped to 1 - 1e-6 in float32 and float64
    (1 - eps(bfloat16) = 1 - 2^-7 in bfloat16, where 1 - 1e-6 rounds to 1)."""
    rf = diffjax.rectified_flow()
    for dtype in (jnp.float32, jnp.float64):
        one = jnp.ones((), dtype)
        f, _ = rf.sde(one)
        np.testing.assert_allclose(f, -1.0 / (1.0 - np.asarray(1 - 1e-6, dtype)), rtol=1e-6)
    f, _ = rf.sde(jnp.ones((), jnp.bfloat16))
    assert float(f) == -(2.0**7)


def test_a_subclass_overriding_the_public_sde_serves_the_internal_math_too():
    """A subclass written against the public methods keeps d_log_snr = -g2 / sigma^2 consistent
    with its own sde (here rectified flow's closed form, Liu et al. 2023)."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Flow(P.Process):
        def _alpha(self, t):
            return 1.0 - t

        def _sigma(self, t):
            return t

        def sde(self, t):
            t = jnp.asarray(t)
            return -1.0 / (1.0 - t), 2.0 * t / (1.0 - t)

    t = jnp.array([0.25, 0.5])
    np.testing.assert_allclose(Flow().d_log_snr(t), -2.0 / (t * (1.0 - t)), rtol=1e-6)
    np.testing.assert_allclose(
        Flow().d_log_snr(t), diffjax.rectified_flow().d_log_snr(t), rtol=1e-6
    )


def test_discretized_bounds_in_bfloat16_are_finite():
    """vlb / hybrid with bfloat16 data and model: the discretized decoder runs in float32 inside
    (jax.scipy's log_ndtr has no bfloat16), every term finite, the result in bfloat16."""
    chain = diffjax.discrete(schedules.linear_betas(10))
    k = jax.random.randint(jax.random.PRNGKey(7), (4, 3), 0, 256)
    x0 = (k / 127.5 - 1.0).astype(jnp.bfloat16)
    key = jax.random.PRNGKey(8)
    eps_model = lambda x, t: (0.5 * x).astype(jnp.bfloat16)  # noqa: E731
    learned = lambda x, t: jnp.concatenate([0.5 * x, 0.0 * x], -1).astype(jnp.bfloat16)  # noqa: E731
    for value, aux in (
        losses.vlb(eps_model, key, x0, chain, terms="all"),
        losses.vlb(learned, key, x0, chain, variance="learned", t=jnp.full((4,), 0.1)),
        losses.hybrid(learned, key, x0, chain),
    ):
        assert value.dtype == jnp.bfloat16 and bool(jnp.isfinite(value.astype(jnp.float32)))
        assert bool(jnp.all(jnp.isfinite(aux["per_example"].astype(jnp.float32))))
    # float32 keeps its own computation: the 256 bin masses sum to 1 (Ho et al. 2020, eq. 13)
    from diffjax.losses.decoders import discretized_log_likelihood

    x = -1.0 + 2.0 * jnp.arange(256) / 255.0
    out = discretized_log_likelihood(x, jnp.full_like(x, 0.2), jnp.full_like(x, -4.0))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(out))), 1.0, rtol=1e-5)
