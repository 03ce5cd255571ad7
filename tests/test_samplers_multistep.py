"""The multistep solvers of issue 12 (DPM-Solver++(2M/3M), 2M SDE, multistep DPM-Solver, UniPC,
Euler ancestral, PLMS warm starts): identities, order schedules, NFE counts and bad options.
Convergence orders are in test_samplers_convergence.py, distribution checks in test_samplers.py,
the final step to sigma = 0 in test_samplers_final_step.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import processes, schedules, toy
from diffjax.samplers import sample
from tests.helpers import counting_model

VP = processes.vp()
CHAIN = processes.discrete(schedules.linear_betas(1000))
MIX = toy.ring(k=4, radius=1.5, std=0.3)
KEY = jax.random.PRNGKey(0)


def _mix64():
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), MIX)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_euler_ancestral_is_ddim_with_the_same_eta(eta):
    """k-diffusion's ancestral step in nu = sigma / alpha has variance eta^2 times DDPM's posterior
    variance, so it is DDIM(eta) (Song et al. 2021a, eq. 16) on the same grid and key."""
    kw = dict(steps=8, x_init=jax.random.normal(KEY, (64, 2)), prediction="x0")
    model = toy.exact_model(MIX, VP, "x0")
    a = sample(KEY, model, VP, (64, 2), solver="euler_ancestral", eta=eta, **kw)
    b = sample(KEY, model, VP, (64, 2), solver="ddim", eta=eta, **kw)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _ddim_step(process, model_x0, x, t, s):
    x0 = model_x0(x, jnp.full(x.shape[:1], t, x.dtype))
    eps = (x - process.alpha(t) * x0) / process.sigma(t)
    return process.alpha(s) * x0 + process.sigma(s) * eps


@pytest.mark.parametrize(
    "name, order",
    [("dpm_solver_pp", 3), ("dpm_solver_multistep", 3), ("unipc", 2), ("dpm_solver_pp", 2)],
)
def test_lower_order_final_makes_the_last_step_ddim(x64, name, order):
    """With lower_order_final and N < 15 the last step is first order, i.e. a DDIM step from the
    state entering it (diffusers' and the reference codes' convention); without it, it is not.
    (UniPC without its corrector here: the corrector moves the state after the trajectory
    records it.)"""
    extra = {"corrector": False} if name == "unipc" else {}
    model = toy.exact_model(_mix64(), VP, "x0")
    kw = dict(steps=6, x_init=jax.random.normal(KEY, (16, 2), jnp.float64), prediction="x0",
              order=order, return_info=True, return_trajectory=True)  # fmt: skip
    outs = {}
    for lof in (True, False):
        x, info = sample(KEY, model, VP, (16, 2), solver=name, lower_order_final=lof, **kw, **extra)
        ts, traj = info["ts"], info["trajectory"]
        outs[lof] = np.max(np.abs(x - _ddim_step(VP, model, traj[-2], ts[-2], ts[-1])))
    assert outs[True] < 1e-12 < 1e-6 < outs[False]


def test_dpm_solver_pp_first_step_is_ddim_and_order_1_is_ddim(x64):
    """DPM-Solver++ with order=1 is DDIM (Lu et al. 2022b, Sec. 4.1) on the same grid."""
    model = toy.exact_model(_mix64(), VP, "eps")
    kw = dict(steps=7, x_init=jax.random.normal(KEY, (16, 2), jnp.float64), spacing="log_snr")
    a = sample(KEY, model, VP, (16, 2), solver="ddim", **kw)
    for name in ("dpm_solver_pp", "dpm_solver_multistep", "unipc"):
        opts = {"corrector": False} if name == "unipc" else {}
        b = sample(KEY, model, VP, (16, 2), solver=name, order=1, **kw, **opts)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "name, opts, nfe",
    [
        ("plms", {"warmup": "adams_bashforth"}, 5),
        ("plms", {"warmup": "pseudo_improved_euler"}, 6),
        ("plms", {"warmup": "pseudo_runge_kutta"}, 14),
        ("dpm_solver_pp", {"order": 3}, 5),
        ("dpm_solver_pp_sde", {}, 5),
        ("dpm_solver_multistep", {"order": 3}, 5),
        ("unipc", {"order": 3}, 5),
        ("euler_ancestral", {}, 5),
    ],
)
def test_info_nfe_equals_counted_model_calls(name, opts, nfe):
    model, calls = counting_model()
    x, info = sample(KEY, model, VP, (8, 2), solver=name, steps=5, return_info=True, **opts)
    jax.block_until_ready(x)
    assert info["nfe"] == nfe == len(calls)


def test_plms_warm_start_step_local_error(x64):
    """One warm-up step t = 0.6 -> 0.6 - h on VP against a 50-step DPM-Solver-3 reference: the
    local error of AB1 (= DDIM) falls as h^2, the pseudo improved-Euler and pseudo Runge-Kutta
    starts as ~h^3.3 (measured local slopes AB1 2.30, 2.16; PIE 3.44, 3.23; PRK 3.45, 3.21;
    errors at h = 0.025: 8.5e-4, 1.3e-4, 2.7e-5)."""
    model = toy.exact_model(_mix64(), VP, "eps")
    x_init = jax.random.normal(jax.random.PRNGKey(4), (16, 2), jnp.float64)
    hs, t0 = (0.1, 0.05, 0.025), 0.6
    refs = [sample(KEY, model, VP, (16, 2), solver="dpm_solver", order=3, steps=50,
                   x_init=x_init, t_max=t0, t_min=t0 - h) for h in hs]  # fmt: skip
    slopes, last = {}, {}
    for warmup in ("adams_bashforth", "pseudo_improved_euler", "pseudo_runge_kutta"):
        errs = []
        for h, ref in zip(hs, refs, strict=True):
            x = sample(KEY, model, VP, (16, 2), solver="plms", steps=1, x_init=x_init,
                       t_max=t0, t_min=t0 - h, warmup=warmup)  # fmt: skip
            errs.append(float(jnp.max(jnp.abs(x - ref))))
        slopes[warmup] = np.polyfit(np.log(hs), np.log(errs), 1)[0]
        last[warmup] = errs[-1]
    assert abs(slopes["adams_bashforth"] - 2) < 0.4, slopes
    assert slopes["pseudo_improved_euler"] > 2.9 and slopes["pseudo_runge_kutta"] > 2.9, slopes
    assert last["pseudo_runge_kutta"] < last["pseudo_improved_euler"] < last["adams_bashforth"]


@pytest.mark.slow
def test_plms_warm_starts_end_to_end(x64):
    """20-step PLMS on the T = 1000 chain to t = 0.1 against a 300-step DPM-Solver-3 reference
    (itself within 4e-6 of the 150-step one). Measured max abs errors: adams_bashforth 1.8165e-2,
    pseudo_improved_euler 1.8162e-2, pseudo_runge_kutta 1.8159e-2 (10 steps: 7.68e-2, 7.67e-2,
    7.69e-2; 45 steps: 2.3246e-3, 2.3254e-3, 2.3257e-3): on this problem the warm start changes
    the end-to-end result by < 0.1 %; the AB4 steps dominate the error."""
    mix = _mix64()
    model = toy.exact_model(mix, CHAIN, "eps")
    x_init = jax.random.normal(jax.random.PRNGKey(4), (16, 2), jnp.float64)
    ref = sample(KEY, model, CHAIN, (16, 2), solver="dpm_solver", order=3, steps=300,
                 x_init=x_init, t_min=0.1, spacing="uniform")  # fmt: skip
    err = {}
    for warmup in ("adams_bashforth", "pseudo_improved_euler", "pseudo_runge_kutta"):
        x = sample(KEY, model, CHAIN, (16, 2), solver="plms", steps=20, x_init=x_init,
                   t_min=0.1, warmup=warmup)  # fmt: skip
        err[warmup] = float(jnp.max(jnp.abs(x - ref)))
    assert all(0.015 < e < 0.022 for e in err.values()), err
    assert max(err.values()) - min(err.values()) < 1e-4, err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(solver="dpm_solver_pp", order=4), "order = 4"),
        (dict(solver="dpm_solver_multistep", order=0), "order = 0"),
        (dict(solver="dpm_solver_pp_sde", order=3), "order = 3"),
        (dict(solver="unipc", order=5), "order = 5"),
        (dict(solver="unipc", corrector="yes"), "corrector"),
        (dict(solver="dpm_solver_pp", lower_order_final=1), "lower_order_final"),
        (dict(solver="euler_ancestral", eta=-1.0), "eta = -1.0"),
        (dict(solver="plms", warmup="rk"), "'rk'"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(KEY, toy.exact_model(MIX, VP, "eps"), VP, (4, 2), steps=5, **kwargs)


def test_pseudo_warmup_needs_alpha_at_t_max():
    rf = processes.rectified_flow()
    with pytest.raises(ValueError, match="alpha"):
        sample(KEY, toy.exact_model(MIX, rf, "eps"), rf, (4, 2), solver="plms", steps=5,
               warmup="pseudo_runge_kutta", t_max=1.0)  # fmt: skip


def test_use_clipped_model_output_keeps_or_rederives_eps():
    """One DDIM step with clip_x0: x_s = alpha_s clip(x0) + sigma_s eps, with the model's own eps
    (diffusers' default use_clipped_model_output=False) or eps = (x_t - alpha_t clip(x0)) /
    sigma_t (True, diffjax's default, checked by the call without the flag)."""
    x_init = 3.0 * jax.random.normal(KEY, (8, 2))
    model = toy.exact_model(MIX, VP, "eps")
    kw = dict(steps=1, x_init=x_init, t_max=0.5, t_min=0.3, clip_x0=(-0.2, 0.2))
    tb = jnp.full((8,), 0.5)
    eps = model(x_init, tb)
    x0 = jnp.clip((x_init - VP.sigma(0.5) * eps) / VP.alpha(0.5), -0.2, 0.2)
    eps_c = (x_init - VP.alpha(0.5) * x0) / VP.sigma(0.5)
    for flag, e in ((False, eps), (True, eps_c), (None, eps_c)):
        flags = {} if flag is None else {"use_clipped_model_output": flag}
        x = sample(KEY, model, VP, (8, 2), solver="ddim", **flags, **kw)
        np.testing.assert_allclose(x, VP.alpha(0.3) * x0 + VP.sigma(0.3) * e, rtol=1e-5,
                                   atol=1e-5)  # fmt: skip


def test_dynamic_threshold_is_saharia_et_al():
    """denoise_final with dynamic_threshold=(p, max) returns clip(x0, -s, s) / s with the
    per-example s = clip(quantile_p |x0|, 1, max), computed here with numpy's quantile."""
    x_init = 4.0 * jax.random.normal(KEY, (8, 16))
    model = lambda x, t: 1.5 * x  # noqa: E731  (an x0 model with large values)
    for thr, top in ((0.9, np.inf), ((0.5, 2.0), 2.0)):
        p = thr if isinstance(thr, float) else thr[0]
        out = sample(KEY, model, VP, (8, 16), solver="ddim", steps=1, x_init=x_init, t_max=0.5,
                     t_min=0.3, prediction="x0", dynamic_threshold=thr,
                     denoise_final=True)  # fmt: skip
        # the state at t_min is a DDIM step; recompute its x0 and threshold it in numpy
        x_s = sample(KEY, model, VP, (8, 16), solver="ddim", steps=1, x_init=x_init, t_max=0.5,
                     t_min=0.3, prediction="x0", dynamic_threshold=thr)  # fmt: skip
        x0 = 1.5 * np.asarray(x_s, np.float64)
        s = np.clip(np.quantile(np.abs(x0), p, axis=-1), 1.0, top)[:, None]
        np.testing.assert_allclose(out, np.clip(x0, -s, s) / s, rtol=1e-5, atol=1e-5)
        assert float(jnp.max(jnp.abs(out))) <= 1.0 + 1e-6


@pytest.mark.parametrize("bad", [0.0, 1.5, (0.9, 0.5), (0.9,), "x"])
def test_bad_dynamic_threshold_raises(bad):
    with pytest.raises(ValueError, match="dynamic_threshold"):
        sample(KEY, toy.exact_model(MIX, VP, "eps"), VP, (4, 2), solver="ddim", steps=2,
               dynamic_threshold=bad)  # fmt: skip


@pytest.mark.parametrize(
    "name", ["ddpm", "ddim", "euler_maruyama", "dpm_solver_pp_sde", "euler_ancestral"]
)
def test_explicit_noise_replaces_the_step_keys_draws(name):
    """noise[i] equal to the documented draw of step i (fold_in(split(key)[1], i)) reproduces the
    keyed run; with the same explicit noise, two different keys give the same path."""
    process = CHAIN if name == "ddpm" else VP
    opts = {"eta": 1.0} if name == "ddim" else {}
    n, x_init = 6, jax.random.normal(jax.random.PRNGKey(5), (8, 2))
    model = toy.exact_model(MIX, process, "eps")
    loop_key = jax.random.split(KEY)[1]
    noise = jnp.stack(
        [jax.random.normal(jax.random.fold_in(loop_key, i), (8, 2)) for i in range(n)]
    )
    kw = dict(solver=name, steps=n, x_init=x_init, **opts)
    keyed = sample(KEY, model, process, (8, 2), **kw)
    explicit = sample(KEY, model, process, (8, 2), noise=noise, **kw)
    other_key = sample(jax.random.PRNGKey(77), model, process, (8, 2), noise=noise, **kw)
    # same draws, a different compiled program (float32 rounding only)
    np.testing.assert_allclose(explicit, keyed, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(other_key, explicit)
    assert not np.allclose(sample(jax.random.PRNGKey(77), model, process, (8, 2), **kw), keyed)


def test_bad_noise_raises():
    model = toy.exact_model(MIX, VP, "eps")
    with pytest.raises(ValueError, match=r"noise must have shape"):
        sample(KEY, model, VP, (4, 2), solver="ddim", eta=1.0, steps=3, noise=jnp.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="'pc'"):
        sample(KEY, model, VP, (4, 2), solver="pc", steps=3, noise=jnp.zeros((3, 4, 2)))
