"""Forward kernels q(x_t | x_0), q(x_t | x_s), the posterior q(x_s | x_t, x_0), the one home of
the posterior variance algebra (the variance ratio, the two extreme variances and the learned
interpolation between them), and the one broadcasting helper for per-example coefficients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.checks import (
    check_batch_time,
    check_floating,
    check_same_shape,
    check_time,
    is_concrete,
)
from diffjax.processes import Process
from diffjax.typing import Array, ArrayLike


def bcast(c: ArrayLike, x: ArrayLike) -> Array:
    """Reshape a per-example coefficient [B] (or a scalar) to broadcast against x [B, ...]."""
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    return jnp.reshape(c, c.shape + (1,) * (jnp.ndim(x) - c.ndim))


def _check_order(s: ArrayLike, t: ArrayLike) -> None:
    """Validate concrete s, t in [0, 1] with s <= t (the kernels run backwards in time)."""
    check_time(s, "s")
    check_time(t, "t")
    if is_concrete(s) and is_concrete(t):
        s_np, t_np = np.broadcast_arrays(np.asarray(s), np.asarray(t))
        bad = s_np.astype(np.float64) > t_np.astype(np.float64)
        if bad.any():
            raise ValueError(
                f"need s <= t (s is the earlier, less noisy time); got s = {s_np[bad][:5]} > "
                f"t = {t_np[bad][:5]}"
            )


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
    check_floating(x0, "x0")
    check_batch_time(t, x0)
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    return bcast(process.alpha(t), x0) * x0 + bcast(process.sigma(t), x0) * eps, eps


def variance_ratio(process: Process, s: ArrayLike, t: ArrayLike) -> Array:
    """1 - SNR_t / SNR_s = sigma2_{t|s} / sigma_t^2 = -expm1(log_snr(t) - log_snr(s)), s <= t
    (Kingma et al. 2021, eq. 7), through the log-SNR difference so that it has no cancellation
    when s ~ t. It is 1 at s = 0 where sigma(0) = 0 (log-SNR clipped at +LOG_SNR_LIMIT).
    Shape: that of s and t broadcast."""
    return -jnp.expm1(process.log_snr(t) - process.log_snr(s))


def transition(process: Process, s: ArrayLike, t: ArrayLike) -> tuple[Array, Array]:
    """q(x_t | x_s) = N(alpha_{t|s} x_s, sigma2_{t|s} I) for s <= t (Kingma et al. 2021, eq. 7):
    alpha_{t|s} = alpha_t / alpha_s, sigma2_{t|s} = sigma_t^2 (1 - SNR_t / SNR_s).

    The variance is computed through `variance_ratio` to avoid cancellation when s ~ t.
    Returns (alpha_ts, sigma2_ts) with the shape of t. Concrete s > t raises ValueError.
    """
    _check_order(s, t)
    alpha_ts = process.alpha(t) / process.alpha(s)
    sigma2_ts = variance_ratio(process, s, t) * process.sigma(t) ** 2
    return alpha_ts, sigma2_ts


def posterior_variances(process: Process, s: ArrayLike, t: ArrayLike) -> tuple[Array, Array]:
    """The two extreme reverse-step variances for s <= t (Ho et al. 2020, Sec. 3.2):

      small = sigma2_{t|s} sigma_s^2 / sigma_t^2   (the posterior variance; beta-tilde_t on a
                                                    DDPM grid, eq. 7)
      large = sigma2_{t|s}                         (the forward transition; beta_t on the grid)

    Returns (small, large) with the shape of s and t broadcast.
    """
    _check_order(s, t)
    ratio = variance_ratio(process, s, t)
    return ratio * process.sigma(s) ** 2, ratio * process.sigma(t) ** 2


def posterior(
    process: Process, x0: ArrayLike, x_t: ArrayLike, s: ArrayLike, t: ArrayLike
) -> tuple[Array, Array]:
    """The Gaussian posterior q(x_s | x_t, x_0) for s < t (Ho et al. 2020, eqs. 6-7;
    Kingma et al. 2021, eq. 11):

      mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma2_{t|s} / sigma_t^2 x0
      var  = sigma2_{t|s} sigma_s^2 / sigma_t^2

    Args:
      x0, x_t: [B, ...]; s, t: [B] with s < t (s may be 0, where the posterior is a
        point mass at x0). Concrete s > t raises ValueError (the variance would be negative).
    Returns:
      (mean [B, ...], var [B, 1, ...] broadcastable against x).
    """
    x0, x_t = jnp.asarray(x0), jnp.asarray(x_t)
    check_same_shape(x0, x_t, "x0 and x_t")
    check_batch_time(s, x0, "s")
    check_batch_time(t, x0, "t")
    alpha_ts, _ = transition(process, s, t)
    sigma2_s, sigma2_t = process.sigma(s) ** 2, process.sigma(t) ** 2
    # 1 - SNR_t/SNR_s written out so that the x0 coefficient is exact when sigma_s = 0.
    ratio = variance_ratio(process, s, t)  # sigma2_ts / sigma_t^2
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


def learned_variance_fraction(v: ArrayLike) -> Array:
    """frac = clip((v + 1) / 2, 0, 1): the weight of the 'large' extreme.

    Inside v in [-1, 1] this is Nichol & Dhariwal's mapping (2021, eq. 15 with v -> (v + 1) / 2,
    as in their reference code's `frac = (model_var_values + 1) / 2`), so v = -1 gives the
    posterior variance, v = +1 the transition variance and v = 0 their geometric mean. The paper
    leaves v unconstrained; here frac is held in [0, 1], so the log variance never leaves the
    interval between the two extremes (a raw output that drifts past +-1, as one reached 1.5 in
    a short training run, is read as the nearer extreme). A smooth squash such as tanh would
    move the two ends away from v = +-1; where a model should keep a gradient for |v| > 1, let
    it output tanh(v) (`diffjax.models.bound_variance`), which this mapping leaves unchanged.
    """
    return jnp.clip((jnp.asarray(v) + 1.0) / 2.0, 0.0, 1.0)


def interpolate_log_variance(v: ArrayLike, log_small: ArrayLike, log_large: ArrayLike) -> Array:
    """frac log_large + (1 - frac) log_small, frac = `learned_variance_fraction(v)` (the one
    learned-variance interpolation; Nichol & Dhariwal 2021, eq. 15). Broadcasts its inputs."""
    frac = learned_variance_fraction(v)
    return frac * log_large + (1.0 - frac) * log_small


def learned_log_variance(process: Process, v: Array, s: ArrayLike, t: ArrayLike) -> Array:
    """Log variance of p(x_s | x_t) interpolated between the two extremes of
    `posterior_variances` (Nichol & Dhariwal 2021, eq. 15): log Sigma = frac log large +
    (1 - frac) log small with frac = `learned_variance_fraction(v)` in [0, 1].
    On a DDPM grid, large = beta_t and small = beta-tilde_t.
    At s = 0 the posterior variance is 0; its log is floored at log(finfo.tiny). The `vlb` loss
    follows improved DDPM's clipped convention there (beta-tilde_1 := beta-tilde_2) itself, and
    the 'ddpm' sampler adds no noise on a step that ends at sigma_s = 0.

    Args:
      v: [B, ...]; s, t: [B] (or scalars) with s <= t.
    Returns:
      log Sigma [B, ...], between log small and log large for every v.
    """
    small, large = posterior_variances(process, s, t)
    tiny = jnp.finfo(jnp.result_type(small)).tiny
    log_large = jnp.log(jnp.maximum(large, tiny))
    log_small = jnp.log(jnp.maximum(small, tiny))
    return interpolate_log_variance(v, bcast(log_small, v), bcast(log_large, v))
