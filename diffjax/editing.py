"""Sampling-time image editing with any trained model: SDEdit image-to-image (Meng et al. 2022)
and DDIM inversion (Song et al. 2021a, Sec. 4.3; Dhariwal & Nichol 2021, App. F), with its
reconstruction by DDIM sampling on the same grid. Inpainting is `diffjax.inpaint`.

Both are wrappers around the solvers of `diffjax.samplers`: SDEdit noises the input with the
forward kernel q(x_t | x_0) to t = strength and solves back to t_min with any fixed-step solver;
DDIM inversion runs the deterministic DDIM step (a first-order solver of the probability-flow
ODE) forward in time, from t_min to t_max, optionally with fixed-point refinement so that it
inverts the sampler's own step exactly.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import modeltree
from diffjax.checks import check_choice
from diffjax.kernels import marginal
from diffjax.processes import Process
from diffjax.samplers.api import SOLVERS, T_MAX_WHERE_ALPHA_VANISHES, _resolve, sample
from diffjax.samplers.base import make_context
from diffjax.typing import PREDICTION_KINDS, Array, ArrayLike, ModelFn

DEFAULT_STEPS = 50
_GRID_OPTIONS = ("t_min", "t_max", "spacing")


def check_strength(strength) -> float:
    """strength as a float in [0, 1]; ValueError naming the value otherwise."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)):
        raise ValueError(f"strength must be a number in [0, 1]; got {strength!r}")
    value = float(strength)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(
            f"strength must lie in [0, 1] (0 keeps the input, 1 starts from pure noise); got "
            f"{strength!r}"
        )
    return value


def _start_time(process: Process, strength: float, solver: str, prediction: str) -> float:
    """t = strength, except where alpha(strength) = 0 and the solver or the prediction kind
    needs alpha > 0: there `sample`'s own default start 1 - 1e-3 (see `diffjax.sample`)."""
    singular = SOLVERS[solver].needs_alpha or prediction in ("eps", "score")
    if float(process.alpha(strength)) == 0.0 and singular:
        return T_MAX_WHERE_ALPHA_VANISHES
    return strength


def sdedit(
    key: Array,
    model: ModelFn,
    process: Process,
    x_init: ArrayLike,
    strength: float,
    *,
    solver: str = "ddim",
    steps: int | None = None,
    prediction: str = "eps",
    ts: ArrayLike | None = None,
    return_info: bool = False,
    **options,
):
    """SDEdit image-to-image (Meng et al. 2022, Alg. 1): x_t = alpha_t x_init + sigma_t eps with
    t = strength (the forward kernel q(x_t | x_0)), then the reverse process from t to t_min.

    strength = 0 returns `x_init` itself (no model call); strength = 1 starts from (almost) pure
    noise, so the output follows the model's distribution whatever x_init is. In between the
    output keeps the coarse structure of x_init (the realism-faithfulness trade-off of the
    paper, Fig. 3).

    Args:
      key: PRNG key, split into the noising key and `sample`'s key.
      model: `model(x_t, t) -> prediction` (bind conditions with a guidance transformer or a
        `jax.tree_util.Partial` first).
      process: the forward process the model was trained on.
      x_init: the images to edit [B, ...] (in the model's data space: pixels, or latents).
      strength: t of the noised start, in [0, 1]. Where alpha(strength) = 0 (flows at 1) and the
        solver or prediction divides by alpha, the start is `sample`'s default 1 - 1e-3.
      solver: any fixed-step solver name of `diffjax.SOLVERS`.
      steps: intervals of the grid from t = strength to t_min (default 50; the whole count, not
        scaled by strength as diffusers' img2img does). ts: the grid itself instead, whose
        first time must equal strength.
      prediction: the model's output kind.
      return_info: also return `sample`'s info with 'x_start', the noised state at ts[0].
      **options: `sample`'s options (t_min, spacing, eta, clip_x0, ...); t_max is strength.
    Returns:
      edited images [B, ...] (and the info dict when return_info).
    """
    strength = check_strength(strength)
    check_choice(solver, SOLVERS, "solver")
    check_choice(prediction, PREDICTION_KINDS, "prediction kind")
    if SOLVERS[solver].run is not None:
        raise ValueError(f"sdedit needs a fixed-step solver; {solver!r} is adaptive")
    if "t_max" in options:
        raise ValueError(f"sdedit starts at t_max = strength; got t_max={options['t_max']!r}")
    x_init = jnp.asarray(x_init)
    if strength == 0.0:
        return (x_init, {"nfe": 0, "ts": None, "x_start": x_init}) if return_info else x_init
    if ts is None:
        options = {**options, "t_max": _start_time(process, strength, solver, prediction)}
        steps = DEFAULT_STEPS if steps is None else steps
    elif abs(float(np.asarray(ts)[0]) - strength) > 1e-6:
        raise ValueError(f"ts[0] = {float(np.asarray(ts)[0])!r} must equal strength {strength!r}")
    with jax.ensure_compile_time_eval():
        _, _, grid = _resolve(solver, process, steps, dict(options), prediction, ts)
    rest = {k: v for k, v in options.items() if k not in _GRID_OPTIONS}
    noise_key, sample_key = jax.random.split(key)
    t0 = jnp.full(x_init.shape[:1], grid[0], x_init.dtype)
    x_start, _ = marginal(noise_key, process, x_init, t0)
    out = sample(
        sample_key, model, process, x_init.shape, solver=solver, prediction=prediction,
        x_init=x_start, ts=grid, return_info=return_info, **rest,
    )  # fmt: skip
    if not return_info:
        return out
    return out[0], {**out[1], "x_start": x_start}


def ddim_invert(
    model: ModelFn,
    process: Process,
    x0: ArrayLike,
    *,
    steps: int | None = None,
    ts: ArrayLike | None = None,
    prediction: str = "eps",
    fixed_point: int = 0,
    return_info: bool = False,
    **options,
):
    """DDIM inversion: the deterministic DDIM step run from t_min to t_max (Song et al. 2021a,
    Sec. 4.3, eq. 14 read forward in time; Dhariwal & Nichol 2021, App. F):

      x_s = alpha_s x0_hat(x_t, t) + sigma_s eps_hat(x_t, t),   t < s consecutive grid times,

    a first-order solver of the probability-flow ODE in log-SNR, so the result approaches the
    exact ODE map x(t_min) -> x(t_max) as the grid is refined. Sampling with
    `sample(..., solver='ddim', ts=info['ts'], x_init=z)` (`ddim_reconstruct`) evaluates the
    model at the other end of each interval, so the round trip is exact only to O(step).
    `fixed_point` = K > 0 refines each step by K iterations of

      y <- y + (alpha_s / alpha_t) (x_t - D_{s->t}(y)),   D the DDIM sampling step s -> t,

    whose fixed point is the exact inverse of the sampler's step (the iteration of Wallace et
    al. 2023 / Pan et al. 2023); each costs one more model call per interval.

    Args:
      model: `model(x_t, t) -> prediction` of kind `prediction`.
      process: the forward process.
      x0: data [B, ...] (the state at t_min, e.g. an encoded image).
      steps: intervals of the grid (default 50); ts: the grid itself, decreasing from t_max to
        t_min exactly as `sample` takes it (the inversion runs it backwards).
      fixed_point: refinement iterations per step (0: plain DDIM inversion).
      return_info: also return {'nfe': model calls, 'ts': the (decreasing) grid}.
      **options: the grid options of `sample` for 'ddim' (t_min, t_max, spacing) and clip_x0 /
        dynamic_threshold; eta must be 0 (the inversion is deterministic).
    Returns:
      the noise z = x(t_max) [B, ...] (and the info dict when return_info).
    """
    check_choice(prediction, PREDICTION_KINDS, "prediction kind")
    if isinstance(fixed_point, bool) or int(fixed_point) != fixed_point or fixed_point < 0:
        raise ValueError(f"fixed_point must be an integer >= 0; got {fixed_point!r}")
    if options.get("eta", 0.0) != 0.0:
        raise ValueError(f"DDIM inversion is deterministic: eta must be 0; got {options['eta']!r}")
    if ts is None and steps is None:
        steps = DEFAULT_STEPS
    x0 = jnp.asarray(x0)
    with jax.ensure_compile_time_eval():
        _, opts, grid = _resolve("ddim", process, steps, dict(options), prediction, ts)
    leaves, static = modeltree.split(model)
    z = _invert(
        x0,
        jnp.asarray(np.ascontiguousarray(grid[::-1]), x0.dtype),
        leaves,
        model_static=static,
        process=process,
        prediction=prediction,
        opts=tuple(sorted(opts.items())),
        fixed_point=int(fixed_point),
    )
    if not return_info:
        return z
    return z, {"nfe": (len(grid) - 1) * (1 + int(fixed_point)), "ts": grid}


@functools.partial(
    jax.jit, static_argnames=("model_static", "process", "prediction", "opts", "fixed_point")
)
def _invert(x, ts_up, model_leaves, *, model_static, process, prediction, opts, fixed_point):
    model = modeltree.join(model_leaves, model_static)
    ctx = make_context(model, process, prediction, dict(opts), ts_up.shape[0] - 1)

    def ddim(y, u, v):  # the deterministic DDIM step from time u to time v
        x0_hat, eps_hat = ctx.predict(y, u, "x0", "eps")
        return process.alpha(v) * x0_hat + process.sigma(v) * eps_hat

    def body(x_t, ts):
        t, s = ts  # t < s
        gain = process.alpha(s) / process.alpha(t)

        def refine(_, y):
            return y + gain * (x_t - ddim(y, s, t))

        x_s = jax.lax.fori_loop(0, fixed_point, refine, ddim(x_t, t, s))
        return x_s, None

    z, _ = jax.lax.scan(body, x, (ts_up[:-1], ts_up[1:]))
    return z


def ddim_reconstruct(
    key: Array, model: ModelFn, process: Process, z: ArrayLike, ts: ArrayLike, **options
) -> Array:
    """Deterministic DDIM sampling (eta = 0) from the inverted noise z on the grid `ts` that
    `ddim_invert(..., return_info=True)` returned: `sample(key, model, process, z.shape,
    solver='ddim', ts=ts, x_init=z)`; the key is unused by a deterministic run."""
    z = jnp.asarray(z)
    if options.get("eta", 0.0) != 0.0:
        raise ValueError(f"DDIM reconstruction is deterministic: eta must be 0; got {options}")
    return sample(key, model, process, z.shape, solver="ddim", ts=ts, x_init=z, **options)
