"""Euler's method on the probability-flow ODE dx/dt = v(x, t) (Song et al. 2021b, eq. 13),
v = f x - g^2/2 score, the model's 'velocity': x_s = x_t + (s - t) v(x_t, t). First order."""

from __future__ import annotations

from diffjax.samplers.base import Context, Solver


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x = carry["x"]
    return {"x": x + (s - t) * ctx.predict(x, t, "velocity")}


SOLVER = Solver(step=step, options={})
