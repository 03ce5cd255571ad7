"""Forward kernels q(x_t | x_0), q(x_t | x_s), the posterior q(x_s | x_t, x_0), and the one
broadcasting helper for per-example coefficients."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.checks import check_batch_time, check_same_shape
from diffjax.processes import Process
from diffjax.typing import Array, ArrayLike


def bcast(c: ArrayLike, x: ArrayLike) -> Array:
    """Reshape a per-example coefficient [B] (or a scalar) to broadcast against x [B, ...]."""
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    return jnp.reshape(c, c.shape + (1,) * (jnp.ndim(x) - c.ndim))


def marginal(key: Array, process: Process, x0: ArrayLike, t: ArrayLike) -> tuple[Array, Array]:
    """A sample of q(x_t | x_0) = N(alpha_t x0, sigma_t^2 I) (Ho et al. 2020, eq. 4).

    Args:
      key: PRNG key for the noise.
      process: the forward process.
      x0: data [B, ...].
      t: times [B] in [0, 1].
    Returns:
      (x_t, eps), both [B, ...].
    """
    x0 = jnp.asarray(x0)
    check_batch_time(t, x0)
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    return bcast(process.alpha(t), x0) * x0 + bcast(process.sigma(t), x0) * eps, eps


def transition(process: Process, s: ArrayLike, t: ArrayLike) -> tuple[Array, Array]:
    """q(x_t | x_s) = N(alpha_{t|s} x_s, sigma2_{t|s} I) for s <= t (Kingma et al. 2021, eq. 7):
    alpha_{t|s} = alpha_t / alpha_s, sigma2_{t|s} = sigma_t^2 (1 - SNR_t / SNR_s).

    The variance is computed through the log-SNR difference to avoid cancellation when s ~ t.
    Returns (alpha_ts, sigma2_ts) with the shape of t.
    """
    alpha_ts = process.alpha(t) / process.alpha(s)
    sigma2_ts = -(process.sigma(t) ** 2) * jnp.expm1(process.log_snr(t) - process.log_snr(s))
    return alpha_ts, sigma2_ts


def posterior(
    process: Process, x0: ArrayLike, x_t: ArrayLike, s: ArrayLike, t: ArrayLike
) -> tuple[Array, Array]:
    """The Gaussian posterior q(x_s | x_t, x_0) for s < t (Ho et al. 2020, eqs. 6-7;
    Kingma et al. 2021, eq. 11):

      mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma2_{t|s} / sigma_t^2 x0
      var  = sigma2_{t|s} sigma_s^2 / sigma_t^2

    Args:
      x0, x_t: [B, ...]; s, t: [B] with s < t (s may be 0, where the posterior is a
        point mass at x0).
    Returns:
      (mean [B, ...], var [B, 1, ...] broadcastable against x).
    """
    x0, x_t = jnp.asarray(x0), jnp.asarray(x_t)
    check_same_shape(x0, x_t, "x0 and x_t")
    check_batch_time(s, x0, "s")
    check_batch_time(t, x0, "t")
    alpha_ts, sigma2_ts = transition(process, s, t)
    sigma2_s, sigma2_t = process.sigma(s) ** 2, process.sigma(t) ** 2
    # 1 - SNR_t/SNR_s written out so that the x0 coefficient is exact when sigma_s = 0.
    ratio = -jnp.expm1(process.log_snr(t) - process.log_snr(s))  # sigma2_ts / sigma_t^2
    mean = (
        bcast(alpha_ts * sigma2_s / sigma2_t, x_t) * x_t + bcast(process.alpha(s) * ratio, x0) * x0
    )
    var = bcast(ratio * sigma2_s, x0)
    return mean, var


def split_learned_variance(out: Array) -> tuple[Array, Array]:
    """Split a learned-variance model output [B, ..., 2C] (channels last) into
    (mean prediction [B, ..., C], variance value v [B, ..., C])."""
    if out.shape[-1] % 2:
        raise ValueError(
            f"a learned-variance output needs an even channel count 2C; got shape {out.shape}"
        )
    return jnp.split(out, 2, axis=-1)


def learned_log_variance(process: Process, v: Array, s: ArrayLike, t: ArrayLike) -> Array:
    """Log variance of p(x_s | x_t) interpolated between the two extremes (Nichol & Dhariwal 2021,
    eq. 15): log Sigma = frac log sigma2_{t|s} + (1 - frac) log sigma2_posterior, with
    frac = (v + 1) / 2 as in the improved-DDPM reference implementation (v in [-1, 1]).
    On a DDPM grid, sigma2_{t|s} = beta_t ('large') and sigma2_posterior = beta-tilde_t ('small').
    At s = 0 the posterior variance is 0; its log is floored at log(finfo.tiny). The `vlb` loss
    follows improved DDPM's clipped convention there (beta-tilde_1 := beta-tilde_2) itself, and
    the 'ddpm' sampler adds no noise on a step that ends at sigma_s = 0."""
    _, sigma2_ts = transition(process, s, t)
    ratio = -jnp.expm1(process.log_snr(t) - process.log_snr(s))
    small = ratio * process.sigma(s) ** 2
    tiny = jnp.finfo(jnp.result_type(small)).tiny
    log_large = jnp.log(jnp.maximum(sigma2_ts, tiny))
    log_small = jnp.log(jnp.maximum(small, tiny))
    frac = (v + 1.0) / 2.0
    return frac * bcast(log_large, v) + (1.0 - frac) * bcast(log_small, v)
