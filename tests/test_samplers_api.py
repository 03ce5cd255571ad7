"""Grids, the shared options of `sample` (info, x_init, t_max, denoise_final, clip_x0,
trajectory), the learned-variance DDPM identities, the dopri5 NFE count, and bad options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import processes, schedules, toy
from diffjax.samplers import SOLVERS, sample, time_grid

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


def _counting_model():
    """A cheap linear eps model that counts its calls at run time (jax.debug.callback)."""
    calls = []

    def model(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return 0.5 * x

    return model, calls


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
    model, calls = _counting_model()
    x, info = sample(KEY, model, VP, (8, 2), solver=name, steps=5, return_info=True, **opts)
    jax.block_until_ready(x)
    assert info["nfe"] == nfe == len(calls) and len(info["ts"]) == 6


def test_heun_skips_correction_at_sigma_zero():
    """Karras et al. Alg. 2, line 9: no correction on the last step of a chain ending at x_0."""
    chain = processes.discrete(schedules.linear_betas(100))
    model, calls = _counting_model()
    x, info = sample(KEY, model, chain, (8, 2), solver="heun", steps=5, return_info=True)
    jax.block_until_ready(x)
    assert info["nfe"] == 9 == len(calls)


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_dopri5_nfe_matches_counted_model_calls(tol):
    """info['nfe'] (from diffrax's num_steps) equals the number of model calls."""
    model, calls = _counting_model()
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


def test_every_solver_is_registered():
    assert set(SOLVERS) == {
        "ddpm", "ddim", "euler_maruyama", "pc", "annealed_langevin", "euler", "heun", "rk4",
        "dopri5", "dpm_solver", "dpm_solver_pp", "plms",
    }  # fmt: skip


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
