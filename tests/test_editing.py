"""SDEdit and DDIM inversion against the closed forms of Gaussian data (tests/helpers.py oracle):
the probability-flow map of N(mu, Sigma) is affine, so every edited or inverted sample has an
exact reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax.editing import ddim_invert, ddim_reconstruct, sdedit
from tests.helpers import Gaussian

GAUSS = Gaussian.random(3, seed=0)


def _never_called(x_t, t):
    raise AssertionError("strength 0 must not call the model")


def test_sdedit_strength_zero_returns_the_input(key):
    x = jax.random.normal(key, (5, 3))
    out = sdedit(key, _never_called, diffjax.vp(), x, 0.0, solver="heun", steps=10)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    out, info = sdedit(key, _never_called, diffjax.vp(), x, 0, return_info=True)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    assert info["nfe"] == 0


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5", None])
def test_sdedit_refuses_a_strength_outside_the_unit_interval(key, bad):
    with pytest.raises(ValueError, match="strength"):
        sdedit(key, _never_called, diffjax.vp(), jnp.zeros((2, 3)), bad)


def test_sdedit_bad_options(key):
    m = GAUSS.model(diffjax.vp())
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="t_max"):
        sdedit(key, m, diffjax.vp(), x, 0.5, t_max=0.7)
    with pytest.raises(ValueError, match="ts\\[0\\]"):
        sdedit(key, m, diffjax.vp(), x, 0.5, ts=np.linspace(0.7, 0.001, 5))
    with pytest.raises(ValueError, match="adaptive"):
        sdedit(key, m, diffjax.vp(), x, 0.5, solver="dopri5")


@pytest.mark.parametrize(
    "name,process,kind",
    [("vp", diffjax.vp(), "eps"), ("rectified_flow", diffjax.rectified_flow(), "velocity")],
)
def test_sdedit_is_the_flow_map_of_the_noised_input(key, name, process, kind):
    """Each output is the exact probability-flow map t_start -> t_min (affine for Gaussian data)
    of its noised start x_start = alpha x_init + sigma eps; Heun (2nd order, 50 steps) is within
    2e-3 of it (measured: 2e-4 at 100 steps). The noised start itself is the forward kernel's:
    its mean over the batch is alpha x_init within 5 Monte Carlo standard deviations."""
    n, strength = 256, 0.6
    x_init = jnp.tile(jnp.array([[3.0, -2.0, 1.0]]), (n, 1))
    m = GAUSS.model(process, kind)
    out, info = sdedit(
        key, m, process, x_init, strength, solver="heun", steps=50, prediction=kind,
        return_info=True,
    )  # fmt: skip
    ts = info["ts"]
    assert float(ts[0]) == pytest.approx(strength)
    ref = GAUSS.flow_map(process, float(ts[0]), float(ts[-1]), info["x_start"])
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-3)
    a, s = float(process.alpha(strength)), float(process.sigma(strength))
    mean = np.asarray(info["x_start"]).mean(0)
    assert np.all(np.abs(mean - a * np.asarray(x_init[0])) < 5 * s / np.sqrt(n)), mean


def test_sdedit_at_strength_one_forgets_the_input(key):
    """Rectified flow has alpha(1) = 0, so at strength 1 the start is pure noise and the exact
    velocity model carries it to N(mu, Sigma) whatever x_init is: mean and covariance within
    5 Monte Carlo standard deviations (plus the ODE solver's small bias)."""
    n, p = 4000, diffjax.rectified_flow()
    x_init = jnp.tile(jnp.array([[3.0, -2.0, 1.0]]), (n, 1))
    out = sdedit(key, GAUSS.model(p, "velocity"), p, x_init, 1.0, solver="heun", steps=25,
                 prediction="velocity")  # fmt: skip
    out = np.asarray(out, np.float64)
    sd_mean = np.sqrt(np.diag(GAUSS.cov) / n)
    assert np.all(np.abs(out.mean(0) - GAUSS.mu) < 5 * sd_mean), (out.mean(0), GAUSS.mu)
    # Var of a sample covariance entry: (S_ij^2 + S_ii S_jj) / n
    sd_cov = np.sqrt((GAUSS.cov**2 + np.outer(np.diag(GAUSS.cov), np.diag(GAUSS.cov))) / n)
    assert np.all(np.abs(np.cov(out.T) - GAUSS.cov) < 5 * sd_cov + 0.01)


def _round_trip(process, kind, x0, steps, fixed_point=0):
    m = GAUSS.model(process, kind)
    z, info = ddim_invert(
        m, process, x0, steps=steps, prediction=kind, fixed_point=fixed_point, return_info=True
    )
    rec = ddim_reconstruct(jax.random.PRNGKey(1), m, process, z, info["ts"], prediction=kind)
    return z, info, float(jnp.max(jnp.abs(rec - x0)))


def test_ddim_inversion_then_ddim_sampling_reconstructs_the_data(key):
    """On the exact Gaussian eps-model (VP, uniform grid): plain inversion + sampling on the same
    grid is a first-order round trip (max error halves when the steps double, measured 0.25 at
    50 and 0.127 at 100 steps); with 3 fixed-point iterations per step the inversion inverts
    the sampler's own step, and the round trip is exact to float32 level (measured 3e-6)."""
    p, x0 = diffjax.vp(), GAUSS.sample(key, 256)
    _, info, e50 = _round_trip(p, "eps", x0, 50)
    _, _, e100 = _round_trip(p, "eps", x0, 100)
    assert info["nfe"] == 50 and info["ts"][0] == 1.0
    assert e100 < 0.15 and 1.7 < e50 / e100 < 2.3, (e50, e100)
    _, info, exact = _round_trip(p, "eps", x0, 100, fixed_point=3)
    assert info["nfe"] == 400
    assert exact < 1e-4, exact


def test_ddim_inversion_of_gaussian_data_is_the_flow_map_to_standard_normal(key):
    """For rectified flow (alpha(1) = 0, sigma(1) = 1) the exact probability-flow map sends
    N(mu, Sigma) to N(0, I) at t = 1, sample by sample x -> Q diag(sqrt(c_1 / c_0)) Q^T (x - mu).
    DDIM inversion converges to that map at first order (measured max errors 0.108 at 50 and
    0.054 at 100 steps), and the inverted noise of 4000 data samples has mean 0 and covariance I
    within 5 Monte Carlo standard deviations."""
    p = diffjax.rectified_flow()
    x0 = GAUSS.sample(key, 4000)
    errs = []
    for steps in (50, 100):
        z, info, _ = _round_trip(p, "velocity", x0, steps)
        ts = info["ts"]
        ref = GAUSS.flow_map(p, float(ts[-1]), float(ts[0]), x0)
        errs.append(float(np.max(np.abs(np.asarray(z) - ref))))
    assert errs[1] < 0.07 and 1.7 < errs[0] / errs[1] < 2.3, errs
    z = np.asarray(z, np.float64)
    n = z.shape[0]
    assert np.all(np.abs(z.mean(0)) < 5 / np.sqrt(n) + errs[1] / 10), z.mean(0)
    assert np.all(np.abs(np.cov(z.T) - np.eye(3)) < 5 * np.sqrt(2 / n) + 0.02), np.cov(z.T)


def test_ddim_invert_bad_options():
    m = GAUSS.model(diffjax.vp())
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="eta"):
        ddim_invert(m, diffjax.vp(), x, eta=0.5)
    with pytest.raises(ValueError, match="fixed_point"):
        ddim_invert(m, diffjax.vp(), x, fixed_point=-1)
    with pytest.raises(ValueError, match="decreasing"):
        ddim_invert(m, diffjax.vp(), x, ts=np.linspace(0.001, 1.0, 5))
