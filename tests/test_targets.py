"""convert: round trips, score = -eps/sigma, velocity = probability-flow drift = dx_t/dt."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax.typing import PREDICTION_KINDS
from tests.helpers import PROCESSES as ALL
from tests.helpers import jit_cases, jit_or_eager

# float32 round trips to 1e-5 where the conversion is well conditioned: x0 from eps divides by
# alpha, which is ~0.01 at t = 0.95 for VP, amplifying float32 rounding of x_t ~100x. The whole
# range down to alpha ~ 1e-3 is checked in float64 below.
T_VALUES = jnp.array([0.05, 0.2, 0.4, 0.6, 0.7, 0.8])


def _state(key, p):
    x0 = jax.random.normal(key, (6, 3))
    xt, eps = diffjax.marginal(jax.random.fold_in(key, 1), p, x0, T_VALUES)
    return x0, eps, xt


def _round_trips(p):
    """(eps, x_t, t) -> {(a, b): (pred_a, pred_a -> b -> a)} for every pair of kinds."""

    def run(eps, xt, t):
        out = {}
        for a, b in itertools.product(PREDICTION_KINDS, repeat=2):
            pred = diffjax.convert(eps, "eps", a, xt, t, p)
            out[a, b] = pred, diffjax.convert(diffjax.convert(pred, a, b, xt, t, p), b, a, xt, t, p)
        return out

    return run


# Under jit the 75 conversions are one program; on the interpolated (discrete) and clipped
# (cosine) processes it takes ~5 s to compile, so those jit variants run with the slow tests
# (the eager variants of the same assertions and the jit variants on six processes stay).
ROUND_TRIP_CASES = jit_cases(ALL, slow_under_jit=("cosine", "discrete", "discrete_zsnr"))


@pytest.mark.parametrize("name, mode", ROUND_TRIP_CASES)
def test_every_pair_round_trips(name, mode, key):
    p = ALL[name]
    x0, eps, xt = _state(key, p)
    for (a, b), (pred, back) in jit_or_eager(mode)(_round_trips(p))(eps, xt, T_VALUES).items():
        scale = 1.0 + jnp.abs(pred)
        assert float(jnp.max(jnp.abs(back - pred) / scale)) < 1e-5, (a, b)


@pytest.mark.parametrize("name, mode", ROUND_TRIP_CASES)
def test_every_pair_round_trips_float64_whole_range(name, mode, x64):
    p = ALL[name]
    t = np.array([0.001, 0.01, 0.5, 0.99, 0.999])
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    xt = diffjax.bcast(p.alpha(t), x0) * x0 + diffjax.bcast(p.sigma(t), x0) * eps
    for (a, b), (pred, back) in jit_or_eager(mode)(_round_trips(p))(eps, xt, t).items():
        assert float(jnp.max(jnp.abs(back - pred) / (1.0 + jnp.abs(pred)))) < 1e-9, (a, b)


@pytest.mark.parametrize("name", ALL)
def test_conversions_recover_the_truth(name, key, maybe_jit):
    p = ALL[name]
    x0, eps, xt = _state(key, p)
    s = diffjax.bcast(p.sigma(T_VALUES), xt)

    def conversions(x0, eps, xt, t):
        return (
            diffjax.convert(eps, "eps", "x0", xt, t, p),
            diffjax.convert(eps, "eps", "score", xt, t, p),
            diffjax.convert(x0, "x0", "eps", xt, t, p),
        )

    to_x0, to_score, to_eps = maybe_jit(conversions)(x0, eps, xt, T_VALUES)
    np.testing.assert_allclose(to_x0, x0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_score, -eps / s, rtol=1e-5)
    np.testing.assert_allclose(to_eps, eps, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ALL)
def test_velocity_is_probability_flow_drift_and_time_derivative(name, key, x64, maybe_jit):
    p = ALL[name]
    t = np.array([0.1305, 0.3705, 0.6105, 0.8705])
    x0 = np.random.default_rng(0).normal(size=(4, 3))
    eps = np.random.default_rng(1).normal(size=(4, 3))
    xt = diffjax.bcast(p.alpha(t), x0) * x0 + diffjax.bcast(p.sigma(t), x0) * eps

    def velocity_score_sde(eps, xt, t):
        u = diffjax.convert(eps, "eps", "velocity", xt, t, p)
        return u, diffjax.convert(eps, "eps", "score", xt, t, p), p.sde(t)

    u, score, (f, g2) = maybe_jit(velocity_score_sde)(eps, xt, t)
    drift = diffjax.bcast(f, xt) * xt - 0.5 * diffjax.bcast(g2, xt) * score
    np.testing.assert_allclose(u, drift, rtol=1e-9, atol=1e-9)
    h = 1e-6
    x_at = lambda tt: diffjax.bcast(p.alpha(tt), x0) * x0 + diffjax.bcast(p.sigma(tt), x0) * eps
    np.testing.assert_allclose(u, (x_at(t + h) - x_at(t - h)) / (2 * h), rtol=1e-5, atol=1e-6)


def test_v_definition(key, maybe_jit):
    p = diffjax.cosine()
    x0, eps, xt = _state(key, p)
    a, s = diffjax.bcast(p.alpha(T_VALUES), xt), diffjax.bcast(p.sigma(T_VALUES), xt)
    v = maybe_jit(lambda eps, xt, t: diffjax.convert(eps, "eps", "v", xt, t, p))(eps, xt, T_VALUES)
    np.testing.assert_allclose(v, a * eps - s * x0, rtol=1e-4, atol=1e-5)


def test_unknown_kind_raises(key):
    p = diffjax.vp()
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="'noise'"):
        diffjax.convert(x, "noise", "eps", x, jnp.full((2,), 0.5), p)
    with pytest.raises(ValueError, match="'x_0'"):
        diffjax.convert(x, "eps", "x_0", x, jnp.full((2,), 0.5), p)
