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
from diffjax.kernels import split_learned_variance
from diffjax.processes import Process
from diffjax.samplers.grid import on_padded
from diffjax.typing import Array


class Context(NamedTuple):
    """What a step sees besides its carry: the process, the model and the options."""

    process: Process
    model: Callable[[Array, Array], Array]  # model(x [B, ...], t scalar) -> mean output [B, ...]
    convert: Callable[..., Any]  # convert(out, x, t, *kinds) -> one array per kind
    opts: dict
    steps: int
    # model_v(x, t scalar) -> (mean output, v), both [B, ...]: for learned_variance models only
    model_v: Callable[[Array, Array], tuple[Array, Array]] | None = None
    noise: Array | None = None  # [N, B, ...]: `sample(..., noise=)`, step i's draw is noise[i]

    def predict(self, x: Array, t: Array, *kinds: str):
        """One model call at (x, scalar t), converted to each of `kinds` (a tuple if several)."""
        return self.convert(self.model(x, t), x, t, *kinds)

    def batch_t(self, x: Array, t: Array) -> Array:
        return jnp.full(x.shape[:1], t, x.dtype)  # [B]


def init_state(ctx: Context, x: Array) -> dict:
    return {"x": x}


def no_check(opts: dict, process: Process, ts: np.ndarray) -> None:
    return None


def steps_to_zero(ts: np.ndarray, process: Process) -> int:
    """How many steps of the grid `ts` end at sigma = 0 (solvers whose step there makes fewer
    model evaluations count them out of their NFE)."""
    return int(np.sum(on_padded(process.sigma, np.asarray(ts)[1:]) == 0))


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
    # works with a learned-variance model: uses ctx.model / ctx.predict (the mean channels) or
    # reads v through ctx.model_v; a solver that needs the raw 2C-channel output sets False
    accepts_learned_variance: bool = True


def make_context(model, process, prediction, opts, steps) -> Context:
    """Wrap a user model `model(x_t, t [B])` as `model(x, t scalar)` and build its converter.

    With `clip_x0=(lo, hi)` and/or `dynamic_threshold` the x0 prediction is clipped /
    thresholded (`_limit_x0`); the other kinds are derived from the changed x0 and x_t
    (use_clipped_model_output=True, the default) or are the model's own (False, diffusers'
    default).
    With `learned_variance=True` the model's output [B, ..., 2C] is split (mean prediction,
    variance value v; `kernels.split_learned_variance`): `ctx.model` and `ctx.predict` see the
    mean only, `ctx.model_v` gives both. The output shape is checked at trace time.
    """
    clip = opts["clip_x0"]
    learned = opts.get("learned_variance", False)

    def raw(x, t):
        out = model(x, jnp.full(x.shape[:1], t, x.dtype))
        _check_output(out, x, learned)
        return out

    def model_v(x, t):
        return split_learned_variance(raw(x, t))

    def call(x, t):
        return model_v(x, t)[0] if learned else raw(x, t)

    threshold = opts.get("dynamic_threshold")
    changed = clip is not None or threshold is not None
    rederive = changed and opts.get("use_clipped_model_output", True)

    def convert(out, x, t, *kinds):
        tb = jnp.full(x.shape[:1], t, x.dtype)
        if rederive:  # every kind from the changed x0 and x_t
            x0 = _limit_x0(targets.convert(out, prediction, "x0", x, tb, process), clip, threshold)
            res = tuple(_from_x0(x0, k, x, t, tb, process) for k in kinds)
        elif prediction != "x0":
            res = tuple(targets.convert(out, prediction, k, x, tb, process) for k in kinds)
        else:
            res = tuple(_from_x0(out, k, x, t, tb, process) for k in kinds)
        if changed and not rederive:  # only x0 changes; the other kinds are the model's own
            res = tuple(_limit_x0(r, clip, threshold) if k == "x0" else r
                        for r, k in zip(res, kinds, strict=True))  # fmt: skip
        return res[0] if len(res) == 1 else res

    return Context(process, call, convert, opts, steps, model_v if learned else None)


def check_dynamic_threshold(value):
    """None, or (p, max) from `dynamic_threshold=p` or `(p, max)`: 0 < p <= 1, max >= 1."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"dynamic_threshold must be p or (p, max); got {value!r}")
        p, top = value
    else:
        p, top = value, float("inf")
    if not (isinstance(p, (int, float)) and 0 < p <= 1):
        raise ValueError(f"dynamic_threshold needs a percentile 0 < p <= 1; got {value!r}")
    if not (isinstance(top, (int, float)) and top >= 1):
        raise ValueError(f"dynamic_threshold needs max >= 1; got {value!r}")
    return (float(p), float(top))


def _limit_x0(x0, clip, threshold):
    """Dynamic thresholding (Saharia et al. 2022, Sec. 2.3): per example s = quantile_p(|x0|)
    clipped to [1, max], x0 -> clip(x0, -s, s) / s; then static clipping to clip = (lo, hi)."""
    if threshold is not None:
        p, top = threshold
        flat = jnp.abs(jnp.reshape(x0, (x0.shape[0], -1)))
        s = jnp.clip(jnp.quantile(flat, p, axis=-1), 1.0, top)  # [B]
        s = jnp.reshape(s, s.shape + (1,) * (x0.ndim - 1))
        x0 = jnp.clip(x0, -s, s) / s
    return x0 if clip is None else jnp.clip(x0, *clip)


def _check_output(out, x, learned: bool) -> None:
    """The model output is [B, ...] like the state x, or [B, ..., 2C] with learned variance."""
    shape, want = tuple(jnp.shape(out)), tuple(x.shape)
    if learned:
        want = want[:-1] + (2 * want[-1],)
    if shape == want:
        return
    if not learned and shape == want[:-1] + (2 * want[-1],):
        raise ValueError(
            f"model output has shape {shape}, twice the state's {want[-1]} channels: for a "
            "learned-variance model (mean and v channels) pass learned_variance=True"
        )
    raise ValueError(f"model output has shape {shape}; expected {want}")


def _from_x0(x0, kind, x, t, tb, process):
    """Convert an x0 prediction, with E[eps | x_t] = -sigma score -> 0 where sigma = 0 (the
    limit for a smooth data density), where (x_t - alpha x0) / sigma would be 0 / 0."""
    if kind in ("x0", "score"):
        return targets.convert(x0, "x0", kind, x, tb, process)
    sigma = process.sigma(t)
    eps = (x - process.alpha(t) * x0) / jnp.where(sigma > 0, sigma, 1.0)
    return targets.from_x0_eps(x0, jnp.where(sigma > 0, eps, 0.0), kind, tb, process)


def scan_loop(solver: Solver, ctx: Context, key: Array, x: Array, ts: Array, keep: bool, step=None):
    """Run solver.step over the intervals (ts[i], ts[i + 1]); returns (x, trajectory or None).

    `step(ctx, carry, key, i, t, s) -> carry` replaces solver.step (a wrapper around it, as
    `diffjax.inpaint` uses); the step keys are fold_in(key, i) either way.

    With `keep` the trajectory [N + 1, B, ...] (the initial state, then each step's state) is
    one buffer allocated before the loop and carried through it, state i + 1 written in place
    at row i + 1 (`dynamic_update_slice` on a loop carry, which XLA updates in place), so the
    program holds one copy of it; stacking the scan's per-step outputs and prepending x would
    copy all N + 1 states once more at the end (twice the memory at the peak)."""
    step = solver.step if step is None else step

    def body(state, inp):
        carry, traj = state
        i, t, s = inp
        carry = step(ctx, carry, jax.random.fold_in(key, i), i, t, s)
        if keep:
            traj = jax.lax.dynamic_update_index_in_dim(
                traj, carry["x"].astype(traj.dtype), i + 1, 0
            )
        return (carry, traj), None

    n = ts.shape[0] - 1
    traj = None
    if keep:  # [N + 1, B, ...]: row 0 the initial state
        traj = jnp.zeros((n + 1, *x.shape), x.dtype).at[0].set(x)
    (carry, traj), _ = jax.lax.scan(
        body, (solver.init(ctx, x), traj), (jnp.arange(n), ts[:-1], ts[1:])
    )
    return carry["x"], traj


def noise_like(key: Array, x: Array) -> Array:
    """Standard normal noise with the full batch shape of x (sharding-invariant)."""
    return jax.random.normal(key, x.shape, x.dtype)


def step_noise(ctx: Context, key: Array, x: Array, i: Array) -> Array:
    """Step i's standard normal draw: `noise[i]` when the caller passed `noise=` to `sample`
    (to compare two runs or two libraries path by path), else the step key's draw."""
    return noise_like(key, x) if ctx.noise is None else ctx.noise[i].astype(x.dtype)
