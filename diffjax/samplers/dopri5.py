"""Adaptive Dormand-Prince 5(4) on the probability-flow ODE dx/dt = v(x, t), through diffrax
(Dormand & Prince 1980), with a PI step-size controller at `rtol`, `atol` (default 1e-5).

The whole batch is one ODE state, so the step size is shared by the batch (the error norm is
diffrax's RMS over all entries). NFE = 6 per attempted step (7 stages, first-same-as-last) + 1,
from diffrax's `stats['num_steps']`; tests check this count against a run-time call counter.
"""

from __future__ import annotations

from diffjax.samplers.base import Context, Solver


def _check(opts, process, ts):
    for name in ("rtol", "atol"):
        if not opts[name] > 0:
            raise ValueError(f"{name} must be > 0; got {name} = {opts[name]!r}")


def run(ctx: Context, key, x, ts, keep: bool):
    import diffrax  # imported here: `import diffjax` does not load diffrax

    term = diffrax.ODETerm(lambda t, y, args: ctx.predict(y, t, "velocity"))
    saveat = diffrax.SaveAt(ts=ts) if keep else diffrax.SaveAt(t1=True)
    sol = diffrax.diffeqsolve(
        term,
        diffrax.Dopri5(),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=x,
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=ctx.opts["rtol"], atol=ctx.opts["atol"]),
        max_steps=ctx.opts["max_steps"],
    )
    nfe = 6 * sol.stats["num_steps"] + 1
    return sol.ys[-1], nfe, (sol.ys if keep else None)


SOLVER = Solver(
    step=None,
    options={"rtol": 1e-5, "atol": 1e-5, "max_steps": 4096},
    nfe=lambda ts, opts, process: None,
    check=_check,
    run=run,
)
