"""The reflow loss (Liu et al. 2022): rectified-flow regression on given (data, noise) pairs.

diffjax's direction: t = 0 data, t = 1 noise, so a pair is (x0, z) with z the noise end,
x_t = (1 - t) x0 + t z and the target velocity dx_t/dt = z - x0. (Liu et al. put noise at
t = 0 and data at t = 1 and regress on X_1 - X_0; t -> 1 - t maps one onto the other and flips
the velocity's sign.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.kernels import bcast
from diffjax.losses.common import call_model, check_data, finish, mean_over_data, sample_times
from diffjax.processes import Process
from diffjax.typing import Array, ArrayLike, ModelFn

_PROBE_T = (0.0, 0.25, 0.5, 0.75, 1.0)


def check_rectified_flow(process: Process, what: str = "reflow") -> None:
    """Raise unless alpha(t) = 1 - t and sigma(t) = t (rectified_flow(), ot_flow(0.0))."""
    with jax.ensure_compile_time_eval():  # constants, also when called under jit
        t = jnp.asarray(_PROBE_T, jnp.float32)
        ok = bool(
            jnp.allclose(process.alpha(t), 1.0 - t, atol=1e-7)
            and jnp.allclose(process.sigma(t), t, atol=1e-7)
            and process.prior_std == 1.0
        )
    if not ok:
        raise ValueError(
            f"{what} needs a rectified flow (alpha = 1 - t, sigma = t, prior N(0, I): "
            f"rectified_flow() or ot_flow(sigma_min=0.0)); got {process!r}"
        )


def reflow(
    model: ModelFn,
    key: Array,
    x0: ArrayLike,
    process: Process,
    *,
    noise: ArrayLike | None = None,
    cond=None,
    t: ArrayLike | None = None,
) -> tuple[Array, dict]:
    """Rectified-flow regression of a velocity model onto fixed couplings (x0, z):

      L = E_t mean_d (v_theta(x_t, t) - (z - x0))^2,   x_t = (1 - t) x0 + t z,   t ~ U(0, 1).

    With (z, x0) the noise and end point of a k-rectified flow's ODE (`diffjax.reflow.
    make_pairs`), the minimiser is the (k + 1)-rectified flow.

    Args:
      model: velocity model v(x_t [B, ...], t [B]) (or with cond).
      key: PRNG key for t.
      x0: the data ends of the pairs [B, ...].
      process: a rectified flow (anything else raises).
      noise: the paired noise ends z [B, ...] (required).
    Returns:
      (scalar, aux with 'per_example' [B] and 't' [B]).
    References: Liu et al. 2022, "Flow Straight and Fast", eq. 1 and Sec. 2.3 (reflow).
    """
    check_rectified_flow(process)
    x0 = check_data(x0)
    if noise is None:
        raise ValueError("reflow needs the paired noise: pass noise=z with z.shape == x0.shape")
    z = jnp.asarray(noise, x0.dtype)
    if z.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {x0.shape}; got {z.shape}")
    t = sample_times(key, x0, process, t)
    x_t = bcast(1.0 - t, x0) * x0 + bcast(t, x0) * z
    pred = call_model(model, x_t, t, cond, x0.shape)
    return finish(mean_over_data((pred - (z - x0)) ** 2), t)
