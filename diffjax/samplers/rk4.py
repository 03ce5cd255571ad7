"""The classical fourth-order Runge-Kutta method on the probability-flow ODE dx/dt = v(x, t)
(Kutta 1901; e.g. Hairer, Norsett & Wanner, Solving ODEs I, Table II.1.1). 4 NFE per step."""

from __future__ import annotations

from diffjax.samplers.base import Context, Solver


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x, h = carry["x"], s - t
    k1 = ctx.predict(x, t, "velocity")
    k2 = ctx.predict(x + 0.5 * h * k1, t + 0.5 * h, "velocity")
    k3 = ctx.predict(x + 0.5 * h * k2, t + 0.5 * h, "velocity")
    k4 = ctx.predict(x + h * k3, s, "velocity")
    return {"x": x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)}


SOLVER = Solver(step=step, options={}, nfe=lambda ts, opts, process: 4 * (len(ts) - 1))
