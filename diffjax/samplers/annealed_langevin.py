"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

For each grid level s = t_1 .. t_N (the last is t_min), `n_steps_each` Langevin steps on p_s:
  x <- x + (a_s / 2) score(x, s) + sqrt(a_s) z,   a_s = step_lr * sigma_s^2 / sigma_L^2,
with sigma_L = sigma(t_min) > 0. Defaults are the paper's (step_lr = 2e-5, 100 steps per level,
tuned for sigma_L = 0.01). NFE = steps * n_steps_each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Context, Solver, noise_like


def _check(opts, process, ts):
    n = opts["n_steps_each"]
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n_steps_each must be an integer >= 1; got n_steps_each = {n!r}")
    if not opts["step_lr"] > 0:
        raise ValueError(f"step_lr must be > 0; got step_lr = {opts['step_lr']!r}")
    if float(process.sigma(float(ts[-1]))) <= 0:
        raise ValueError(f"annealed Langevin needs sigma(t_min) > 0; got t_min = {float(ts[-1])}")


def init(ctx: Context, x):
    return {"x": x, "sigma_last": ctx.process.sigma(ctx.opts["t_min"]).astype(x.dtype)}


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x = carry["x"]
    a = ctx.opts["step_lr"] * (ctx.process.sigma(s) / carry["sigma_last"]) ** 2

    def body(j, x):
        score = ctx.predict(x, s, "score")
        return x + 0.5 * a * score + jnp.sqrt(a) * noise_like(jax.random.fold_in(key, j), x)

    x = jax.lax.fori_loop(0, ctx.opts["n_steps_each"], body, x)
    return {"x": x, "sigma_last": carry["sigma_last"]}


def _nfe(ts, opts, process):
    return (len(ts) - 1) * int(opts["n_steps_each"])


SOLVER = Solver(
    step=step,
    options={"step_lr": 2e-5, "n_steps_each": 100},
    nfe=_nfe,
    init=init,
    check=_check,
)
