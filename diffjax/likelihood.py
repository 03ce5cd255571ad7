"""Exact log-likelihoods of diffusion and flow models via the probability-flow ODE, and bits/dim.

The instantaneous change of variables (Chen et al. 2018, Thm. 1): along dx/dt = v(x, t),
d log p_t(x(t)) / dt = -div v(x(t), t). Integrating the data point x from t_min to 1 gives

    log p_{t_min}(x) = log p_1(x_1) + int_{t_min}^1 div v(x(t), t) dt,

with p_1 the process's prior (Song et al. 2021, App. D.2). The divergence is exact
(d Jacobian-vector products) or the Hutchinson-Skilling estimate eps^T (dv/dx) eps with a
probe eps fixed for the whole solve (Grathwohl et al. 2019, FFJORD, Sec. 3).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import modeltree
from diffjax.checks import check_choice, check_finite, is_concrete
from diffjax.processes import LIKELIHOOD_T_EPS, Process
from diffjax.targets import convert
from diffjax.typing import PREDICTION_KINDS, Array, ArrayLike, ModelFn, PRNGKey

if TYPE_CHECKING:
    import diffrax

TRACES = ("exact", "hutchinson")
# Probe distributions with E[eps eps^T] = I, so E[eps^T A eps] = tr A (Hutchinson 1990).
PROBES = {
    "gaussian": lambda key, shape, dtype: jax.random.normal(key, shape, dtype),
    "rademacher": lambda key, shape, dtype: jax.random.rademacher(key, shape, dtype),
}
# Where sigma(0) = 0 the drift is singular at t = 0 (VP: d sigma / dt ~ 1 / sqrt(t)), so the
# solve starts at t_min = 1e-5, the value of Song et al. (2021)'s likelihood evaluation (named
# once, on the processes: `Process.likelihood_t_min` / `likelihood_t_max`).
SINGULAR_T_MIN = LIKELIHOOD_T_EPS
# Dopri5 is FSAL: 6 new stages per (accepted or rejected) step, plus 1 evaluation at t_min by
# the solver's init (counted with jax.debug.callback in tests/test_likelihood.py, diffrax 0.7).
_NFE_PER_STEP, _NFE_EXTRA = 6, 1


def default_t_min(process: Process) -> float:
    """Where the likelihood ODE starts: 0 if sigma(0) > 0, else 1e-5.

    sigma(0) > 0 (VE with sigma_min > 0, OT flow with sigma_min > 0): the drift is regular at
    t = 0 and p_0 is the model's density of the data itself. sigma(0) = 0 (VP, sub-VP, cosine,
    trig, rectified flow, a discrete chain): start at 1e-5 as Song et al. (2021) do;
    the result is the density of x_{t_min}, which differs from p_0 by O(t_min).
    Reads `process.likelihood_t_min`.
    """
    return process.likelihood_t_min


def default_t_max(process: Process, prediction: str) -> float:
    """Where the likelihood ODE ends: 1, or 1 - 1e-5 for an 'eps' or 'score' model of a process
    with alpha(1) = 0 (rectified flow, OT flow, trig).

    There the velocity a' x0 + s' eps needs x0 = (x - sigma eps) / alpha, which is 0 / 0 at
    t = 1. Stopping at 1 - 1e-5 and using the prior there is off by O(1e-5) nats per dimension,
    since p_{1 - delta} = N(0, I) + O(delta) when alpha(1) = 0 and sigma(1) = 1.
    Reads `process.likelihood_t_max(singular)`, singular for 'eps' and 'score'.
    """
    return process.likelihood_t_max(prediction in ("eps", "score"))


def _time_span(process, prediction, t_min, t_max) -> tuple[float, float]:
    """Validated (t_min, t_max), defaults filled in."""
    t_min = default_t_min(process) if t_min is None else t_min
    t_max = default_t_max(process, prediction) if t_max is None else t_max
    for name, t in (("t_min", t_min), ("t_max", t_max)):
        if isinstance(t, bool) or not (isinstance(t, (int, float)) and 0.0 <= t <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1]; got {name} = {t!r}")
    if not t_min < t_max:
        raise ValueError(f"need t_min < t_max; got t_min = {t_min!r}, t_max = {t_max!r}")
    return float(t_min), float(t_max)


def _velocity_fn(model: ModelFn, process: Process, prediction: str, cond) -> Callable:
    """dx/dt = v(x, t) for a scalar t: the model output converted to 'velocity'."""

    def velocity(x: Array, t: Array) -> Array:
        tb = jnp.full((x.shape[0],), t, x.dtype)  # [B]
        out = model(x, tb) if cond is None else model(x, tb, cond)
        return convert(out, prediction, "velocity", x, tb, process)

    return velocity


def _probes(key: PRNGKey, x: Array, trace: str, probe: str, num_probes: int) -> Array:
    """Tangents [K, B, ...]: the D basis vectors (shared by every example) or K random probes."""
    if trace == "exact":
        d = math.prod(x.shape[1:])
        basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])  # [D, 1, ...]
        return jnp.broadcast_to(basis, (d,) + x.shape)  # [D, B, ...]
    return PROBES[probe](key, (num_probes,) + x.shape, x.dtype)  # [K, B, ...]


def _ode_term(velocity: Callable, probes: Array, trace: str) -> diffrax.ODETerm:
    """The joint ODE for (x [B, ...], int div [K, B]); the x path does not depend on the probe,
    so the K probes share one solve (their divergence integrals are independent estimates)."""
    k, b = probes.shape[:2]

    def vector_field(t, y, args):
        x, _ = y
        v, jvp = jax.linearize(lambda z: velocity(z, t), x)
        jp = jax.vmap(jvp)(probes)  # [K, B, ...] = (dv/dx) probe_k
        div = jnp.sum(jnp.reshape(probes * jp, (k, b, -1)), axis=-1)  # [K, B]
        if trace == "exact":  # sum_i e_i^T J e_i = tr J
            div = jnp.sum(div, axis=0, keepdims=True)  # [1, B]
        return v, div

    import diffrax  # imported here: `import diffjax` does not load diffrax

    return diffrax.ODETerm(vector_field)


def _norm(y) -> Array:
    """Step-size error norm, per example: the largest over the batch of each example's RMS state
    error and of its log-density error. Each example is then solved about as accurately as it
    would be alone; a batch-wide RMS would let single examples drift (and dilute the B
    log-density numbers among the B * D state entries)."""
    x_err, logp_err = y
    per_example = jnp.sqrt(jnp.mean(jnp.square(jnp.reshape(x_err, (x_err.shape[0], -1))), -1))
    return jnp.maximum(jnp.max(per_example), jnp.max(jnp.abs(logp_err)))


def _solve(term, x: Array, num: int, span: tuple, rtol: float, atol: float, max_steps: int):
    """Dopri5 + PID controller over span = (t_min, t_max).

    Returns (x_1 [B, ...], int div [num, B], number of steps)."""
    import diffrax

    y0 = (x, jnp.zeros((num, x.shape[0]), x.dtype))
    sol = diffrax.diffeqsolve(
        term,
        diffrax.Dopri5(),
        t0=span[0],
        t1=span[1],
        dt0=None,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=_norm),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
    )
    return sol.ys[0][0], sol.ys[1][0], sol.stats["num_steps"]


def likelihood(
    key: PRNGKey,
    model: ModelFn,
    process: Process,
    x: ArrayLike,
    *,
    prediction: str = "eps",
    trace: str = "hutchinson",
    probe: str = "gaussian",
    num_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float | None = None,
    t_max: float | None = None,
    prior_logp: Callable[[Array], Array] | None = None,
    cond=None,
    max_steps: int = 4096,
    return_info: bool = False,
):
    """Negative log-likelihood in nats per example by the probability-flow ODE.

    -log p(x) = -log p_1(x_1) - int_{t_min}^{t_max} div v(x(t), t) dt, v the model output
    converted to 'velocity' (the probability-flow drift f x - g2 / 2 score, Song et al. 2021,
    eq. 13) and the ODE is solved by Dopri5 with a PID controller (rtol, atol). The batch is
    solved jointly (one step-size sequence) with the error norm taken per example (max over the
    batch), so each example meets the tolerances.

    Args:
      key: PRNG key for the Hutchinson probes (unused by trace='exact').
      model: model(x_t [B, ...], t [B]) (or with `cond`) -> prediction of kind `prediction`:
        a pytree model (`diffjax.models.bind`, a `jax.tree_util.Partial`), whose array leaves
        are traced (a new parameter set reuses the compiled solve), or a plain function, static
        and hashed by identity (reuse the same function object; each new one compiles anew).
      process: the forward process the model was trained on.
      x: data [B, ...], float.
      prediction: 'eps', 'x0', 'v', 'score' or 'velocity'.
      trace: 'exact' (D Jacobian-vector products per evaluation; for small D) or 'hutchinson'.
      probe: 'gaussian' or 'rademacher'; each example gets `num_probes` probes fixed per solve.
      num_probes: K independent Hutchinson estimates (sharing the x path) averaged to the result;
        `probe` and `num_probes` are ignored by trace='exact'.
      rtol, atol: tolerances of the adaptive solver.
      t_min: start time; default `default_t_min(process)` (1e-5 where sigma(0) = 0, else 0).
      t_max: end time, where the prior is used; default `default_t_max(process, prediction)`
        (1, or 1 - 1e-5 for eps/score models of processes with alpha(1) = 0).
      prior_logp: log p_1, a function [B, ...] -> [B]; default `process.prior_logp`. Override it
        with the exact marginal at t = 1 where that differs from the prior (tests). Static or
        traced like `model`.
      cond: optional conditioning passed as the model's third argument (a pytree of arrays,
        traced).
      max_steps: solver step limit.
      return_info: also return a dict: 'nfe' (model evaluations, each with its divergence),
        'num_steps', 'nll_stderr' [B] (std over probes / sqrt(K); 0 for exact, NaN if K = 1),
        'nll_probes' [K, B], 'prior_logp' [B], 'delta_logp' [B] (mean of int div), 'x1' [B, ...],
        't_min', 't_max'.
    Returns:
      nll [B] in nats (and info if return_info).

    References:
      Chen et al. 2018 (Neural ODEs), Thm. 1; Grathwohl et al. 2019 (FFJORD), Sec. 3;
      Song et al. 2021 (Score-based generative modeling through SDEs), Sec. 4.3 and App. D.2.
    """
    x = jnp.asarray(x)
    _check_args(model, x, prediction, trace, probe, num_probes, rtol, atol, prior_logp, cond)
    span = _time_span(process, prediction, t_min, t_max)
    prior_logp = process.prior_logp if prior_logp is None else prior_logp
    model_leaves, model_static = modeltree.split(model)
    prior_leaves, prior_static = modeltree.split(prior_logp)
    nll, info = _nll(
        key,
        x,
        cond,
        model_leaves,
        prior_leaves,
        model_static=model_static,
        prior_static=prior_static,
        process=process,
        config=(prediction, trace, probe, num_probes, float(rtol), float(atol), span, max_steps),
    )
    if not return_info:
        return nll
    return nll, dict(info, t_min=span[0], t_max=span[1])


@functools.partial(jax.jit, static_argnames=("model_static", "prior_static", "process", "config"))
def _nll(key, x, cond, model_leaves, prior_leaves, *, model_static, prior_static, process, config):
    """The jitted solve: the model's and the prior's array leaves are traced arguments (one
    compilation per static part, shape and configuration, not per parameter set)."""
    prediction, trace, probe, num_probes, rtol, atol, span, max_steps = config
    model = modeltree.join(model_leaves, model_static)
    prior_logp = modeltree.join(prior_leaves, prior_static)
    probes = _probes(key, x, trace, probe, num_probes)
    term = _ode_term(_velocity_fn(model, process, prediction, cond), probes, trace)
    num = 1 if trace == "exact" else num_probes
    x1, delta, steps = _solve(term, x, num, span, rtol, atol, max_steps)
    logp1 = prior_logp(x1)  # [B]
    nll_probes = -(logp1[None, :] + delta)  # [K, B]
    nll = jnp.mean(nll_probes, axis=0)  # [B]
    if trace == "exact":
        stderr = jnp.zeros_like(nll)
    elif num_probes == 1:
        stderr = jnp.full_like(nll, jnp.nan)
    else:
        stderr = jnp.std(nll_probes, axis=0, ddof=1) / math.sqrt(num_probes)
    info = dict(
        nfe=_NFE_PER_STEP * steps + _NFE_EXTRA,
        num_steps=steps,
        nll_stderr=stderr,
        nll_probes=nll_probes,
        prior_logp=logp1,
        delta_logp=jnp.mean(delta, axis=0),
        x1=x1,
    )
    return nll, info


def _check_args(model, x, prediction, trace, probe, num_probes, rtol, atol, prior_logp, cond):
    """Validate `likelihood`'s arguments (shapes through jax.eval_shape)."""
    check_choice(prediction, PREDICTION_KINDS, "prediction kind")
    check_choice(trace, TRACES, "trace")
    check_choice(probe, tuple(PROBES), "probe")
    if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a float array [batch, ...]; got shape {x.shape}, {x.dtype}")
    check_finite(x, "x")  # a NaN would only show as the ODE solver running out of steps
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be an integer >= 1; got num_probes = {num_probes!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"{name} must be a positive finite number; got {name} = {tol!r}")
    t = jax.ShapeDtypeStruct((x.shape[0],), x.dtype)
    out = jax.eval_shape(model, *((x, t) if cond is None else (x, t, cond)))
    if out.shape != x.shape:
        raise ValueError(f"model output shape {out.shape} does not match x shape {x.shape}")
    if prior_logp is not None:
        lp = jax.eval_shape(prior_logp, x)
        if lp.shape != (x.shape[0],):
            raise ValueError(f"prior_logp must map x {x.shape} to [{x.shape[0]}]; got {lp.shape}")


# --- bits per dimension for 8-bit data ---------------------------------------------------------


def _check_data_range(scale, num_bins) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number; got scale = {scale!r}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2; got num_bins = {num_bins!r}")


def _check_int_data(x: Array, num_bins: int) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"dequantize needs integer data (e.g. uint8); got dtype {x.dtype}")
    if is_concrete(x) and x.size:
        lo, hi = int(jnp.min(x)), int(jnp.max(x))
        if lo < 0 or hi >= num_bins:
            raise ValueError(f"data values must lie in [0, {num_bins - 1}]; got range [{lo}, {hi}]")


def bits_per_dim(
    nll: ArrayLike,
    x_shape,
    *,
    dequantized: bool = True,
    scale: float = 2.0,
    num_bins: int = 256,
) -> Array:
    """Convert a continuous NLL in nats per example to bits per dimension of the discrete data.

    With k in {0, .., N-1}^D (N = num_bins), uniform dequantisation y = k + u, u ~ U[0, 1)^D, and
    the model's data x = low + y * scale / N (scale = 2 for [-1, 1], 1 for [0, 1]), the discrete
    model P(k) = int p_y(k + u) du with p_y(y) = p_x(x) (scale / N)^D satisfies, by Jensen,

        -log2 P(k) <= E_u[-log p_x(x)] / ln 2 + D log2(N / scale),

    so bits/dim = nll / (D ln 2) + log2(N / scale): + 7 for 8-bit data in [-1, 1], + 8 in [0, 1]
    (Ho et al. 2020, Sec. 3.3; Song et al. 2021, App. D.2; Theis et al. 2016, Sec. 3.1). The bound
    is an equality when p_x is constant on every bin. dequantized=False gives nll / (D ln 2).

    Args:
      nll: negative log-likelihood in nats, any shape (e.g. [B]).
      x_shape: the shape of ONE example (without the batch axis), e.g. (28, 28, 1).
      dequantized: add the dequantisation offset log2(num_bins / scale).
      scale: width of the data interval the bins were mapped to.
      num_bins: number of intensity levels (256 for 8-bit data).
    Returns:
      bits per dimension, shape of nll.
    References:
      Theis, van den Oord & Bethge 2016, "A note on the evaluation of generative models", Sec. 3.1.
    """
    shape = tuple(np.atleast_1d(np.asarray(x_shape, dtype=object)).tolist()) if x_shape else ()
    if not shape or not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape):
        raise ValueError(f"x_shape must be a non-empty tuple of positive ints; got {x_shape!r}")
    _check_data_range(scale, num_bins)
    d = math.prod(int(n) for n in shape)
    bpd = jnp.asarray(nll) / (d * math.log(2.0))
    return bpd + math.log2(num_bins / scale) if dequantized else bpd


def dequantize(
    key: PRNGKey, x_int: ArrayLike, *, low: float = -1.0, scale: float = 2.0, num_bins: int = 256
) -> Array:
    """Uniform dequantisation x = low + (k + u) * scale / num_bins, u ~ U[0, 1), float32.

    Args:
      key: PRNG key for u.
      x_int: integer data [B, ...] in {0, .., num_bins - 1} (uint8 images).
      low, scale: the data interval [low, low + scale); the default is [-1, 1).
      num_bins: number of levels (256 for 8-bit data).
    Returns:
      float32 [B, ...], each value inside its bin [low + k s / N, low + (k + 1) s / N).
    References:
      Theis et al. 2016, Sec. 3.1; Ho et al. 2020, Sec. 3.3.
    """
    _check_data_range(scale, num_bins)
    x_int = jnp.asarray(x_int)
    _check_int_data(x_int, num_bins)
    return _dequantize(key, x_int, float(low), float(scale), num_bins)


@functools.partial(jax.jit, static_argnames=("low", "scale", "num_bins"))
def _dequantize(key: PRNGKey, x_int: Array, low: float, scale: float, num_bins: int) -> Array:
    u = jax.random.uniform(key, x_int.shape, jnp.float32)
    # u < 1 in float32, but k + u can round up to k + 1; keep every value inside its own bin.
    k = x_int.astype(jnp.float32)
    y = jnp.minimum(k + u, jnp.nextafter(k + 1.0, k))
    return low + y * (scale / num_bins)


def nll_dataset(
    key: PRNGKey,
    model: ModelFn,
    process: Process,
    data: ArrayLike,
    *,
    batch_size: int = 64,
    num_repeats: int = 1,
    dequantized: bool = True,
    low: float = -1.0,
    scale: float = 2.0,
    num_bins: int = 256,
    **likelihood_kwargs,
) -> dict:
    """Average NLL and bits/dim of a data set, with a standard error.

    Each example's NLL is averaged over `num_repeats` draws of the dequantisation noise (when
    `dequantized`) and of the Hutchinson probes; the standard error of the data-set mean is the
    standard deviation of these per-example values over the N examples / sqrt(N), which covers
    the data, dequantisation and probe noise together (the per-example values are i.i.d.).

    Args:
      key: PRNG key; batch b of repeat r uses fold_in(fold_in(key, r), b).
      model, process: as in `likelihood`.
      data: integer data [N, ...] in {0, .., num_bins - 1} if `dequantized`, else float data.
      batch_size: examples per ODE solve (one compilation, plus one for a short last batch).
      num_repeats: repeats of the dequantisation and probe draws.
      dequantized, low, scale, num_bins: see `dequantize` and `bits_per_dim`.
      **likelihood_kwargs: passed to `likelihood` (prediction, trace, probe, rtol, ...).
    Returns:
      dict: 'nll', 'nll_stderr', 'bpd', 'bpd_stderr' (floats), 'nll_per_example' [N] (numpy),
      'nfe' (mean model evaluations per solve), 'num_solves'.
    References:
      Song et al. 2021, App. D.2 (bits/dim with uniform dequantisation, averaged over repeats).
    """
    data = jnp.asarray(data)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must be [N, ...] with N >= 1; got shape {data.shape}")
    for name, n in (("batch_size", batch_size), ("num_repeats", num_repeats)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {name} = {n!r}")
    if dequantized:
        _check_data_range(scale, num_bins)
        _check_int_data(data, num_bins)

    def solve(k, x):  # `likelihood` compiles once per batch shape; the model's arrays are traced
        return likelihood(k, model, process, x, return_info=True, **likelihood_kwargs)

    starts = range(0, data.shape[0], batch_size)
    nll, nfe = np.zeros((num_repeats, data.shape[0])), []
    for r in range(num_repeats):
        for b, i in enumerate(starts):
            dq_key, probe_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, r), b))
            x = data[i : i + batch_size]
            if dequantized:
                x = dequantize(dq_key, x, low=low, scale=scale, num_bins=num_bins)
            out, info = solve(probe_key, x)
            nll[r, i : i + batch_size] = np.asarray(out)
            nfe.append(int(info["nfe"]))
    return dict(
        _summary(nll.mean(axis=0), data.shape[1:], dequantized, scale, num_bins),
        nfe=float(np.mean(nfe)),
        num_solves=len(nfe),
    )


def _summary(per_example: np.ndarray, x_shape, dequantized: bool, scale, num_bins) -> dict:
    """Data-set mean and standard error of per-example NLLs [N], in nats and bits/dim."""
    n = per_example.size
    stderr = float(per_example.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    mean = float(per_example.mean())
    kw = dict(scale=scale, num_bins=num_bins)
    return dict(
        nll=mean,
        nll_stderr=stderr,
        bpd=float(bits_per_dim(mean, x_shape, dequantized=dequantized, **kw)),
        bpd_stderr=float(bits_per_dim(stderr, x_shape, dequantized=False, **kw)),
        nll_per_example=per_example,
    )
