"""Conversions between prediction kinds: 'eps', 'x0', 'v', 'score', 'velocity'.

With x_t = alpha x0 + sigma eps (all coefficients at the same t):
  v        = alpha eps - sigma x0                    (Salimans & Ho 2022, Sec. 4)
  score    = grad log p_t(x_t) = -eps / sigma         (Song et al. 2021, via Tweedie)
  velocity = dx_t/dt = alpha' x0 + sigma' eps         (the probability-flow ODE drift,
                                                       = f x_t - g2/2 score)
Every kind is converted through the pair (x0, eps) by solving the 2x2 linear system that the
kind and x_t give; each target then uses only the part of the pair it needs.
"""

from __future__ import annotations

import numpy as np

from diffjax.checks import check_batch_time, check_choice, check_same_shape, check_time
from diffjax.kernels import bcast
from diffjax.processes import Process
from diffjax.typing import PREDICTION_KINDS, Array, ArrayLike


def _coeffs(process: Process, t: ArrayLike, x: Array):
    return bcast(process.alpha(t), x), bcast(process.sigma(t), x)


def _derivs(process: Process, t: ArrayLike, x: Array):
    return bcast(process.d_alpha(t), x), bcast(process.d_sigma(t), x)


def to_x0_eps(pred: Array, kind: str, x_t: Array, t: ArrayLike, process: Process):
    """(x0, eps) implied by a prediction of `kind` at (x_t, t)."""
    check_choice(kind, PREDICTION_KINDS, "prediction kind")
    a, s = _coeffs(process, t, x_t)
    if kind == "eps":
        return (x_t - s * pred) / a, pred
    if kind == "x0":
        return pred, (x_t - a * pred) / s
    if kind == "score":
        eps = -s * pred
        return (x_t - s * eps) / a, eps
    if kind == "v":
        # [a s; -s a] [x0; eps] = [x_t; v], determinant a^2 + s^2 > 0
        det = a**2 + s**2
        return (a * x_t - s * pred) / det, (s * x_t + a * pred) / det
    # velocity: [a s; a' s'] [x0; eps] = [x_t; u], determinant a s' - a' s > 0
    da, ds = _derivs(process, t, x_t)
    det = a * ds - da * s
    return (ds * x_t - s * pred) / det, (a * pred - da * x_t) / det


def from_x0_eps(x0: Array, eps: Array, kind: str, t: ArrayLike, process: Process):
    """The prediction of `kind` for a given (x0, eps) pair at time t."""
    check_choice(kind, PREDICTION_KINDS, "prediction kind")
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    a, s = _coeffs(process, t, x0)
    if kind == "score":
        return -eps / s
    if kind == "v":
        return a * eps - s * x0
    da, ds = _derivs(process, t, x0)
    return da * x0 + ds * eps


def convert(
    pred: ArrayLike, source: str, target: str, x_t: ArrayLike, t: ArrayLike, process: Process
) -> Array:
    """Convert a model prediction from one kind to another at (x_t, t).

    Args:
      pred: prediction [B, ...] of kind `source`.
      source, target: one of 'eps', 'x0', 'v', 'score', 'velocity'.
      x_t: the state [B, ...]; t: times [B].
      process: the forward process the model was trained on.
    Returns:
      the prediction of kind `target`, [B, ...].
    Raises:
      ValueError: an unknown kind, pred and x_t of different shapes, t neither a scalar nor [B],
        or a concrete t outside [0, 1] (checked also when source == target).
    """
    check_choice(source, PREDICTION_KINDS, "prediction kind")
    check_choice(target, PREDICTION_KINDS, "prediction kind")
    check_same_shape(pred, x_t, "pred and x_t")
    if np.ndim(t) != 0:
        check_batch_time(t, x_t)
    check_time(t)
    if source == target:
        return pred
    if {source, target} == {"eps", "score"}:  # no division by alpha needed
        s = bcast(process.sigma(t), x_t)
        return -pred / s if target == "score" else -s * pred
    x0, eps = to_x0_eps(pred, source, x_t, t, process)
    return from_x0_eps(x0, eps, target, t, process)
