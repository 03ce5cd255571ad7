"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) on any grid
t_max = t_0 > t_1 > ... > t_N = t_min, one model call per interval:

  x0_hat = f(x_{t_i}, t_i);   x_{t_{i+1}} = alpha x0_hat + sqrt(sigma^2 - alpha^2 s_min^2) z

(the paper's x + sqrt(tau^2 - eps^2) z in sigma space, mapped to the process by alpha), except
that the last interval returns x0_hat itself: steps=1 is one-step generation f(x_T, T). The
model is a consistency function as a diffjax x0-model (`diffjax.consistency.as_model`), used
with prediction='x0'. Options: `sigma_min` (the consistency model's boundary level, default 0).
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.samplers.base import Context, Solver, noise_like


def _check(opts, process, ts):
    s = opts["sigma_min"]
    if not (isinstance(s, (int, float)) and s >= 0):
        raise ValueError(f"consistency sampling needs sigma_min >= 0; got sigma_min = {s!r}")


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x, process = carry["x"], ctx.process
    x0 = ctx.predict(x, t, "x0")
    alpha_s = process.alpha(s)
    std = jnp.sqrt(jnp.maximum(process.sigma(s) ** 2 - (alpha_s * ctx.opts["sigma_min"]) ** 2, 0.0))
    renoised = alpha_s * x0 + std * noise_like(key, x)
    return {"x": jnp.where(i == ctx.steps - 1, x0, renoised)}


SOLVER = Solver(step=step, options={"sigma_min": 0.0}, check=_check, needs_alpha=True)
