"""Bits/dim, dequantisation, data-set averages and input validation of diffjax.likelihood."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from diffjax import processes
from diffjax.likelihood import bits_per_dim, dequantize, likelihood, nll_dataset
from tests.helpers import Gaussian


def test_uniform_density_on_the_data_cube_is_8_bits():
    # p_x = 2^-D on [-1, 1]^D spreads mass 1/256 on each of the 256^D bins: exactly 8 bits/dim.
    # Without log 256 the answer would be 1, without the [-1, 1] scaling 9.
    d = 12
    np.testing.assert_allclose(bits_per_dim(d * math.log(2.0), (3, 4)), 8.0, rtol=1e-6)
    # the same density on [0, 1]^D (scale = 1) has nll = 0
    np.testing.assert_allclose(bits_per_dim(0.0, (d,), scale=1.0), 8.0, rtol=1e-6)
    np.testing.assert_allclose(bits_per_dim(d * math.log(2.0), (d,), dequantized=False), 1.0)


def _discretised_gaussian(std: float) -> np.ndarray:
    """P(k) for k = 0..255: the mass of N(0, std^2) on bin k of [-1, 1] (tails folded in)."""
    edges = -1.0 + 2.0 * np.arange(257) / 256
    cdf = norm.cdf(edges, scale=std)
    cdf[0], cdf[-1] = 0.0, 1.0
    return np.diff(cdf)


def test_histogram_density_bound_is_exact():
    # A density constant on each bin, p_x = P(k) (256 / 2) per dim, makes the dequantisation bound
    # an equality: bits/dim = -log2 P(k) / D exactly, for any P (here a discretised Gaussian).
    p = _discretised_gaussian(0.3)
    k = np.random.default_rng(0).integers(40, 216, size=(5, 10))  # [B, D]
    nll_x = -np.sum(np.log(p[k] * 128.0), axis=-1)  # continuous nats of the histogram density
    want = -np.sum(np.log2(p[k]), axis=-1) / 10
    np.testing.assert_allclose(bits_per_dim(nll_x, (10,)), want, rtol=1e-5)


def test_dequantized_gaussian_matches_discrete_entropy(key):
    # End to end with a smooth density: k ~ discretised N(0, 0.3^2), x = dequantize(k), nll_x the
    # Gaussian's continuous nll. E[bits/dim] = H(P) / D + Jensen gap, the gap ~ w^2 / (24 std^2)
    # nats with bin width w = 2/256, i.e. 3e-5 bits: negligible. Monte Carlo error: the per-dim
    # -log2 p has std ~ 1.44 bits / sqrt(2), so the mean over n * D = 16384 values has a standard
    # error ~ 0.008 bits; we allow 5 of them (an off-by-one-bit offset fails by ~125).
    std, n, d = 0.3, 2048, 8
    p = _discretised_gaussian(std)
    k = np.random.default_rng(1).choice(256, size=(n, d), p=p).astype(np.uint8)
    x = np.asarray(dequantize(key, k), np.float64)
    nll_x = -np.sum(norm.logpdf(x, scale=std), axis=-1)
    bpd = np.asarray(bits_per_dim(nll_x, (d,)))
    entropy = -np.sum(p * np.log2(np.maximum(p, 1e-300)))
    se = bpd.std() / math.sqrt(n)
    assert abs(bpd.mean() - entropy) < 5 * se
    assert se < 0.02


def test_dequantize_stays_in_its_bin(key):
    k = jnp.arange(256, dtype=jnp.uint8).reshape(16, 16)
    x = np.asarray(dequantize(key, jnp.tile(k, (64, 1, 1))))  # [64, 16, 16]
    lo = -1.0 + 2.0 * np.asarray(k, np.float64) / 256
    assert np.all(x >= lo - 1e-7) and np.all(x < lo + 2.0 / 256)
    # the mean over 64 draws of u ~ U(0, 1) is the bin centre within 5 standard errors
    se = (2.0 / 256) / math.sqrt(12 * 64)
    assert np.max(np.abs(x.mean(0) - (lo + 1.0 / 256))) < 5 * se
    x01 = np.asarray(dequantize(key, k, low=0.0, scale=1.0))
    assert np.all((x01 >= 0.0) & (x01 < 1.0))


def _gauss_velocity_model(var: float, d: int):
    # Exact velocity of N(0, var I) data under rectified flow (the oracle of tests/helpers.py):
    # E[x0 | x_t] = a var x / c, E[eps | x_t] = s x / c with c = a^2 var + s^2; velocity
    # = -x0 + eps (alpha' = -1, sigma' = 1).
    process = processes.rectified_flow()
    return process, Gaussian(np.zeros(d), var * np.eye(d)).model(process, "velocity")


def test_nll_dataset_dequantized_gaussian(key):
    # Data N(0, 4 I) under rectified flow: p_1 = N(0, I) is the prior exactly. For x = -1 + 2(k+u)
    # /256 the expected nll is D/2 log(8 pi) + sum E[x^2] / 8 with E[x^2] = m^2 + (2/256)^2 / 12,
    # m the bin centre. The u-noise of |x|^2/8 is ~6e-4 nats per dim, so 5e-3 nats in total for
    # D = 4 with 2 repeats is > 5 standard errors; a missing dequantisation shift of half a bin
    # changes E|x|^2 / 8 by ~1e-3 per dim, a wrong offset changes bpd by >= 1.
    var, n, d = 4.0, 8, 4
    process, model = _gauss_velocity_model(var, d)
    k = np.random.default_rng(2).integers(0, 256, size=(n, d)).astype(np.uint8)
    out = nll_dataset(
        key, model, process, k, batch_size=4, num_repeats=2, prediction="velocity", trace="exact"
    )
    m = -1.0 + (2.0 * k + 1.0) / 256
    ex2 = m**2 + (2.0 / 256) ** 2 / 12
    want = 0.5 * d * math.log(2 * math.pi * var) + ex2.sum(-1) / (2 * var)  # [N]
    np.testing.assert_allclose(out["nll_per_example"], want, atol=5e-3)
    assert out["num_solves"] == 4 and out["nfe"] > 0
    np.testing.assert_allclose(out["nll"], want.mean(), atol=5e-3)
    np.testing.assert_allclose(out["nll_stderr"], want.std(ddof=1) / math.sqrt(n), rtol=0.05)
    bpd = out["nll"] / (d * math.log(2)) + 7.0
    np.testing.assert_allclose(out["bpd"], bpd, rtol=1e-6)
    np.testing.assert_allclose(out["bpd_stderr"], out["nll_stderr"] / (d * math.log(2)), rtol=1e-6)


# --- bad input ----------------------------------------------------------------------------------


def _ok_model(x, t):
    return 0.1 * x


BAD_LIKELIHOOD = [
    (dict(trace="bogus"), "trace"),
    (dict(probe="cauchy"), "probe"),
    (dict(prediction="noise"), "prediction"),
    (dict(num_probes=0), "num_probes"),
    (dict(rtol=-1.0), "rtol"),
    (dict(t_min=1.5), "t_min"),
    (dict(t_min=0.5, t_max=0.4), "t_min < t_max"),
    (dict(prior_logp=lambda z: jnp.sum(z)), "prior_logp"),
    (dict(model=lambda x, t: x[:, :1]), "model output shape"),
    (dict(x=jnp.ones((4,))), "x must be"),
    (dict(x=jnp.ones((4, 2), jnp.int32)), "x must be"),
]


@pytest.mark.parametrize("kwargs,match", BAD_LIKELIHOOD, ids=[m for _, m in BAD_LIKELIHOOD])
def test_likelihood_rejects_bad_input(key, kwargs, match):
    kwargs = dict(kwargs)
    model, x = kwargs.pop("model", _ok_model), kwargs.pop("x", jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=match):
        likelihood(key, model, processes.vp(), x, **kwargs)


def test_bits_and_dequantize_reject_bad_input(key):
    with pytest.raises(ValueError, match="x_shape"):
        bits_per_dim(1.0, ())
    with pytest.raises(ValueError, match="x_shape"):
        bits_per_dim(1.0, (28, 0))
    with pytest.raises(ValueError, match="scale"):
        bits_per_dim(1.0, (4,), scale=-2.0)
    with pytest.raises(ValueError, match="num_bins"):
        bits_per_dim(1.0, (4,), num_bins=1)
    with pytest.raises(ValueError, match="integer data"):
        dequantize(key, jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        dequantize(key, jnp.array([[0, 300]]))
    with pytest.raises(ValueError, match="batch_size"):
        nll_dataset(key, _ok_model, processes.vp(), jnp.zeros((2, 2), jnp.uint8), batch_size=0)
    with pytest.raises(ValueError, match="integer data"):
        nll_dataset(key, _ok_model, processes.vp(), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):  # checked over all examples
        nll_dataset(key, _ok_model, processes.vp(), jnp.array([[0, 1], [2, 300]]))
