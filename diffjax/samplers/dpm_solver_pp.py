"""DPM-Solver++(2M), the multistep second-order data-prediction solver (Lu et al. 2022b,
"DPM-Solver++", Algorithm 2). With lambda = log(alpha / sigma), h_i = lambda_{t_i} - lambda_{t_i-1}:

  x_{t_i} = (sigma_{t_i} / sigma_{t_i-1}) x - alpha_{t_i} (e^{-h_i} - 1) D_i,
  D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2},  r_i = h_{i-1} / h_i,

with D_1 = x0_0 on the first step. On a step that ends at sigma = 0 (h = inf, e.g. x_0 of a
chain) the first-order update D = x0 is used, as the reference code's `lower_order_final`.
It needs no division by alpha, so it starts at t = 1 even where alpha(1) = 0. NFE = steps.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.samplers.base import Context, Solver


def init(ctx: Context, x):
    return {"x": x, "x0_prev": jnp.zeros_like(x), "h_prev": jnp.ones((), x.dtype)}


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x, process = carry["x"], ctx.process
    x0 = ctx.predict(x, t, "x0")
    h = 0.5 * (process.log_snr(s) - process.log_snr(t))  # clipped log-SNR keeps h finite
    half_inv_r = 0.5 * h / carry["h_prev"]  # 1 / (2 r)
    second = (1.0 + half_inv_r) * x0 - half_inv_r * carry["x0_prev"]
    d = jnp.where((i > 0) & (process.sigma(s) > 0), second, x0)
    x_s = process.sigma(s) / process.sigma(t) * x - process.alpha(s) * jnp.expm1(-h) * d
    return {"x": x_s, "x0_prev": x0, "h_prev": h.astype(x.dtype)}


SOLVER = Solver(step=step, options={}, init=init)
