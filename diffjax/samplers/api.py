"""The one sampling entry point `sample` and the explicit name -> solver table `SOLVERS`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.checks import check_choice
from diffjax.processes import Process
from diffjax.samplers import (
    annealed_langevin,
    ddim,
    ddpm,
    dopri5,
    dpm_solver,
    dpm_solver_pp,
    euler,
    euler_maruyama,
    heun,
    pc,
    plms,
    rk4,
)
from diffjax.samplers.base import Solver, make_context, scan_loop
from diffjax.samplers.grid import default_spacing, default_t_min, time_grid
from diffjax.typing import PREDICTION_KINDS, Array, ModelFn

SOLVERS: dict[str, Solver] = {
    "ddpm": ddpm.SOLVER,
    "ddim": ddim.SOLVER,
    "euler_maruyama": euler_maruyama.SOLVER,
    "pc": pc.SOLVER,
    "annealed_langevin": annealed_langevin.SOLVER,
    "euler": euler.SOLVER,
    "heun": heun.SOLVER,
    "rk4": rk4.SOLVER,
    "dopri5": dopri5.SOLVER,
    "dpm_solver": dpm_solver.SOLVER,
    "dpm_solver_pp": dpm_solver_pp.SOLVER,
    "plms": plms.SOLVER,
}

COMMON_OPTIONS = {
    "denoise_final": False,
    "clip_x0": None,
    "t_min": None,
    "t_max": None,
    "spacing": None,
    "return_trajectory": False,
}
# Where alpha(1) = 0 (flows, trig) solvers with `needs_alpha` start here unless t_max is given.
T_MAX_WHERE_ALPHA_VANISHES = 1.0 - 1e-3


def _t_max(solver_name: str, solver: Solver, process: Process, t_max, prediction: str) -> float:
    """1, except where alpha(1) = 0 for solvers that divide by alpha_t or for 'eps' / 'score'
    models, whose output says nothing about x0 there (its conversion divides by alpha_t)."""
    singular = solver.needs_alpha or prediction in ("eps", "score")
    if t_max is None:
        alpha_vanishes = float(process.alpha(1.0)) == 0.0
        return T_MAX_WHERE_ALPHA_VANISHES if singular and alpha_vanishes else 1.0
    if solver.needs_alpha and float(process.alpha(float(t_max))) == 0.0:
        raise ValueError(
            f"solver {solver_name!r} divides by alpha(t_max) = 0 at t_max = {t_max}; pass t_max < 1"
        )
    return float(t_max)


def _resolve(solver_name: str, process: Process, steps, options: dict, prediction: str):
    """Validated options (defaults filled in) and the numpy grid [N + 1]."""
    check_choice(solver_name, SOLVERS, "solver")
    solver = SOLVERS[solver_name]
    allowed = {**COMMON_OPTIONS, **solver.options}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for solver {solver_name!r}")
    opts = {**allowed, **options}
    opts["t_max"] = _t_max(solver_name, solver, process, opts["t_max"], prediction)
    if opts["t_min"] is None:
        opts["t_min"] = default_t_min(process)
    if solver.run is not None:
        if steps is not None:
            raise ValueError(f"adaptive solver {solver_name!r} takes no steps; got steps={steps}")
        ts = np.array([opts["t_max"], opts["t_min"]], np.float64)
    else:
        opts["spacing"] = opts["spacing"] or default_spacing(process, solver_name)
        ts = np.asarray(time_grid(process, steps, opts["spacing"], opts["t_min"], opts["t_max"]))
    clip = opts["clip_x0"]
    if clip is not None:
        if len(clip) != 2 or not clip[0] < clip[1]:
            raise ValueError(f"clip_x0 must be a pair (lo, hi) with lo < hi; got {clip!r}")
        opts["clip_x0"] = (float(clip[0]), float(clip[1]))
    solver.check(opts, process, ts)
    return solver, opts, ts


@functools.partial(
    jax.jit, static_argnames=("model", "process", "solver_name", "prediction", "opts", "shape")
)
def _run(key, x_init, ts, *, model, process, solver_name, prediction, opts, shape):
    opts = dict(opts)
    solver = SOLVERS[solver_name]
    prior_key, loop_key = jax.random.split(key)
    x = process.prior_sample(prior_key, shape, ts.dtype) if x_init is None else x_init
    ctx = make_context(model, process, prediction, opts, ts.shape[0] - 1)
    keep = opts["return_trajectory"]
    nfe = None
    if solver.run is not None:
        x, nfe, traj = solver.run(ctx, loop_key, x, ts, keep)
    else:
        x, traj = scan_loop(solver, ctx, loop_key, x, ts, keep)
    if opts["denoise_final"]:
        x = ctx.predict(x, ts[-1], "x0")
    return x, nfe, traj


def sample(
    key: Array,
    model: ModelFn,
    process: Process,
    shape: tuple[int, ...],
    *,
    solver: str,
    steps: int | None = None,
    prediction: str = "eps",
    return_info: bool = False,
    x_init: Array | None = None,
    **options,
):
    """Draw samples by integrating from t_max (noise) to t_min (data) with a named solver.

    Args:
      key: PRNG key (split into a prior key and a loop key; step i uses fold_in(loop_key, i)).
      model: `model(x_t [B, ...], t [B]) -> prediction` of kind `prediction`.
      process: the forward process the model was trained on.
      shape: the batch shape [B, ...] (ignored in favour of x_init's shape when it is given).
      solver: a name in SOLVERS. steps: number of grid intervals N (none for 'dopri5').
      prediction: the model's output kind; every solver converts it with `targets.convert`.
      return_info: also return a dict with 'nfe' (model calls), 'ts' (the grid) and, with
        `return_trajectory=True`, 'trajectory' [N + 1, B, ...] (for dopri5, at t_max, t_min).
      x_init: the state at t_max [B, ...] (default: a prior sample, N(0, prior_std^2 I)).
      **options: t_min, t_max, spacing, denoise_final, clip_x0=(lo, hi), return_trajectory,
        and the solver's own options (see each solver module and `SOLVERS[name].options`).
    Returns:
      samples [B, ...] at t_min (or the x0-prediction there with denoise_final=True), and the
      info dict when return_info.
    Raises:
      ValueError: unknown solver, option, spacing or prediction kind; steps < 1; bad values.

    Defaults: t_max = 1, except 1 - 1e-3 on processes with alpha(1) = 0 (flows, trig,
    zero-terminal-SNR chains) for 'eps' and 'score' models and for the solvers that divide by
    alpha_t ('dpm_solver', 'euler_maruyama', 'pc'); the prior sample is then used as the state
    at t_max (an O(alpha(t_max)) = O(1e-3) approximation); t_min and spacing as
    in `diffjax.samplers.grid`. The loop is compiled once per (model, process, solver, options,
    shape): `model` is a static argument hashed by identity, so reuse the same function object;
    to keep large parameters out of the compiled program, call `sample` inside your own
    `jax.jit` that takes the parameters as arguments (the inner jit is then inlined).

    References: see each solver's module (Ho et al. 2020; Song et al. 2021a, b; Song & Ermon
    2019; Karras et al. 2022; Lu et al. 2022a, b; Liu et al. 2022).
    """
    check_choice(prediction, PREDICTION_KINDS, "prediction kind")
    with jax.ensure_compile_time_eval():  # the grid and defaults are constants, even under jit
        solver_obj, opts, ts = _resolve(solver, process, steps, options, prediction)
    dtype = jnp.result_type(float) if x_init is None else jnp.asarray(x_init).dtype
    if x_init is not None:
        shape = tuple(jnp.shape(x_init))
    x, nfe, traj = _run(
        key,
        x_init,
        jnp.asarray(ts, dtype),
        model=model,
        process=process,
        solver_name=solver,
        prediction=prediction,
        opts=tuple(sorted(opts.items())),
        shape=tuple(shape),
    )
    if not return_info:
        return x
    if nfe is None:
        with jax.ensure_compile_time_eval():
            nfe = solver_obj.nfe(ts, opts, process)
    info = {"nfe": nfe + int(opts["denoise_final"]), "ts": ts}
    if opts["return_trajectory"]:
        info["trajectory"] = traj
    return x, info
