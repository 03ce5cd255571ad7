"""Euler-Maruyama on the reverse-time SDE (Song et al. 2021b, eq. 6), from t to s < t:

  x_s = x_t - [f(t) x_t - g(t)^2 score(x_t, t)] (t - s) + g(t) sqrt(t - s) z.

The SDE coefficients of a process with alpha(1) = 0 (flows, trig) are singular at t = 1, so
`sample` starts this solver at t_max = 1 - 1e-3 there by default.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.samplers.base import Context, Solver, step_noise


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x = carry["x"]
    score = ctx.predict(x, t, "score")
    f, g2 = ctx.process.sde(t)
    dt = t - s  # > 0
    x_mean = x - (f * x - g2 * score) * dt
    return {"x": x_mean + jnp.sqrt(g2 * dt) * step_noise(ctx, key, x, i)}


SOLVER = Solver(step=step, options={}, needs_alpha=True)
