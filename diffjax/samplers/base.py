"""What every solver shares: the solver record, the model wrapper and the one scanned loop.

A solver is a `Solver` record of small functions. Its `step(ctx, carry, key, i, t, s)` advances
the carry (a dict holding at least the state 'x' [B, ...]) over one grid interval t -> s (s < t,
both scalars); `sample` scans it over the grid with `lax.scan`, the step key being
`fold_in(loop_key, i)`, so the noise of step i is one full-batch draw that does not depend on how
the batch is split across devices (partitionable threefry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import targets
from diffjax.processes import Process
from diffjax.typing import Array


class Context(NamedTuple):
    """What a step sees besides its carry: the process, the model and the options."""

    process: Process
    model: Callable[[Array, Array], Array]  # model(x [B, ...], t scalar) -> raw output
    convert: Callable[..., Any]  # convert(out, x, t, *kinds) -> one array per kind
    opts: dict
    steps: int

    def predict(self, x: Array, t: Array, *kinds: str):
        """One model call at (x, scalar t), converted to each of `kinds` (a tuple if several)."""
        return self.convert(self.model(x, t), x, t, *kinds)

    def batch_t(self, x: Array, t: Array) -> Array:
        return jnp.full(x.shape[:1], t, x.dtype)  # [B]


def init_state(ctx: Context, x: Array) -> dict:
    return {"x": x}


def no_check(opts: dict, process: Process, ts: np.ndarray) -> None:
    return None


def one_call_per_step(ts: np.ndarray, opts: dict, process: Process) -> int:
    return len(ts) - 1


class Solver(NamedTuple):
    """A solver: `step` (None for adaptive solvers, which give `run`), its option defaults, and
    the static count of model calls `nfe(ts, opts, process)` for a numpy grid ts [N + 1]."""

    step: Callable | None
    options: dict
    nfe: Callable = one_call_per_step
    init: Callable = init_state
    check: Callable = no_check
    run: Callable | None = None  # run(ctx, key, x, ts) -> (x, nfe, trajectory or None)
    needs_alpha: bool = False  # singular where alpha(t) = 0 (eps-form or reverse-SDE updates)


def make_context(model, process, prediction, opts, steps) -> Context:
    """Wrap a user model `model(x_t, t [B])` as `model(x, t scalar)` and build its converter.

    With `clip_x0=(lo, hi)` every prediction is first turned into x0, clipped, and the asked-for
    kinds are derived from the clipped x0 and x_t (as the DDIM reference code does for eps).
    """
    clip = opts["clip_x0"]

    def call(x, t):
        return model(x, jnp.full(x.shape[:1], t, x.dtype))

    def convert(out, x, t, *kinds):
        tb = jnp.full(x.shape[:1], t, x.dtype)
        if clip is not None:
            out = jnp.clip(targets.convert(out, prediction, "x0", x, tb, process), *clip)
        if clip is None and prediction != "x0":
            res = tuple(targets.convert(out, prediction, k, x, tb, process) for k in kinds)
        else:
            res = tuple(_from_x0(out, k, x, t, tb, process) for k in kinds)
        return res[0] if len(res) == 1 else res

    return Context(process, call, convert, opts, steps)


def _from_x0(x0, kind, x, t, tb, process):
    """Convert an x0 prediction, with E[eps | x_t] = -sigma score -> 0 where sigma = 0 (the
    limit for a smooth data density), where (x_t - alpha x0) / sigma would be 0 / 0."""
    if kind in ("x0", "score"):
        return targets.convert(x0, "x0", kind, x, tb, process)
    sigma = process.sigma(t)
    eps = (x - process.alpha(t) * x0) / jnp.where(sigma > 0, sigma, 1.0)
    return targets.from_x0_eps(x0, jnp.where(sigma > 0, eps, 0.0), kind, x, tb, process)


def scan_loop(solver: Solver, ctx: Context, key: Array, x: Array, ts: Array, keep: bool):
    """Run solver.step over the intervals (ts[i], ts[i + 1]); returns (x, trajectory or None)."""

    def body(carry, inp):
        i, t, s = inp
        carry = solver.step(ctx, carry, jax.random.fold_in(key, i), i, t, s)
        return carry, (carry["x"] if keep else None)

    n = ts.shape[0] - 1
    carry, traj = jax.lax.scan(body, solver.init(ctx, x), (jnp.arange(n), ts[:-1], ts[1:]))
    if keep:
        traj = jnp.concatenate([x[None], traj], axis=0)  # [N + 1, B, ...]
    return carry["x"], traj


def noise_like(key: Array, x: Array) -> Array:
    """Standard normal noise with the full batch shape of x (sharding-invariant)."""
    return jax.random.normal(key, x.shape, x.dtype)
