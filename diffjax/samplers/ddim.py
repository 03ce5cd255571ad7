"""DDIM (Song et al. 2021a), eq. 12 with the variance of eq. 16, on any grid t -> s:

  x_s = alpha_s x0_hat + sqrt(sigma_s^2 - s_eta^2) eps_hat + s_eta z,
  s_eta^2 = eta^2 * sigma_s^2 (1 - SNR_t / SNR_s)   (eta^2 times the posterior variance).

eta = 0 is the deterministic sampler (a first-order solver of the probability-flow ODE in
log-SNR), eta = 1 has DDPM's 'small' variance. Written with the pair (x0_hat, eps_hat), so it
needs no division by alpha_t when the model predicts x0, v or a velocity.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax import kernels
from diffjax.samplers.base import Context, Solver, step_noise


def _check(opts, process, ts):
    eta = opts["eta"]
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ValueError(f"DDIM needs eta >= 0; got eta = {eta!r}")


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x, process, eta = carry["x"], ctx.process, ctx.opts["eta"]
    x0, eps = ctx.predict(x, t, "x0", "eps")
    alpha_s, sigma_s = process.alpha(s), process.sigma(s)
    if eta == 0:
        return {"x": alpha_s * x0 + sigma_s * eps}
    ratio = kernels.variance_ratio(process, s, t)  # 1 - SNR_t / SNR_s
    var = jnp.minimum(eta**2 * ratio * sigma_s**2, sigma_s**2)
    x_s = alpha_s * x0 + jnp.sqrt(sigma_s**2 - var) * eps
    return {"x": x_s + jnp.sqrt(var) * step_noise(ctx, key, x, i)}


SOLVER = Solver(step=step, options={"eta": 0.0}, check=_check)
