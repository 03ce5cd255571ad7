"""Ancestral sampling (Ho et al. 2020, Algorithm 2) on any grid t -> s:
x_s ~ N(mean of q(x_s | x_t, x0_hat), var), with x0_hat from the model.

variance='small' is the posterior variance beta-tilde (Ho et al. eq. 7), 'large' the forward
transition variance sigma2_{t|s} (beta_t on a DDPM grid), 'learned' the interpolation of
Nichol & Dhariwal (2021), eq. 15, from a model whose output has 2C channels (mean prediction,
variance value v; `sample` then sets learned_variance=True, and 'small' / 'large' with such
a model use only its mean channels). No noise is added on a step that ends at sigma_s = 0 (x_0
of a chain).
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax import kernels
from diffjax.checks import check_choice
from diffjax.samplers.base import Context, Solver, step_noise

VARIANCES = ("small", "large", "learned")


def _check(opts, process, ts):
    check_choice(opts["variance"], VARIANCES, "DDPM variance")


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x, process = carry["x"], ctx.process
    tb, sb = ctx.batch_t(x, t), ctx.batch_t(x, s)  # [B]
    variance = ctx.opts["variance"]
    if variance == "learned":  # `sample` sets learned_variance=True, so ctx.model_v exists
        out, v = ctx.model_v(x, t)
        var = jnp.exp(kernels.learned_log_variance(process, v, sb, tb))  # [B, ...]
    else:
        out = ctx.model(x, t)  # the mean channels of a learned-variance model
    x0 = ctx.convert(out, x, t, "x0")
    mean, post_var = kernels.posterior(process, x0, x, sb, tb)
    if variance == "small":
        var = post_var
    elif variance == "large":
        var = kernels.bcast(kernels.transition(process, sb, tb)[1], x)
    std = jnp.where(process.sigma(s) > 0, jnp.sqrt(var), 0.0)
    return {"x": mean + std * step_noise(ctx, key, x, i)}


SOLVER = Solver(step=step, options={"variance": "small"}, check=_check)
