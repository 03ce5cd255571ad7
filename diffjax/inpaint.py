"""Inpainting by replacement (Song et al. 2021, App. I.2) with RePaint resampling
(Lugmayr et al. 2022), as a wrapper around the one scanned loop of `diffjax.samplers`: after every
solver step t -> s the known region, re-noised to s, is pasted in; `jumps` > 1 diffuses the
merged state back to t with q(x_t | x_s) and repeats the step. Works with every fixed-step solver
and takes `sample`'s grid, options and key scheme."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffjax import modeltree
from diffjax.checks import check_choice, check_same_shape
from diffjax.kernels import transition
from diffjax.processes import Process
from diffjax.samplers.api import SOLVERS, _resolve
from diffjax.samplers.base import Context, make_context, noise_like, scan_loop
from diffjax.typing import PREDICTION_KINDS, Array, ArrayLike, ModelFn

DEFAULT_STEPS = 100


def inpaint(
    key: Array,
    model: ModelFn,
    process: Process,
    known: Array,
    mask: Array,
    *,
    solver: str = "ddpm",
    steps: int | None = None,
    prediction: str = "eps",
    jumps: int = 1,
    ts: ArrayLike | None = None,
    return_info: bool = False,
    **options,
):
    """Fill in the unknown region of `known` (where mask == 0) with samples from the model.

    Each step of `solver` from t to s is followed by x_s <- mask * (alpha_s known + sigma_s z)
    + (1 - mask) * x_s with fresh z ~ N(0, I); with `jumps` = J > 1 (RePaint) the merged x_s is
    diffused back to t by q(x_t | x_s) and the step and merge are repeated, J rounds in all (a
    multistep solver's history is the one from before the step in every round).

    Args:
      key: PRNG key, split as `sample` splits it (the prior and loop keys are `sample`'s; a
        third key drives the re-noising), so with mask = 0 and jumps = 1 this is `sample`.
      model: `model(x_t, t) -> prediction` of kind `prediction`; a pytree model's arrays are
        traced, a plain function is static (as in `sample`).
      known: images [B, ...] whose masked-in part is kept.
      mask: 1 where `known` is known, 0 where it is to be generated; broadcastable to `known`.
      solver: any fixed-step name in `diffjax.samplers.SOLVERS` (not the adaptive 'dopri5').
      steps: intervals of the time grid (default 100); ts: the grid itself, as in `sample`.
      jumps: RePaint resampling rounds per step (1 = plain replacement).
      return_info: also return {'nfe': model calls, 'ts': the grid}.
      **options: `sample`'s options (t_min, t_max, spacing, denoise_final, clip_x0,
        learned_variance and the solver's own), with `sample`'s defaults; the known region is
        pasted in exactly at the end.
    Returns:
      [B, ...] samples equal to `known` where mask == 1 (and the info dict when return_info).
    """
    check_choice(solver, SOLVERS, "solver")
    check_choice(prediction, PREDICTION_KINDS, "prediction kind")
    if SOLVERS[solver].run is not None:
        raise ValueError(f"inpaint needs a fixed-step solver; {solver!r} is adaptive")
    if isinstance(jumps, bool) or int(jumps) != jumps or jumps < 1:
        raise ValueError(f"jumps must be an integer >= 1; got jumps = {jumps!r}")
    if options.get("return_trajectory"):
        raise ValueError("inpaint keeps no trajectory; got return_trajectory=True")
    known = jnp.asarray(known)
    mask = jnp.broadcast_to(jnp.asarray(mask, known.dtype), known.shape)
    check_same_shape(known, mask, "known and mask")
    if ts is None and steps is None:
        steps = DEFAULT_STEPS
    with jax.ensure_compile_time_eval():  # the grid and defaults are constants, even under jit
        solver_obj, opts, grid = _resolve(solver, process, steps, options, prediction, ts)
    leaves, static = modeltree.split(model)
    x = _run(
        key,
        known,
        mask,
        jnp.asarray(grid, known.dtype),
        leaves,
        model_static=static,
        process=process,
        solver_name=solver,
        prediction=prediction,
        opts=tuple(sorted(opts.items())),
        jumps=int(jumps),
    )
    if not return_info:
        return x
    with jax.ensure_compile_time_eval():
        nfe = solver_obj.nfe(grid, opts, process) * int(jumps) + int(opts["denoise_final"])
    return x, {"nfe": nfe, "ts": grid}


@functools.partial(
    jax.jit,
    static_argnames=("model_static", "process", "solver_name", "prediction", "opts", "jumps"),
)
def _run(key, known, mask, ts, model_leaves, *, model_static, process, solver_name, prediction,
         opts, jumps):  # fmt: skip
    opts = dict(opts)
    solver = SOLVERS[solver_name]
    model = modeltree.join(model_leaves, model_static)
    prior_key, loop_key, paste_key = jax.random.split(key, 3)  # the first two are sample's
    x = process.prior_sample(prior_key, known.shape, known.dtype)
    ctx = make_context(model, process, prediction, opts, ts.shape[0] - 1)

    def step(ctx: Context, carry: dict, step_key, i, t, s) -> dict:
        round_keys = jax.random.fold_in(paste_key, i)
        return _replace(solver, ctx, carry, step_key, round_keys, i, t, s, known, mask, jumps)

    x, _ = scan_loop(solver, ctx, loop_key, x, ts, False, step)
    if opts["denoise_final"]:
        x = ctx.predict(x, ts[-1], "x0")
    return mask * known + (1.0 - mask) * x


def _replace(solver, ctx, carry_t, step_key, round_keys, i, t, s, known, mask, jumps) -> dict:
    """One inpainting step t -> s: J rounds of (solver step, paste the re-noised known region),
    each round after the first starting from the previous merged state diffused back to t."""
    process = ctx.process

    def merge(x_s, k):
        noised = process.alpha(s) * known + process.sigma(s) * noise_like(k, known)
        return mask * noised + (1.0 - mask) * x_s

    def round_(r, carry_s):
        known_key, back_key, solver_key = jax.random.split(jax.random.fold_in(round_keys, r), 3)
        a_ts, v_ts = transition(process, s, t)  # q(x_t | x_s) = N(a_ts x_s, v_ts I)
        x_t = a_ts * carry_s["x"] + jnp.sqrt(v_ts) * noise_like(back_key, known)
        carry_s = solver.step(ctx, {**carry_t, "x": x_t}, solver_key, i, t, s)
        return {**carry_s, "x": merge(carry_s["x"], known_key)}

    carry_s = solver.step(ctx, carry_t, step_key, i, t, s)  # round 0 with `sample`'s step key
    carry_s = {**carry_s, "x": merge(carry_s["x"], jax.random.fold_in(round_keys, 0))}
    return jax.lax.fori_loop(1, jumps, round_, carry_s) if jumps > 1 else carry_s
