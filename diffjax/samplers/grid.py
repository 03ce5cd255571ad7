"""Time grids t_max = t_0 > t_1 > ... > t_N = t_min for the samplers, and per-process defaults.

Default `t_min` (where the loop stops) is the process's own `sample_t_min`:
  discrete chain                0     the chain ends at x_0 (Ho et al. 2020)
  VE                            0     sigma(0) = sigma_min > 0, so the score is regular there
  VP, sub-VP, cosine (log-SNR)  1e-3  the score is singular at t = 0 (Song et al. 2021, App. C)
  rectified flow, OT flow, trig 0     the velocity is regular at t = 0; flows are sampled to data
  anything else                 1e-3 if sigma(0) = 0, else 0
Default spacing: 'discrete' (the integer sub-sequence of the chain) for a process with
`num_steps` (a chain); otherwise 'uniform', except the DPM-Solvers and UniPC
(LOG_SNR_SOLVERS), which use 'log_snr' (Lu et al. 2022, Sec. 3.3).
A 'discrete' grid runs over the chain's integers from floor(T t_max) to ceil(T t_min).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import processes as P
from diffjax.typing import Array

SPACINGS = ("uniform", "quadratic", "karras", "log_snr", "discrete")

# solvers whose default spacing is uniform in log-SNR (Lu et al. 2022, Sec. 3.3; Zhao et al. 2023)
LOG_SNR_SOLVERS = (
    "dpm_solver", "dpm_solver_pp", "dpm_solver_pp_sde", "dpm_solver_multistep", "unipc",
)  # fmt: skip
KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5
END_DT = 1e-3  # distance from an end with infinite log-SNR for noise-level grids
_BISECTION_ITERS = 64


def default_t_min(process: P.Process) -> float:
    """The documented default end time of the sampling loop: `process.sample_t_min`."""
    return process.sample_t_min


def default_spacing(process: P.Process, solver: str) -> str:
    """'discrete' for a chain (num_steps set), 'log_snr' for the DPM-Solvers, else 'uniform'."""
    if process.num_steps is not None:
        return "discrete"
    return "log_snr" if solver in LOG_SNR_SOLVERS else "uniform"


@functools.partial(jax.jit, static_argnums=0)
def t_of_log_snr(process: P.Process, lam: Array) -> Array:
    """Invert the (decreasing) log-SNR by bisection on [0, 1]: the t with log_snr(t) = lam.

    64 halvings reach the float64 resolution of [0, 1]; lam outside the range maps to an end.
    Shape: lam [...] -> t [...].
    """
    lam = jnp.asarray(lam)
    dtype = lam.dtype if jnp.issubdtype(lam.dtype, jnp.floating) else jnp.float32

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = process.log_snr(mid) > lam  # still too close to the data end
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jnp.zeros(lam.shape, dtype), jnp.ones(lam.shape, dtype)
    lo, hi = jax.lax.fori_loop(0, _BISECTION_ITERS, body, (lo, hi))
    return 0.5 * (lo + hi)


def on_padded(fn, x: np.ndarray) -> np.ndarray:
    """fn(x) as numpy, for an elementwise jnp function fn of the 1-D host array x, evaluated at
    a padded length (the next power of two, at least 16; the padding repeats x[-1] and is cut
    off). Eager jnp operations compile once per shape, so a grid built at every length that
    `steps_for_nfe`'s search tries compiled each of its operations anew (1400 compilations
    for the NFE tables of BASELINES.md, 291 padded). Each element depends only on its input;
    XLA's code for another length may round differently by one ulp (4 of 1485 grids of the
    processes, spacings and lengths tried differed from the unpadded ones, by one ulp)."""
    x = np.asarray(x)
    n = x.shape[0]
    size = max(16, 1 << (n - 1).bit_length())
    padded = np.concatenate([x, np.full(size - n, x[-1], x.dtype)])
    return np.array(fn(padded))[:n]  # a writable copy


def _check_range(process, steps, t_min, t_max, spacing):
    if steps is None or isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got steps = {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1; got t_min = {t_min!r}, t_max = {t_max!r}")
    if spacing == "discrete" and process.num_steps is None:
        raise ValueError(
            "spacing 'discrete' needs a Discrete process (a chain with num_steps = T); got "
            f"{type(process).__name__}, which is continuous in time"
        )


def _discrete_grid(process: P.Process, steps: int, t_min: float, t_max: float) -> np.ndarray:
    """Integers n_i = round(linspace(n_max, n_min, steps + 1)), n_max = floor(T t_max),
    n_min = ceil(T t_min) (DDIM's uniform sub-sequence,
    including both ends: 'trailing' spacing, Lin et al. 2024, Table 2), as t_n = n / T."""
    T = process.num_steps
    hi, lo = math.floor(t_max * T + 1e-6), math.ceil(t_min * T - 1e-6)  # inside [t_min, t_max]
    if steps > hi - lo:
        raise ValueError(
            f"steps = {steps} exceeds the {hi - lo} chain steps between t_max and t_min of this "
            f"T = {T} Discrete process"
        )
    n = np.round(np.linspace(hi, lo, steps + 1)).astype(np.int64)
    # host-side float64 n / T (correctly rounded when cast to float32; process.time_of_step is
    # the traced form, whose float32 division may be one ulp off)
    return n / T


def time_grid(
    process: P.Process,
    steps: int,
    spacing: str = "uniform",
    t_min: float | None = None,
    t_max: float = 1.0,
) -> Array:
    """The decreasing sampling grid [steps + 1] from t_max to t_min.

    Spacings: 'uniform' in t; 'quadratic' t = t_min + (t_max - t_min)(1 - i/N)^2 (Song et al.
    2021a, App. D.2, denser near the data); 'karras' uniform in nu^(1/rho), rho = 7, with nu =
    sigma/alpha the process's noise level (Karras et al. 2022, eq. 5); 'log_snr' uniform in the
    (clipped) log-SNR (Lu et al. 2022, Sec. 3.3); 'discrete' the integer grid of a Discrete chain.

    Args:
      process: the forward process; steps: number of intervals N >= 1.
      spacing: one of SPACINGS; t_min: end time (default `default_t_min(process)`); t_max: start.
    Returns:
      t [steps + 1] in the default float dtype, t[0] = t_max, t[-1] = t_min.
    """
    t_min = default_t_min(process) if t_min is None else float(t_min)
    t_max = float(t_max)
    _check_range(process, steps, t_min, t_max, spacing)
    steps = int(steps)
    u = np.linspace(0.0, 1.0, steps + 1)  # 0 at t_max, 1 at t_min
    if spacing == "discrete":
        return jnp.asarray(_discrete_grid(process, steps, t_min, t_max), dtype=jnp.zeros(()).dtype)
    if spacing == "uniform":
        t = on_padded(lambda v: t_max + (t_min - t_max) * jnp.asarray(v), u)
    elif spacing == "quadratic":
        t = on_padded(lambda v: t_min + (t_max - t_min) * jnp.asarray(1.0 - v) ** 2, u)
    else:
        t = _noise_level_grid(process, u, spacing, t_min, t_max)
    t[0], t[-1] = t_max, t_min  # in the grid's dtype, as jnp's .at[].set would round them
    if not np.all(np.diff(t) < 0):
        raise ValueError(
            f"the {spacing!r} grid of {steps} steps is not strictly decreasing in {t.dtype}; "
            "use fewer steps or another spacing"
        )
    return jnp.asarray(t)


def _noise_level_grid(process, u, spacing, t_min, t_max):
    """'log_snr' / 'karras' grids. Where the log-SNR is infinite at an end (alpha(t_max) = 0 or
    sigma(t_min) = 0) the spacing is laid out between the finite levels at t_max - END_DT and
    t_min + END_DT, and the end itself replaces the first (last) point, as for a final sigma = 0
    in Karras et al. (2022), eq. 5. A process with a `grid_t_floor` (EDM's sigma_min) is laid
    out as EDM's eq. 5 instead: N points from t_max to t_min + grid_t_floor, then t_min."""
    t_hi = t_max - END_DT if float(process.alpha(t_max)) == 0.0 else t_max
    t_lo = t_min + END_DT if float(process.sigma(t_min)) == 0.0 else t_min
    floor = getattr(process, "grid_t_floor", None)
    if floor is not None and float(process.sigma(t_min)) == 0.0:
        t_lo, u = t_min + floor, np.append(np.linspace(0.0, 1.0, len(u) - 1), 1.0)
    if not t_lo < t_hi:
        raise ValueError(f"{spacing!r} spacing needs t_max - t_min > {2 * END_DT}")
    lam_end, lam_start = process.log_snr(t_lo), process.log_snr(t_hi)

    def grid(v):  # elementwise in v, evaluated by on_padded
        if spacing == "log_snr":
            lam = lam_start + (lam_end - lam_start) * jnp.asarray(v, lam_end.dtype)
        else:  # karras, in nu = sigma / alpha = exp(-lam / 2)
            nu_hi, nu_lo = jnp.exp(-0.5 * lam_start), jnp.exp(-0.5 * lam_end)
            r = 1.0 / KARRAS_RHO
            nu = (nu_hi**r + jnp.asarray(v, nu_hi.dtype) * (nu_lo**r - nu_hi**r)) ** KARRAS_RHO
            lam = -2.0 * jnp.log(nu)
        return jnp.clip(t_of_log_snr(process, lam), t_min, t_max)

    return on_padded(grid, u)
