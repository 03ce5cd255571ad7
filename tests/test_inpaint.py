"""Inpainting on the sampler's loop: every fixed-step solver against the exact conditional of
Gaussian data, and the same grid, defaults and key scheme as `sample`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import inpaint, sample, schedules
from tests.helpers import Gaussian

KEY = jax.random.PRNGKey(0)
VP = diffjax.vp()
KNOWN_VALUE, RHO = 1.5, 0.9
MASK = jnp.array([1.0, 0.0])  # coordinate 0 known, coordinate 1 generated


def _gaussian_eps(process, q, lam, x_t, t):
    """Exact eps-prediction for data N(0, Q diag(lam) Q^T):
    eps = sigma (alpha^2 cov + sigma^2 I)^-1 x_t = sigma Q diag(1 / (alpha^2 lam + sigma^2)) Q^T x_t
    (matrix products only, which compile faster than a batched solve)."""
    a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]  # [B, 1]
    return s * (((x_t @ q) / (a**2 * lam[None] + s**2)) @ q.T)


def _model(process, cov):
    """A pytree model: the covariance's eigenvectors and eigenvalues are traced leaves, so the
    two data sets of a test share one compiled program."""
    lam, q = np.linalg.eigh(np.asarray(cov, np.float64))
    return jax.tree_util.Partial(
        _gaussian_eps, process, jnp.asarray(q, jnp.float32), jnp.asarray(lam, jnp.float32)
    )


@pytest.mark.parametrize(
    "solver", ["ddpm", "ddim", "euler", "heun", "rk4", "dpm_solver", "dpm_solver_pp", "plms"]
)
def test_every_solver_samples_the_exact_gaussian_conditional(solver):
    """The tolerances of the DDPM test in tests/test_guidance.py. Independent coordinates: the
    generated one follows its own marginal N(0, 4) (5-sigma Monte Carlo bounds on mean and
    variance, + 0.1 for the discretisation). Correlation 0.9: the exact conditional mean is
    rho x_known = 1.35 (helpers.Gaussian.conditional); replacement alone is biased, ten RePaint
    rounds per step must reduce the bias below 0.15."""
    n = 4000
    known = jnp.tile(jnp.array([[KNOWN_VALUE, 0.0]]), (n, 1))
    kw = dict(solver=solver, steps=50)
    indep = inpaint(KEY, _model(VP, jnp.diag(jnp.array([1.0, 4.0]))), VP, known, MASK, **kw)
    np.testing.assert_array_equal(indep[:, 0], known[:, 0])
    assert abs(float(indep[:, 1].mean())) < 5 * 2 / np.sqrt(n)
    assert abs(float(indep[:, 1].var()) - 4.0) < 5 * 4 * np.sqrt(2 / n) + 0.1

    cov = np.array([[1.0, RHO], [RHO, 1.0]])
    mean, _ = Gaussian(np.zeros(2), cov).conditional([True, False], [KNOWN_VALUE])
    errs = []
    for jumps in (1, 10):
        out = inpaint(jax.random.fold_in(KEY, jumps), _model(VP, cov), VP, known[:1000], MASK,
                      jumps=jumps, **kw)  # fmt: skip
        np.testing.assert_array_equal(out[:, 0], known[:1000, 0])
        errs.append(abs(float(out[:, 1].mean()) - float(mean[0])))
    assert errs[1] < errs[0] and errs[1] < 0.15, errs


@pytest.mark.parametrize(
    "name, process, solver, options",
    [
        ("ve", diffjax.ve(), "heun", {}),
        ("ve", diffjax.ve(), "ddpm", {}),
        ("vp", VP, "dpm_solver", {"order": 2}),
        ("chain", diffjax.discrete(schedules.linear_betas(100)), "plms", {}),
        ("chain", diffjax.discrete(schedules.linear_betas(100)), "ddim", {"eta": 1.0}),
    ],
)
def test_nothing_known_is_sample(name, process, solver, options):
    """With mask = 0 and jumps = 1, inpaint is `sample` with the same key: the same grid (VE's
    default t_min is `sample`'s, process.sample_t_min), spacing, prior and step keys."""
    model = _model(process, jnp.array([[1.0, 0.5], [0.5, 2.0]]))
    zeros = jnp.zeros((64, 2))
    kw = dict(solver=solver, steps=10, return_info=True, **options)
    out, info = inpaint(KEY, model, process, zeros, jnp.zeros(2), **kw)
    ref, ref_info = sample(KEY, model, process, zeros.shape, **kw)
    np.testing.assert_array_equal(info["ts"], ref_info["ts"])
    assert info["ts"][-1] == process.sample_t_min and info["nfe"] == ref_info["nfe"]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_options_and_explicit_grid_are_samples():
    """t_max, spacing, denoise_final and an explicit `ts` mean what they mean in `sample`."""
    chain = diffjax.discrete(schedules.linear_betas(100))
    model = _model(chain, jnp.eye(2))
    zeros = jnp.zeros((16, 2))
    ts = np.array([0.9, 0.6, 0.3, 0.1, 0.0])
    for kw in (dict(ts=ts), dict(steps=4, t_max=0.5, spacing="uniform", denoise_final=True)):
        out, info = inpaint(KEY, model, chain, zeros, 0.0, solver="euler", return_info=True, **kw)
        ref = sample(KEY, model, chain, zeros.shape, solver="euler", **kw)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(info["ts"], np.asarray(diffjax.time_grid(chain, 4, t_max=0.5)))


def test_inpaint_refuses_what_it_cannot_do():
    m = lambda x, t: x  # noqa: E731
    args = (KEY, m, VP, jnp.zeros((2, 2)), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="'dopri5' is adaptive"):
        inpaint(*args, solver="dopri5")
    with pytest.raises(ValueError, match="jumps = 0"):
        inpaint(*args, jumps=0)
    with pytest.raises(ValueError, match="trajectory"):
        inpaint(*args, return_trajectory=True)
    with pytest.raises(ValueError, match="replaces steps"):
        inpaint(*args, steps=4, ts=np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="unknown option"):
        inpaint(*args, bogus=1)
