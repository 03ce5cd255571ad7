"""DPM-Solver++(2M) SDE (Lu et al. 2022b, "DPM-Solver++", Sec. 5 and App. B, the solver of the
reverse diffusion SDE in the data prediction; diffusers' `algorithm_type='sde-dpmsolver++'`
with the midpoint form). With lambda = log(alpha / sigma), h = lambda_s - lambda_t for the step
t -> s, r_0 = h_0 / h, and m_0, m_1 the x0 predictions at the current and previous grid points:

  x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) (m_0 + D / 2)
        + sigma_s sqrt(1 - e^{-2h}) z,    D = (m_0 - m_1) / r_0 (0 on a first-order step),

z ~ N(0, I) (the step key's draw, or `noise[i]` passed to `sample`). The first step, a step
that ends at sigma = 0 and (with `lower_order_final`, fewer than 15 steps) the last step are
first order; where sigma_s = 0 (h = inf, computed from the unclipped lambda) the update is exactly
x_s = alpha_s m_0 = x0_hat with no noise. The first-order step is DDPM's posterior sample
written in lambda (q(x_s | x_t, x0_hat)). No division by alpha. NFE = steps.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.samplers import expint
from diffjax.samplers.base import Context, Solver, step_noise
from diffjax.samplers.dpm_solver_pp import init


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x, process = carry["x"], ctx.process
    m0 = ctx.predict(x, t, "x0")
    order = expint.step_order(ctx, i, s)
    h = expint.step_h(process, t, s)
    decay = jnp.exp(-h)  # e^{-h} = sigma_s alpha_t / (alpha_s sigma_t), 0 where sigma_s = 0
    one_m = -jnp.expm1(-2.0 * h)  # 1 - e^{-2h}
    d = 0.5 * (m0 - carry["m1"]) * h / carry["h0"]  # D / 2 = (m_0 - m_1) / (2 r_0)
    drift = jnp.where(order == 1, m0, m0 + d)
    x_s = process.sigma(s) / process.sigma(t) * decay * x + process.alpha(s) * one_m * drift
    z = step_noise(ctx, key, x, i)
    x_s = x_s + process.sigma(s) * jnp.sqrt(one_m) * z
    return {"x": x_s, "m1": m0, "m2": carry["m1"], "h0": h.astype(x.dtype), "h1": carry["h0"]}


SOLVER = Solver(
    step=step,
    options={"order": 2, "lower_order_final": True},
    init=init,
    check=expint.check_order("dpm_solver_pp_sde", (1, 2)),
)
