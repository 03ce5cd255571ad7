"""Heun's second-order method on the probability-flow ODE dx/dt = v(x, t), with the stochastic
churn of Karras et al. (2022), Algorithm 2, carried over from their sigma-parametrisation to any
process through the noise level nu(t) = sigma(t) / alpha(t) of the scaled state x / alpha:

  gamma = min(S_churn / N, sqrt(2) - 1) if S_tmin <= nu(t) <= S_tmax else 0
  t_hat: nu(t_hat) = (1 + gamma) nu(t)   (clipped to t_hat <= 1)
  x_hat = alpha(t_hat) / alpha(t) x + alpha(t_hat) sqrt(nu_hat^2 - nu^2) S_noise z
  Euler from (x_hat, t_hat) to s, then the trapezoidal correction unless sigma(s) = 0.

The Heun correction is skipped on a step that ends at sigma = 0, as in Algorithm 2 (line 9),
so NFE = 2 steps - (number of grid ends with sigma = 0). With S_churn = 0 it is deterministic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Context, Solver, noise_like, steps_to_zero
from diffjax.samplers.grid import t_of_log_snr


def _check(opts, process, ts):
    for name in ("S_churn", "S_tmin", "S_noise"):
        if not opts[name] >= 0:
            raise ValueError(f"{name} must be >= 0; got {name} = {opts[name]!r}")


def _churn(ctx: Context, x, key, t):
    o, process = ctx.opts, ctx.process
    nu = jnp.exp(-0.5 * process.log_snr(t))
    gamma = jnp.where(
        (nu >= o["S_tmin"]) & (nu <= o["S_tmax"]), min(o["S_churn"] / ctx.steps, 2**0.5 - 1), 0.0
    )
    t_hat = jnp.clip(t_of_log_snr(process, process.log_snr(t) - 2.0 * jnp.log1p(gamma)), t, 1.0)
    t_hat = jnp.where(gamma > 0, t_hat, t)  # exact no-op without churn, also where alpha_t = 0
    nu_hat = jnp.exp(-0.5 * process.log_snr(t_hat))
    scale = process.alpha(t_hat) * jnp.sqrt(jnp.maximum(nu_hat**2 - nu**2, 0.0)) * o["S_noise"]
    ratio = jnp.where(gamma > 0, process.alpha(t_hat) / process.alpha(t), 1.0)
    return ratio * x + jnp.where(gamma > 0, scale, 0.0) * noise_like(key, x), t_hat


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x = carry["x"]
    if ctx.opts["S_churn"] > 0:
        x, t = _churn(ctx, x, key, t)
    d = ctx.predict(x, t, "velocity")
    x_euler = x + (s - t) * d

    def correct(x_euler):
        return x + 0.5 * (s - t) * (d + ctx.predict(x_euler, s, "velocity"))

    x_s = jax.lax.cond(ctx.process.sigma(s) > 0, correct, lambda y: y, x_euler)
    return {"x": x_s}


def _nfe(ts, opts, process):
    return 2 * (len(ts) - 1) - steps_to_zero(ts, process)


SOLVER = Solver(
    step=step,
    options={"S_churn": 0.0, "S_tmin": 0.0, "S_tmax": float("inf"), "S_noise": 1.0},
    nfe=_nfe,
    check=_check,
)
