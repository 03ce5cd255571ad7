"""The one sampling entry point `sample` and the explicit name -> solver table `SOLVERS`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import modeltree
from diffjax.checks import check_choice, check_floating
from diffjax.processes import Process
from diffjax.samplers import (
    annealed_langevin,
    consistency,
    ddim,
    ddpm,
    dopri5,
    dpm_solver,
    dpm_solver_multistep,
    dpm_solver_pp,
    dpm_solver_pp_sde,
    euler,
    euler_ancestral,
    euler_maruyama,
    heun,
    pc,
    plms,
    rk4,
    unipc,
)
from diffjax.samplers.base import Solver, check_dynamic_threshold, make_context, scan_loop
from diffjax.samplers.grid import default_spacing, time_grid
from diffjax.typing import PREDICTION_KINDS, Array, ArrayLike, ModelFn

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
    "dpm_solver_pp_sde": dpm_solver_pp_sde.SOLVER,
    "dpm_solver_multistep": dpm_solver_multistep.SOLVER,
    "unipc": unipc.SOLVER,
    "euler_ancestral": euler_ancestral.SOLVER,
    "consistency": consistency.SOLVER,
}

COMMON_OPTIONS = {
    "denoise_final": False,
    "clip_x0": None,
    "t_min": None,
    "t_max": None,
    "spacing": None,
    "return_trajectory": False,
    "learned_variance": False,  # the model's output carries 2C channels (mean, then v)
    # with clip_x0 / dynamic_threshold: re-derive eps etc. from the changed x0 (diffjax's
    # behaviour since the first release); False keeps the model's own (diffusers' default)
    "use_clipped_model_output": True,
    "dynamic_threshold": None,  # p or (p, max): Saharia et al. (2022) on the x0 prediction
}
# The common options that describe the model and its data rather than one solver's steps: a
# run's solver options keep these when another solver is asked for (`carried_options`).
MODEL_OPTIONS = (
    "clip_x0", "dynamic_threshold", "use_clipped_model_output", "learned_variance", "t_min",
    "t_max", "denoise_final",
)  # fmt: skip


def carried_options(options: dict, from_solver: str, to_solver: str) -> dict:
    """`options` of `from_solver` as options for `to_solver`: all of them for the same solver;
    otherwise only MODEL_OPTIONS (a data range clip, the learned-variance layout, the time
    range), since the rest (eta, order, variance, ...) belong to the solver they were set for.
    Sampling a cosine-chain model clipped in its config with another solver unclipped would
    divide by alpha_t ~ 1e-4 near t = 1 and return garbage."""
    if from_solver == to_solver:
        return dict(options)
    return {k: v for k, v in options.items() if k in MODEL_OPTIONS}


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


def _options(solver_name: str, options: dict) -> tuple[Solver, dict]:
    """The solver record and its options with the defaults filled in (unknown names refused)."""
    check_choice(solver_name, SOLVERS, "solver")
    solver = SOLVERS[solver_name]
    allowed = {**COMMON_OPTIONS, **solver.options}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for solver {solver_name!r}")
    return solver, {**allowed, **options}


def _default_grid(solver_name, solver, process, steps, opts, prediction) -> np.ndarray:
    """The grid from steps / spacing / t_min / t_max (filling in their defaults in `opts`)."""
    opts["t_max"] = _t_max(solver_name, solver, process, opts["t_max"], prediction)
    if opts["t_min"] is None:
        opts["t_min"] = process.sample_t_min
    if solver.run is not None:
        if steps is not None:
            raise ValueError(f"adaptive solver {solver_name!r} takes no steps; got steps={steps}")
        return np.array([opts["t_max"], opts["t_min"]], np.float64)
    opts["spacing"] = opts["spacing"] or default_spacing(process, solver_name)
    return np.asarray(time_grid(process, steps, opts["spacing"], opts["t_min"], opts["t_max"]))


def check_grid(ts) -> np.ndarray:
    """An explicit grid as a numpy array, validated: 1-D, at least 2 points, finite, inside
    [0, 1] and strictly decreasing (also in the default float dtype the loop runs in)."""
    try:
        grid = np.asarray(ts)
    except jax.errors.TracerArrayConversionError as err:
        raise ValueError(
            "ts must be a concrete array (numpy or a jax constant), not traced"
        ) from err
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"ts must be a 1-D grid of at least 2 times; got shape {grid.shape}")
    if grid.dtype.kind not in "fiu":
        raise ValueError(f"ts must be a real-valued array; got dtype {grid.dtype}")
    t = grid.astype(np.float64)
    for bad, what in ((~np.isfinite(t), "finite"), ((t < 0) | (t > 1), "inside [0, 1]")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"ts must be {what}; got ts[{i}] = {grid[i].item()!r}")
    run_dtype = jnp.result_type(float)
    for arr, where in ((t, ""), (t.astype(run_dtype), f" in {run_dtype}")):
        up = np.flatnonzero(np.diff(arr) >= 0)
        if up.size:
            i = int(up[0])
            raise ValueError(
                f"ts must be strictly decreasing{where} (from t_max to t_min); got "
                f"ts[{i}] = {grid[i].item()!r} and ts[{i + 1}] = {grid[i + 1].item()!r}"
            )
    return grid


def _explicit_grid(solver_name, solver, process, steps, opts, prediction, ts) -> np.ndarray:
    """The given grid, validated; t_max = ts[0] and t_min = ts[-1] are recorded in `opts`."""
    given = [f"{k}={opts[k]!r}" for k in ("t_min", "t_max", "spacing") if opts[k] is not None]
    if steps is not None:
        given.insert(0, f"steps={steps!r}")
    if given:
        raise ValueError(
            "ts is the grid itself and replaces steps, spacing, t_min and t_max; got ts and "
            + ", ".join(given)
        )
    grid = check_grid(ts)
    opts["t_max"] = _t_max(solver_name, solver, process, float(grid[0]), prediction)
    opts["t_min"] = float(grid[-1])
    return grid


def _check_learned_variance(solver_name: str, solver: Solver, opts: dict) -> None:
    if opts.get("variance") == "learned":  # e.g. ddpm's: the model carries v, so say so
        opts["learned_variance"] = True
    learned = opts["learned_variance"]
    if not isinstance(learned, bool):
        raise ValueError(f"learned_variance must be True or False; got {learned!r}")
    if learned and not solver.accepts_learned_variance:
        raise ValueError(f"solver {solver_name!r} cannot sample a learned-variance model")


def _resolve(
    solver_name: str, process: Process, steps, options: dict, prediction: str, ts=None
) -> tuple[Solver, dict, np.ndarray]:
    """Validated options (defaults filled in) and the numpy grid [N + 1] (`ts` if given)."""
    solver, opts = _options(solver_name, options)
    if ts is None:
        ts = _default_grid(solver_name, solver, process, steps, opts, prediction)
    else:
        ts = _explicit_grid(solver_name, solver, process, steps, opts, prediction, ts)
    clip = opts["clip_x0"]
    if clip is not None:
        if len(clip) != 2 or not clip[0] < clip[1]:
            raise ValueError(f"clip_x0 must be a pair (lo, hi) with lo < hi; got {clip!r}")
        opts["clip_x0"] = (float(clip[0]), float(clip[1]))
    opts["dynamic_threshold"] = check_dynamic_threshold(opts["dynamic_threshold"])
    if not isinstance(opts["use_clipped_model_output"], bool):
        raise ValueError(
            f"use_clipped_model_output must be a bool; got {opts['use_clipped_model_output']!r}"
        )
    _check_learned_variance(solver_name, solver, opts)
    solver.check(opts, process, ts)
    return solver, opts, ts


def count_nfe(
    solver: str,
    process: Process,
    steps: int | None = None,
    *,
    prediction: str = "eps",
    ts: ArrayLike | None = None,
    **options,
) -> int | None:
    """The model evaluations `sample` makes with these arguments, without running it (None for
    the adaptive 'dopri5', whose count depends on the model). The same validation as `sample`:
    unknown solvers, options or bad grids are a ValueError."""
    check_choice(prediction, PREDICTION_KINDS, "prediction kind")
    options.pop("noise", None)
    solver_obj, opts, grid = _resolve(solver, process, steps, options, prediction, ts)
    nfe = solver_obj.nfe(grid, opts, process)
    return None if nfe is None else int(nfe) + int(opts["denoise_final"])


def steps_for_nfe(
    solver: str, process: Process, nfe: int, *, prediction: str = "eps", **options
) -> int:
    """The most grid intervals N whose `count_nfe` does not exceed `nfe`: a fixed budget of
    model evaluations per solver (Lu et al. 2022's and Song et al. 2021's tables are by NFE:
    DPM-Solver-2 at NFE 10 takes 5 steps, DPM-Solver-3 3 steps (9 evaluations), Heun 5 steps
    (9: its last step, onto sigma = 0, is an Euler step).

    Raises:
      ValueError: nfe < 1, an adaptive solver ('dopri5'), or one step already costs more than
        `nfe` evaluations (the cheapest count is named).
    """
    if int(nfe) < 1:
        raise ValueError(f"nfe must be >= 1; got {nfe!r}")
    count = lambda n: count_nfe(solver, process, n, prediction=prediction, **options)  # noqa: E731
    one = count(1)
    if one is None:
        raise ValueError(f"solver {solver!r} is adaptive: its NFE is not set by the steps")
    if one > nfe:
        raise ValueError(f"one step of {solver!r} costs {one} evaluations > nfe = {nfe}")

    def fits(n: int) -> bool:  # a grid of n intervals exists (a T-step chain has at most T)
        try:
            return count(n) <= nfe
        except ValueError:
            return False

    lo, hi = 1, 2  # fits(lo); grow hi until it does not fit (NFE rises with N)
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# solvers that take `noise=` [N, B, ...]: one standard normal draw per step, noise[i] on step i
EXPLICIT_NOISE_SOLVERS = ("ddpm", "ddim", "euler_maruyama", "dpm_solver_pp_sde", "euler_ancestral")


def _check_noise(noise, solver_name: str, n: int, shape: tuple, dtype):
    if noise is None:
        return None
    if solver_name not in EXPLICIT_NOISE_SOLVERS:
        raise ValueError(
            f"noise= is used by the solvers {EXPLICIT_NOISE_SOLVERS} (one draw per step); "
            f"got solver {solver_name!r}"
        )
    noise = jnp.asarray(noise, dtype)
    if noise.shape != (n, *shape):
        raise ValueError(
            f"noise must have shape [steps, *shape] = {(n, *shape)}; got {noise.shape}"
        )
    return noise


_STATIC = ("model_static", "process", "solver_name", "prediction", "opts", "shape")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _run(key, x_init, ts, model_leaves, noise=None, *, model_static, process, solver_name,
         prediction, opts, shape):  # fmt: skip
    opts = dict(opts)
    solver = SOLVERS[solver_name]
    model = modeltree.join(model_leaves, model_static)
    prior_key, loop_key = jax.random.split(key)
    x = process.prior_sample(prior_key, shape, ts.dtype) if x_init is None else x_init
    ctx = make_context(model, process, prediction, opts, ts.shape[0] - 1)._replace(noise=noise)
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
    ts: ArrayLike | None = None,
    **options,
):
    """Draw samples by integrating from t_max (noise) to t_min (data) with a named solver.

    Args:
      key: PRNG key (split into a prior key and a loop key; step i uses fold_in(loop_key, i)).
      model: `model(x_t [B, ...], t [B]) -> prediction` of kind `prediction`: a pytree model
        (`diffjax.models.bind`, a `jax.tree_util.Partial`, a guidance transformer's result),
        whose array leaves are traced arguments of the compiled loop, or a plain function,
        which is static (see below).
      process: the forward process the model was trained on.
      shape: the batch shape [B, ...] (ignored in favour of x_init's shape when it is given).
      solver: a name in SOLVERS. steps: number of grid intervals N (none for 'dopri5').
      prediction: the model's output kind; every solver converts it with `targets.convert`.
      return_info: also return a dict with 'nfe' (model calls), 'ts' (the grid) and, with
        `return_trajectory=True`, 'trajectory' [N + 1, B, ...] (for dopri5, at the grid's times).
      x_init: the state at t_max [B, ...] (default: a prior sample, N(0, prior_std^2 I)).
      ts: the time grid itself [N + 1], strictly decreasing from t_max to t_min inside [0, 1]
        (e.g. a published integer schedule n_i / T); it replaces steps, spacing, t_min, t_max.
        An adaptive solver integrates from ts[0] to ts[-1] and keeps the trajectory at ts.
      **options: t_min, t_max, spacing, denoise_final, clip_x0=(lo, hi), return_trajectory,
        learned_variance, dynamic_threshold=p or (p, max) (Saharia et al. 2022: per example
        s = clip(quantile_p(|x0_hat|), 1, max), x0_hat -> clip(x0_hat, -s, s) / s),
        noise=[N, B, ...] (step i uses noise[i] instead of its key's draw; for the solvers in
        EXPLICIT_NOISE_SOLVERS), use_clipped_model_output (default True: with clip_x0 or
        dynamic_threshold every other kind, e.g. eps, is re-derived from the changed x0 and
        x_t; False changes only x0 and keeps the model's own eps, diffusers' default), and the
        solver's own options (see each solver module and `SOLVERS[name].options`).
    Returns:
      samples [B, ...] at t_min (or the x0-prediction there with denoise_final=True), and the
      info dict when return_info.
    Raises:
      ValueError: unknown solver, option, spacing or prediction kind; steps < 1; a bad grid `ts`
        or ts given together with steps / spacing / t_min / t_max; a model output whose shape
        does not match the state; a solver that cannot use a learned-variance model.

    Defaults: t_max = 1, except 1 - 1e-3 on processes with alpha(1) = 0 (flows, trig,
    zero-terminal-SNR chains) for 'eps' and 'score' models and for the solvers that divide by
    alpha_t ('dpm_solver', 'euler_maruyama', 'pc'); the prior sample is then used as the state
    at t_max (an O(alpha(t_max)) = O(1e-3) approximation); t_min is `process.sample_t_min` and
    the spacing as in `diffjax.samplers.grid`.

    Learned variance: `learned_variance=True` declares a model whose output carries 2C
    channels, the mean prediction then the variance value v (the `hybrid` loss's model,
    `kernels.split_learned_variance`). Every solver then sees only the mean channels, and 'ddpm'
    with `variance='learned'` (which implies learned_variance=True) also reads v.

    Compilation: the loop is compiled once per (static model part, process, solver, options,
    shape, dtype). A pytree model's arrays are traced, so a new parameter set (a checkpoint, an
    EMA copy, new guidance labels) reuses the compiled program and nothing large is baked into
    it. A plain function, closure or `functools.partial` is static, hashed by identity: reuse
    the same function object, since every new one compiles a new program, and JAX keeps each
    compiled program (with the constants the function closed over) alive in its cache, so a
    fresh closure per call grows memory without bound. Wrap parameters as
    `jax.tree_util.Partial(apply_fn, params)` (apply_fn defined once) to avoid both.

    References: see each solver's module (Ho et al. 2020; Song et al. 2021a, b; Song & Ermon
    2019; Karras et al. 2022; Lu et al. 2022a, b; Liu et al. 2022; Zhao et al. 2023 (UniPC);
    Saharia et al. 2022 (dynamic thresholding)).
    """
    check_choice(prediction, PREDICTION_KINDS, "prediction kind")
    noise = options.pop("noise", None)
    with jax.ensure_compile_time_eval():  # the grid and defaults are constants, even under jit
        solver_obj, opts, grid = _resolve(solver, process, steps, options, prediction, ts)
    dtype = jnp.result_type(float) if x_init is None else jnp.asarray(x_init).dtype
    out_dtype = dtype
    if x_init is not None:
        check_floating(x_init, "x_init")
        shape = tuple(jnp.shape(x_init))
        # The loop (state, time grid, coefficients) runs in at least float32, the result is cast
        # back: bfloat16 rounds t_max = 1 - 1e-3 to 1 (alpha = 0: an eps model's x0 is 0 / 0)
        # and cannot resolve a 1000-step grid near t = 1.
        dtype = jnp.promote_types(dtype, jnp.float32)
        x_init = jnp.asarray(x_init).astype(dtype)
    noise = _check_noise(noise, solver, len(grid) - 1, tuple(shape), dtype)
    leaves, static = modeltree.split(model)
    x, nfe, traj = _run(
        key,
        x_init,
        jnp.asarray(grid, dtype),
        leaves,
        noise,
        model_static=static,
        process=process,
        solver_name=solver,
        prediction=prediction,
        opts=tuple(sorted(opts.items())),
        shape=tuple(shape),
    )
    x = x.astype(out_dtype)
    if not return_info:
        return x
    if nfe is None:
        with jax.ensure_compile_time_eval():
            nfe = solver_obj.nfe(grid, opts, process)
    info = {"nfe": nfe + int(opts["denoise_final"]), "ts": grid}
    if opts["return_trajectory"]:
        info["trajectory"] = traj
    return x, info
