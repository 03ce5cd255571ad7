"""Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`, diffusers'
`EulerAncestralDiscreteScheduler`), carried to any process through the scaled state
y = x / alpha and its noise level nu = sigma / alpha (Karras et al. 2022, Sec. 4):

  nu_up = min(nu_s, eta nu_s sqrt(1 - nu_s^2 / nu_t^2)),  nu_down = sqrt(nu_s^2 - nu_up^2),
  y_s = y_t + (nu_down - nu_t) (y_t - x0_hat) / nu_t + s_noise nu_up z,  x_s = alpha_s y_s.

Since (y_t - x0_hat) / nu_t = eps_hat, this is x_s = alpha_s (x0_hat + nu_down eps_hat +
s_noise nu_up z): no division by alpha_t (so it starts at t = 1 where alpha(1) = 0), and where
sigma_s = 0 (nu_s = 0) exactly x_s = alpha_s x0_hat. nu_up^2 alpha_s^2 = eta^2 times DDPM's
posterior variance sigma_s^2 (1 - SNR_t / SNR_s), so with s_noise = 1 the step is DDIM's with
the same eta (test_samplers_multistep checks the identity). z is the step key's draw (or
`noise[i]`). eta = 0 is the Euler method of the ODE in nu (= DDIM). NFE = steps.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.samplers.base import Context, Solver, step_noise


def _check(opts, process, ts):
    for name in ("eta", "s_noise"):
        v = opts[name]
        if not (isinstance(v, (int, float)) and v >= 0):
            raise ValueError(f"euler_ancestral needs {name} >= 0; got {name} = {v!r}")


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x, process, o = carry["x"], ctx.process, ctx.opts
    x0, eps = ctx.predict(x, t, "x0", "eps")
    a_t, s_t, a_s, s_s = process.alpha(t), process.sigma(t), process.alpha(s), process.sigma(s)
    nu_s = s_s / a_s
    ratio2 = (s_s * a_t / (a_s * s_t)) ** 2  # nu_s^2 / nu_t^2, 0 where alpha_t = 0
    nu_up = jnp.minimum(nu_s, o["eta"] * nu_s * jnp.sqrt(jnp.maximum(1.0 - ratio2, 0.0)))
    nu_down = jnp.sqrt(jnp.maximum(nu_s**2 - nu_up**2, 0.0))
    y_s = x0 + nu_down * eps
    if o["eta"] > 0 and o["s_noise"] > 0:
        y_s = y_s + o["s_noise"] * nu_up * step_noise(ctx, key, x, i)
    return {"x": a_s * y_s}


SOLVER = Solver(step=step, options={"eta": 1.0, "s_noise": 1.0}, check=_check)
