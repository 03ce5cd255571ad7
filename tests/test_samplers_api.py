"""Grids, the shared options of `sample` (info, x_init, t_max, denoise_final, clip_x0,
trajectory), the learned-variance DDPM identities, the dopri5 NFE count, and bad options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import processes, schedules, toy
from diffjax.samplers import SOLVERS, count_nfe, sample, steps_for_nfe, time_grid
from tests.helpers import Gaussian, counting_model

VP = processes.vp()
MIX = toy.ring(k=4, radius=1.5, std=0.3)
KEY = jax.random.PRNGKey(0)


def _model(process=VP, kind="eps"):
    return toy.exact_model(MIX, process, kind)


def test_time_grids():
    t = np.asarray(time_grid(VP, 4))
    np.testing.assert_allclose(t, [1.0, 0.75025, 0.5005, 0.25075, 1e-3], rtol=1e-6)
    q = np.asarray(time_grid(VP, 4, "quadratic", t_min=0.0))
    np.testing.assert_allclose(q, [1.0, 0.5625, 0.25, 0.0625, 0.0], rtol=1e-6)
    lam = np.asarray(VP.log_snr(time_grid(VP, 5, "log_snr")))
    np.testing.assert_allclose(np.diff(lam), np.full(5, (lam[-1] - lam[0]) / 5), rtol=1e-4)
    # karras: nu = sigma / alpha follows (nu_max^(1/7) + i/N (nu_min^(1/7) - nu_max^(1/7)))^7
    ve = processes.ve(0.002, 80.0)
    nu = np.asarray(ve.sigma(time_grid(ve, 6, "karras")))
    i = np.arange(7) / 6
    expected = (80.0 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(nu, expected, rtol=1e-4)
    d = np.asarray(time_grid(processes.discrete(schedules.linear_betas(1000)), 50, "discrete"))
    np.testing.assert_allclose(d * 1000, np.arange(1000, -1, -20), atol=1e-3)


@pytest.mark.parametrize(
    "name, opts, nfe",
    [
        ("ddim", {}, 5),
        ("heun", {}, 10),
        ("rk4", {}, 20),
        ("pc", {"n_corrector": 2}, 15),
        ("annealed_langevin", {"n_steps_each": 3}, 15),
        ("dpm_solver", {"order": 2, "denoise_final": True}, 11),
        ("plms", {}, 5),
    ],
)
def test_info_nfe_equals_counted_model_calls(name, opts, nfe):
    """steps = number of intervals; info['nfe'] = model calls actually made (stages per
    interval, plus one for denoise_final), counted at run time."""
    model, calls = counting_model()
    x, info = sample(KEY, model, VP, (8, 2), solver=name, steps=5, return_info=True, **opts)
    jax.block_until_ready(x)
    assert info["nfe"] == nfe == len(calls) and len(info["ts"]) == 6


CHAIN = processes.discrete(schedules.linear_betas(100))


@pytest.mark.parametrize(
    "name, opts",
    [("ddim", {}), ("heun", {}), ("dpm_solver", {"order": 3}), ("dpm_solver", {"order": 2}),
     ("plms", {"warmup": "pseudo_runge_kutta"}), ("pc", {"n_corrector": 1}), ("dpm_solver_pp", {})],
)  # fmt: skip
def test_count_nfe_and_steps_for_nfe_match_the_calls_sample_makes(name, opts):
    """count_nfe (no sampling) = the model calls counted at run time on a 100-step chain, and
    steps_for_nfe(budget) is the largest N that fits: N + 1 intervals would exceed it."""
    for budget in (7, 10, 20):
        steps = steps_for_nfe(name, CHAIN, budget, **opts)
        model, calls = counting_model()
        x = sample(KEY, model, CHAIN, (4, 2), solver=name, steps=steps, **opts)
        jax.block_until_ready(x)
        assert count_nfe(name, CHAIN, steps, **opts) == len(calls) <= budget
        assert count_nfe(name, CHAIN, steps + 1, **opts) > budget


def test_steps_for_nfe_limits_and_errors():
    assert steps_for_nfe("ddpm", CHAIN, 1000) == 100  # a 100-step chain has at most 100
    assert count_nfe("dopri5", VP) is None
    with pytest.raises(ValueError, match="adaptive"):
        steps_for_nfe("dopri5", VP, 10)
    with pytest.raises(ValueError, match="costs 4 evaluations > nfe = 3"):
        steps_for_nfe("rk4", VP, 3)
    with pytest.raises(ValueError, match="nfe must be >= 1"):
        steps_for_nfe("ddim", VP, 0)
    with pytest.raises(ValueError, match="unknown solver"):
        count_nfe("dpm_solver_4", VP, 10)


def test_heun_skips_correction_at_sigma_zero():
    """Karras et al. Alg. 2, line 9: no correction on the last step of a chain ending at x_0."""
    chain = processes.discrete(schedules.linear_betas(100))
    model, calls = counting_model()
    x, info = sample(KEY, model, chain, (8, 2), solver="heun", steps=5, return_info=True)
    jax.block_until_ready(x)
    assert info["nfe"] == 9 == len(calls)


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_dopri5_nfe_matches_counted_model_calls(tol):
    """info['nfe'] (from diffrax's num_steps) equals the number of model calls."""
    model, calls = counting_model()
    x, info = sample(KEY, model, VP, (8, 2), solver="dopri5", return_info=True, rtol=tol, atol=tol)
    jax.block_until_ready(x)
    assert int(info["nfe"]) == len(calls) > 10


def test_trajectory_x_init_and_t_max():
    x_init = jax.random.normal(KEY, (8, 2))
    x, info = sample(KEY, _model(), VP, (8, 2), solver="ddim", steps=4, x_init=x_init,
                     t_max=0.5, return_info=True, return_trajectory=True)  # fmt: skip
    traj = info["trajectory"]
    assert traj.shape == (5, 8, 2)
    np.testing.assert_array_equal(traj[0], x_init)
    np.testing.assert_array_equal(traj[-1], x)
    assert info["ts"][0] == 0.5
    # one DDIM step equals its closed form alpha_s x0_hat + sigma_s eps_hat
    t, s = info["ts"][:2]
    tb = jnp.full((8,), t, jnp.float32)
    x0 = toy.denoiser(MIX, VP, x_init, tb)
    eps = (x_init - VP.alpha(t) * x0) / VP.sigma(t)
    np.testing.assert_allclose(traj[1], VP.alpha(s) * x0 + VP.sigma(s) * eps, rtol=1e-4, atol=1e-4)


def test_denoise_final_and_clip():
    kw = dict(solver="ddim", steps=5, x_init=jax.random.normal(KEY, (8, 2)), t_min=0.3)
    x = sample(KEY, _model(), VP, (8, 2), **kw)
    x0 = sample(KEY, _model(), VP, (8, 2), denoise_final=True, **kw)
    np.testing.assert_allclose(x0, toy.denoiser(MIX, VP, x, jnp.full((8,), 0.3)), atol=1e-4)
    clipped = sample(KEY, _model(), VP, (8, 2), denoise_final=True, clip_x0=(-0.1, 0.1), **kw)
    assert float(jnp.max(jnp.abs(clipped))) <= 0.1 + 1e-6


def test_learned_variance_extremes_equal_small_and_large():
    """v = -1 gives the posterior variance ('small'), v = +1 the transition variance ('large')
    (Nichol & Dhariwal 2021, eq. 15), so the same key gives the same samples."""
    chain = processes.discrete(schedules.linear_betas(100))
    eps_model = lambda x, t: 0.5 * x  # noqa: E731  (any eps model will do)
    for v, variance in ((-1.0, "small"), (1.0, "large")):

        def learned(x, t, v=v):
            return jnp.concatenate([eps_model(x, t), jnp.full_like(x, v)], axis=-1)

        a = sample(KEY, learned, chain, (8, 2), solver="ddpm", steps=20, variance="learned")
        b = sample(KEY, eps_model, chain, (8, 2), solver="ddpm", steps=20, variance=variance)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# Settings where the defaults (VP, the exact eps model, 50 steps; steps=None for an adaptive
# solver) do not fit; every other SOLVERS entry, including any added later, runs with the defaults.
REGISTRY_SETTINGS = {
    "annealed_langevin": dict(
        process=processes.ve(0.05, 10.0), steps=20, opts={"n_steps_each": 60, "step_lr": 2e-3}
    ),  # fmt: skip
    "euler_maruyama": dict(steps=300),
    "pc": dict(process=processes.ve(0.01, 20.0), steps=150, opts={"snr": 0.16}),
    "consistency": dict(model="consistency"),  # the exact consistency function, an x0-model
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_registered_solver_samples_a_gaussian(name):
    """Each SOLVERS entry with the exact model of N(mu, Sigma) data (the oracle of
    tests/helpers.py) ends at the grid's last time t_end with samples whose law is exactly
    N(alpha mu, alpha^2 Sigma + sigma^2 I) at t_end: mean within 5 standard errors + 0.03, the
    covariance within 6 Gaussian standard errors sqrt((S_ii S_jj + S_ij^2) / n) + 0.05 (the
    discretisation slack of tests/test_samplers.py)."""
    n, g = 4000, Gaussian([0.5, -1.0], [[1.0, 0.6], [0.6, 0.8]])
    setting = REGISTRY_SETTINGS.get(name, {})
    process, opts = setting.get("process", VP), setting.get("opts", {})
    steps = None if SOLVERS[name].step is None else setting.get("steps", 50)
    if setting.get("model") == "consistency":  # returns x0_hat of its last step: t_end = 0
        model, kind, t_end = g.consistency_model(process), "x0", 0.0
    else:
        model, kind, t_end = g.model(process, "eps"), "eps", None
    x, info = sample(KEY, model, process, (n, 2), solver=name, steps=steps, prediction=kind,
                     return_info=True, **opts)  # fmt: skip
    t_end = float(np.asarray(info["ts"])[-1]) if t_end is None else t_end
    a, s = float(process.alpha(t_end)), float(process.sigma(t_end))
    mean, cov = a * g.mu, g.cov_t(a, s)
    x = np.asarray(x, np.float64)
    assert x.shape == (n, 2) and np.all(np.isfinite(x)) and int(info["nfe"]) > 0
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(np.diag(cov) / n) + 0.03)
    se_c = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 6 * se_c + 0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(solver="nope", steps=5), "unknown solver 'nope'"),
        (dict(solver="ddim", steps=0), "steps = 0"),
        (dict(solver="ddim", steps=None), "steps = None"),
        (dict(solver="dpm_solver", steps=5, order=4), "order = 4"),
        (dict(solver="ddim", steps=5, eta=-0.5), "eta = -0.5"),
        (dict(solver="dopri5", steps=5), "steps=5"),
        (dict(solver="ddim", steps=5, spacing="cubic"), "unknown spacing 'cubic'"),
        (dict(solver="ddim", steps=5, spacing="discrete"), "Discrete process"),
        (dict(solver="ddpm", steps=5, variance="huge"), "'huge'"),
        (dict(solver="ddim", steps=5, foo=1), "foo"),
        (dict(solver="ddim", steps=5, prediction="noise"), "'noise'"),
        (dict(solver="ddim", steps=5, t_min=0.5, t_max=0.2), "t_min = 0.5"),
        (dict(solver="pc", steps=5, n_corrector=-1), "n_corrector = -1"),
        (dict(solver="ddim", steps=5, clip_x0=(1.0, -1.0)), "clip_x0"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(KEY, _model(), VP, (4, 2), **kwargs)


def test_bad_options_specific_to_processes():
    rf = processes.rectified_flow()
    with pytest.raises(ValueError, match="alpha"):
        sample(KEY, _model(rf), rf, (4, 2), solver="dpm_solver", steps=5, t_max=1.0)
    with pytest.raises(ValueError, match="sigma"):
        sample(KEY, _model(rf), rf, (4, 2), solver="annealed_langevin", steps=5, t_min=0.0)
    chain = processes.discrete(schedules.linear_betas(10))
    with pytest.raises(ValueError, match="steps = 20"):
        sample(KEY, _model(chain), chain, (4, 2), solver="ddim", steps=20)


def test_ddpm_step_is_ho_et_al_algorithm_2():
    """One step n = T -> T - 1 of a T = 10 chain against Ho et al. (2020), Algorithm 2, in numpy:
    x_{n-1} = (x_n - beta_n / sqrt(1 - abar_n) eps) / sqrt(1 - beta_n) + sqrt(beta-tilde_n) z,
    with z drawn by the documented key scheme (loop key = split(key)[1], step key fold_in(., 0))."""
    betas = schedules.linear_betas(10, 1e-2, 0.3)
    chain = processes.discrete(betas)
    x_init = jax.random.normal(jax.random.PRNGKey(9), (8, 2))
    model = lambda x, t: 0.5 * x  # noqa: E731
    _, info = sample(KEY, model, chain, (8, 2), solver="ddpm", steps=10, x_init=x_init,
                     return_info=True, return_trajectory=True)  # fmt: skip
    abar = np.cumprod(1 - betas)
    z = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.split(KEY)[1], 0), (8, 2)))
    x = np.asarray(x_init, np.float64)
    beta_tilde = (1 - abar[-2]) / (1 - abar[-1]) * betas[-1]
    expected = (x - betas[-1] / np.sqrt(1 - abar[-1]) * 0.5 * x) / np.sqrt(1 - betas[-1])
    expected += np.sqrt(beta_tilde) * z
    np.testing.assert_allclose(info["trajectory"][1], expected, rtol=1e-4, atol=1e-5)


def test_ddim_eta_one_is_ddpm_small():
    """DDIM with eta = 1 is ancestral sampling with the posterior variance (Song et al. 2021a,
    Sec. 4.1): the same key gives the same samples."""
    kw = dict(steps=8, x_init=jax.random.normal(KEY, (8, 2)))
    a = sample(KEY, _model(), VP, (8, 2), solver="ddim", eta=1.0, **kw)
    b = sample(KEY, _model(), VP, (8, 2), solver="ddpm", variance="small", **kw)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_sample_inside_user_jit_with_traced_parameters():
    """`sample` resolves its grid at trace time, so it runs inside an outer jit whose model
    closes over traced parameters; the result equals the eager call and compiles once."""

    def run(scale, key):
        return sample(key, lambda x, t: scale * x, VP, (4, 2), solver="heun", steps=5)

    jitted = jax.jit(run)
    np.testing.assert_allclose(jitted(0.5, KEY), run(0.5, KEY), rtol=1e-5, atol=1e-5)
    jitted(0.3, KEY)
    assert jitted._cache_size() == 1


def test_noise_level_grids_with_infinite_log_snr_ends():
    """Rectified flow has log-SNR -inf at t = 1 and +inf at t = 0: the log-SNR grid is uniform
    between the levels at 1 - 1e-3 and 1e-3, and the ends replace its first and last points."""
    rf = processes.rectified_flow()
    t = np.asarray(time_grid(rf, 8, "log_snr"))
    assert t[0] == 1.0 and t[-1] == 0.0 and np.all(np.diff(t) < 0)
    lam = 2 * np.log((1 - t[1:-1]) / t[1:-1])  # closed-form log-SNR of rectified flow
    edges = 2 * np.log(np.array([1e-3 / (1 - 1e-3), (1 - 1e-3) / 1e-3]))
    np.testing.assert_allclose(lam, np.linspace(*edges, 9)[1:-1], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        time_grid(processes.vp(), 1000, "uniform", t_min=0.99999)  # dt = 1e-8 < f32 ulp at 1


def test_pc_corrector_skips_a_vanishing_score(key):
    """A zero score gives the Langevin corrector no direction: the step is skipped (the
    step-size formula would otherwise divide by a zero norm and return inf)."""
    import diffjax

    zero_score = lambda x, t: jnp.zeros_like(x)
    out = diffjax.sample(
        key, zero_score, diffjax.ve(), (4, 2), solver="pc", steps=5, prediction="score"
    )
    assert bool(jnp.all(jnp.isfinite(out)))


# ---------------------------------------------------------------------------- explicit grids
_CHAIN = processes.discrete(schedules.linear_betas(100))


@pytest.mark.parametrize(
    "process, solver, opts",
    [
        (VP, "ddim", {}),
        (VP, "dpm_solver", {"order": 2}),  # its default grid is uniform in log-SNR
        (VP, "dpm_solver_pp", {}),
        (VP, "annealed_langevin", {}),  # reads t_min from the options
        (_CHAIN, "ddpm", {}),  # the chain's integer grid n_i / T
        (_CHAIN, "plms", {}),
        (processes.ve(), "heun", {}),
        (processes.rectified_flow(), "euler", {"prediction": "velocity"}),
    ],
)
def test_explicit_default_grid_equals_the_default_call(process, solver, opts):
    """sample(..., ts=time_grid(default spacing, t_min, t_max)) is the default call, bit for
    bit (and reports the same grid and NFE)."""
    from diffjax.samplers import default_spacing

    kind = opts.get("prediction", "eps")
    a, info = sample(KEY, _model(process, kind), process, (8, 2), solver=solver, steps=6,
                     return_info=True, **opts)  # fmt: skip
    ts = time_grid(process, 6, default_spacing(process, solver), process.sample_t_min, 1.0)
    b, info_ts = sample(KEY, _model(process, kind), process, (8, 2), solver=solver, ts=ts,
                        return_info=True, **opts)  # fmt: skip
    np.testing.assert_array_equal(info["ts"], np.asarray(ts))
    np.testing.assert_array_equal(a, b)
    assert info["nfe"] == info_ts["nfe"]


def test_explicit_grid_for_dopri5_and_singular_start():
    """dopri5 integrates over [ts[0], ts[-1]]; t_max = ts[0] gets the same alpha(t_max) = 0
    check as a given t_max; a third-party integer schedule (trailing, T = 100) runs as given."""
    a = sample(KEY, _model(), VP, (8, 2), solver="dopri5")
    b = sample(KEY, _model(), VP, (8, 2), solver="dopri5", ts=np.array([1.0, 1e-3]))
    np.testing.assert_array_equal(a, b)
    rf = processes.rectified_flow()
    with pytest.raises(ValueError, match="alpha"):
        sample(KEY, _model(rf), rf, (4, 2), solver="dpm_solver", ts=np.array([1.0, 0.5, 0.0]))
    trailing = np.array([99, 74, 49, 24, 0]) / 100
    _, info = sample(KEY, _model(_CHAIN), _CHAIN, (4, 2), solver="ddim", ts=trailing,
                     return_info=True, return_trajectory=True)  # fmt: skip
    assert info["trajectory"].shape == (5, 4, 2) and info["nfe"] == 4


@pytest.mark.parametrize(
    "ts, match",
    [
        (np.array([0.1, 0.5, 1.0]), r"strictly decreasing .*ts\[0\] = 0.1"),
        (np.array([1.0, 0.5, 0.5, 0.0]), r"strictly decreasing .*ts\[2\] = 0.5"),
        (np.array([1.5, 0.5, 0.0]), r"inside \[0, 1\]; got ts\[0\] = 1.5"),
        (np.array([1.0, 0.5, -0.1]), r"inside \[0, 1\]; got ts\[2\] = -0.1"),
        (np.ones((2, 3)), r"1-D grid .* shape \(2, 3\)"),
        (np.array([0.5]), r"at least 2 .* shape \(1,\)"),
        (np.array([1.0, np.nan, 0.0]), r"finite; got ts\[1\] = nan"),
        (np.array([1.0, 0.5 + 1e-9, 0.5]), r"strictly decreasing in float32"),
        (np.array(["1", "0"]), "real-valued"),
    ],
)
def test_bad_explicit_grids_raise(ts, match):
    with pytest.raises(ValueError, match=match):
        sample(KEY, _model(), VP, (4, 2), solver="ddim", ts=ts)


def test_explicit_grid_replaces_steps_and_the_grid_options():
    ts = np.array([1.0, 0.5, 1e-3])
    given = [
        (dict(steps=2), "steps=2"),
        (dict(t_min=0.1), "t_min=0.1"),
        (dict(spacing="uniform"), "spacing='uniform'"),
        (dict(t_max=1.0), "t_max"),
    ]
    for kw, match in given:
        with pytest.raises(ValueError, match=f"replaces steps.*{match}"):
            sample(KEY, _model(), VP, (4, 2), solver="ddim", ts=ts, **kw)
    with pytest.raises(ValueError, match="order = 4"):  # the solver's own check still runs
        sample(KEY, _model(), VP, (4, 2), solver="dpm_solver", ts=ts, order=4)
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda g: sample(KEY, _model(), VP, (4, 2), solver="ddim", ts=g))(ts)


# ---------------------------------------------------------------------------- learned variance
def _with_variance_channels(model):
    """A learned-variance model [B, 2C]: the exact mean channels, then arbitrary v channels."""
    return lambda x, t: jnp.concatenate([model(x, t), jnp.sin(3.0 * x) * t[:, None]], axis=-1)


@pytest.mark.parametrize(
    "process, solver, opts",
    [
        (VP, "ddim", {}),
        (VP, "ddim", {"eta": 1.0}),
        (VP, "euler", {}),
        (VP, "dpm_solver", {}),
        (VP, "plms", {}),
        (_CHAIN, "ddpm", {"variance": "small"}),
    ],
)
def test_learned_variance_model_samples_with_its_mean(process, solver, opts):
    """Every solver that needs only the mean: the 2C-channel model with learned_variance=True
    gives the samples of its mean-only model (same key)."""
    exact = _model(process)
    kw = dict(solver=solver, steps=6, **opts)
    a = sample(KEY, _with_variance_channels(exact), process, (8, 2), learned_variance=True, **kw)
    b = sample(KEY, exact, process, (8, 2), **kw)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_learned_variance_errors(monkeypatch):
    learned = _with_variance_channels(_model())
    with pytest.raises(ValueError, match="learned_variance=True"):  # not a broadcasting error
        sample(KEY, learned, VP, (4, 2), solver="ddim", steps=3)
    with pytest.raises(ValueError, match=r"shape \(4, 3\); expected \(4, 2\)"):
        sample(KEY, lambda x, t: jnp.ones((4, 3)), VP, (4, 2), solver="ddim", steps=3)
    with pytest.raises(ValueError, match="learned_variance must be True or False"):
        sample(KEY, learned, VP, (4, 2), solver="ddim", steps=3, learned_variance="yes")
    monkeypatch.setitem(
        SOLVERS, "raw_ddim", SOLVERS["ddim"]._replace(accepts_learned_variance=False)
    )
    with pytest.raises(ValueError, match="solver 'raw_ddim' cannot sample a learned-variance"):
        sample(KEY, learned, VP, (4, 2), solver="raw_ddim", steps=3, learned_variance=True)


def test_carried_options_keep_the_model_options_and_drop_the_solver_ones():
    """A run configured for ddpm (variance, clip) asked for ddim keeps the data-range clip and
    the learned-variance layout, drops ddpm's variance, and the result is accepted by ddim."""
    from diffjax.samplers.api import _options, carried_options

    run = {"variance": "learned", "clip_x0": (-1.0, 1.0), "learned_variance": True, "t_min": 0.01}
    assert carried_options(run, "ddpm", "ddpm") == run
    out = carried_options(run, "ddpm", "ddim")
    assert out == {"clip_x0": (-1.0, 1.0), "learned_variance": True, "t_min": 0.01}
    _, opts = _options("ddim", out)  # every carried name is a ddim option
    assert opts["clip_x0"] == (-1.0, 1.0)
    with pytest.raises(ValueError, match="variance"):
        _options("ddim", run)  # what passing the run's options unfiltered would do
