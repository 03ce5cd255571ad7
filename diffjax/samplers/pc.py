"""Predictor-corrector sampling (Song et al. 2021b, Sec. 4.2, Algorithms 4-5).

At each grid level t: `n_corrector` Langevin corrector steps on p_t, then one predictor step
t -> s, in the order of the authors' released code. The corrector step size is
  eps = 2 a (snr * ||z|| / ||score||)^2,  x <- x + eps score + sqrt(2 eps) z,
with ||.|| the per-example L2 norm averaged over the batch (a plain mean: global under jit even
when the batch is sharded) and a = (alpha_t / alpha_s)^2, which is 1 - beta_t on a DDPM grid
(Algorithm 5) and 1 for VE (Algorithm 4).
Predictors: 'reverse_diffusion' (the discretised reverse SDE, eq. 46 of App. E:
x_s = (2 - a_ts) x_t + b_ts score + sqrt(b_ts) z with q(x_t | x_s) = N(a_ts x_s, b_ts I)) or
'euler_maruyama'. NFE = steps (1 + n_corrector).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax import kernels
from diffjax.checks import check_choice
from diffjax.samplers import euler_maruyama
from diffjax.samplers.base import Context, Solver, noise_like

PREDICTORS = ("reverse_diffusion", "euler_maruyama")


def _check(opts, process, ts):
    check_choice(opts["predictor"], PREDICTORS, "PC predictor")
    n = opts["n_corrector"]
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n_corrector must be an integer >= 0; got n_corrector = {n!r}")
    if not opts["snr"] > 0:
        raise ValueError(f"snr must be > 0; got snr = {opts['snr']!r}")


def _batch_mean_norm(v):
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.reshape(v, (v.shape[0], -1)) ** 2, axis=-1)))


def langevin(ctx: Context, x, key, t, a):
    """n_corrector Langevin steps on p_t with the batch-mean step size of Algorithms 4-5."""

    def body(j, x):
        score = ctx.predict(x, t, "score")
        z = noise_like(jax.random.fold_in(key, j), x)
        score_norm = _batch_mean_norm(score)
        # a vanishing score gives no direction to correct along: skip the step instead of
        # taking an infinite one (the formula's limit)
        safe = jnp.where(score_norm > 0, score_norm, 1.0)
        ratio = ctx.opts["snr"] * _batch_mean_norm(z) / safe
        eps = jnp.where(score_norm > 0, 2.0 * a * ratio**2, 0.0)
        return x + eps * score + jnp.sqrt(2.0 * eps) * z

    return jax.lax.fori_loop(0, ctx.opts["n_corrector"], body, x)


def _reverse_diffusion(ctx: Context, x, key, t, s):
    score = ctx.predict(x, t, "score")
    a, b = kernels.transition(ctx.process, s, t)
    return (2.0 - a) * x + b * score + jnp.sqrt(b) * noise_like(key, x)


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    corrector_key, predictor_key = jax.random.split(key)
    a = (ctx.process.alpha(t) / ctx.process.alpha(s)) ** 2
    x = langevin(ctx, carry["x"], corrector_key, t, a)
    if ctx.opts["predictor"] == "euler_maruyama":
        return euler_maruyama.step(ctx, {"x": x}, predictor_key, i, t, s)
    return {"x": _reverse_diffusion(ctx, x, predictor_key, t, s)}


def _nfe(ts, opts, process):
    return (len(ts) - 1) * (1 + int(opts["n_corrector"]))


SOLVER = Solver(
    step=step,
    options={"predictor": "reverse_diffusion", "snr": 0.16, "n_corrector": 1},
    nfe=_nfe,
    check=_check,
    needs_alpha=True,
)
