"""Gaussian pieces of the likelihood bounds: KL divergences, the prior term and the decoders
-log p(x0 | x_small_t), all elementwise or per example, in nats."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from diffjax.checks import is_concrete
from diffjax.kernels import bcast
from diffjax.losses.common import sum_over_data
from diffjax.processes import Process
from diffjax.typing import Array

DECODERS = ("discretized", "gaussian")
HALF_BIN = 1.0 / 255.0  # 8-bit data scaled to [-1, 1]: bins of width 2/255


def normal_kl(mean_diff: Array, logvar1: Array, logvar2: Array) -> Array:
    """KL(N(m1, e^logvar1) || N(m2, e^logvar2)) elementwise, given mean_diff = m1 - m2:

      0.5 (expm1(d) - d + mean_diff^2 e^-logvar2),  d = logvar1 - logvar2,

    the usual closed form written with expm1 so it has no cancellation when the variances agree.
    """
    d = logvar1 - logvar2
    return 0.5 * (jnp.expm1(d) - d + mean_diff**2 * jnp.exp(-logvar2))


def prior_kl(process: Process, x0: Array) -> Array:
    """L_T = KL(q(x_1 | x0) || prior N(0, prior_std^2 I)) summed over data dims, [B]
    (Ho et al. 2020, eq. 5; Kingma et al. 2021, eq. 11 prior term)."""
    one = jnp.ones((x0.shape[0],), x0.dtype)
    alpha, sigma = process.alpha(one), process.sigma(one)
    log_p2 = 2.0 * math.log(process.prior_std)
    logvar1 = bcast(2.0 * jnp.log(sigma), x0)
    kl = normal_kl(bcast(alpha, x0) * x0 / process.prior_std, logvar1 - log_p2, 0.0)
    return sum_over_data(kl)


def gaussian_log_likelihood(x: Array, mean: Array, logvar: Array) -> Array:
    """log N(x; mean, e^logvar) elementwise (a Gaussian decoder for continuous data)."""
    return -0.5 * (math.log(2.0 * math.pi) + logvar + (x - mean) ** 2 * jnp.exp(-logvar))


def _log_normal_mass(a: Array, b: Array) -> Array:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails: an interval in the upper half is
    reflected to (-b, -a), then log Phi(b) + log(1 - Phi(a)/Phi(b)) uses log_ndtr only."""
    flip = a + b > 0.0
    lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    l_lo, l_hi = log_ndtr(lo), log_ndtr(hi)
    return l_hi + jnp.log(-jnp.expm1(l_lo - l_hi))


def discretized_log_likelihood(x: Array, mean: Array, logvar: Array) -> Array:
    """log p(x | mean, e^logvar) elementwise for 8-bit data in [-1, 1] (Ho et al. 2020, eq. 13):
    the Gaussian mass of the bin [x - 1/255, x + 1/255], with the edge bins open-ended
    (x = -1 takes (-inf, -1 + 1/255], x = 1 takes [1 - 1/255, inf)), summing to 1 over the
    256 values. Computed from log-CDF differences (no clamping of tiny probabilities).

    Args:
      x: data on the grid -1 + 2k/255 (k = 0..255); mean and logvar broadcast against it.
    Below float32 (bfloat16, float16) it is computed in float32, whose resolution the bins of
    width 2/255 need (and jax.scipy's log_ndtr supports), and returned in the input dtype.
    """
    out_dtype = jnp.result_type(x, mean, logvar)
    wide = jnp.promote_types(out_dtype, jnp.float32)
    x, mean, logvar = (jnp.asarray(a, wide) for a in (x, mean, logvar))
    inv_std = jnp.exp(-0.5 * logvar)
    upper = (x + HALF_BIN - mean) * inv_std  # standardised bin edges
    lower = (x - HALF_BIN - mean) * inv_std
    left_edge = log_ndtr(upper)  # P(X <= upper)
    right_edge = log_ndtr(-lower)  # P(X >= lower)
    inner = _log_normal_mass(lower, upper)
    return jnp.where(
        x < -1.0 + HALF_BIN, left_edge, jnp.where(x > 1.0 - HALF_BIN, right_edge, inner)
    ).astype(out_dtype)


def check_decoder_data(x0: Array, decoder: str) -> None:
    """The discretized decoder needs data scaled to [-1, 1]; checked where x0 is concrete."""
    if decoder == "discretized" and is_concrete(x0) and x0.size:
        values = np.asarray(x0)  # host copy: no tracing even inside a jit that closes over x0
        lo, hi = float(values.min()), float(values.max())
        if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(
                "the 'discretized' decoder needs 8-bit data scaled to [-1, 1]; got x0 in "
                f"[{lo}, {hi}] (use decoder='gaussian' for continuous data)"
            )


def decoder_nll(x0: Array, mean: Array, logvar: Array, decoder: str) -> Array:
    """-log p(x0 | ...) summed over data dims, [B], for decoder 'discretized' or 'gaussian'."""
    if decoder == "discretized":
        return -sum_over_data(discretized_log_likelihood(x0, mean, logvar))
    return -sum_over_data(gaussian_log_likelihood(x0, mean, logvar))
