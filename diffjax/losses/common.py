"""Shared pieces of the losses: time sampling, model calls, reductions and input checks."""

from __future__ import annotations

import math

import jax.numpy as jnp

from diffjax.checks import check_batch_time, check_choice
from diffjax.processes import Process
from diffjax.typing import PREDICTION_KINDS, Array, ArrayLike, ModelFn


def check_data(x0: ArrayLike) -> Array:
    """x0 as a floating array [B, ...] with at least one data axis."""
    x0 = jnp.asarray(x0)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have shape [B, ...] with at least one data axis; got {x0.shape}")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.float32)
    return x0


def check_prediction(prediction: str) -> None:
    check_choice(prediction, PREDICTION_KINDS, "prediction kind")


def data_dims(x0: Array) -> int:
    """d, the number of scalars per example."""
    return math.prod(x0.shape[1:])


def mean_over_data(x: Array) -> Array:
    """[B, ...] -> [B]: the mean over every axis but the batch axis."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def sum_over_data(x: Array) -> Array:
    """[B, ...] -> [B]: the sum over every axis but the batch axis."""
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def grid_index(process: Process, t: Array) -> Array:
    """The step n = round(t T) of a discrete chain, as int32 [B]: `process.step_of_time`."""
    return process.step_of_time(t)


def sample_times(key: Array, x0: Array, process: Process, t: ArrayLike | None = None) -> Array:
    """Per-example times [B] in the dtype of x0.

    Given `t`, it is validated (shape [B], values in [0, 1]) and returned. Otherwise they are
    the process's own `draw_t`: on a discrete chain n is drawn uniformly from {1, ..., T} and
    t = n / T, so that every coefficient is read at a grid point (Ho et al. 2020, Algorithm 1);
    on a continuous process t ~ U(0, 1).
    """
    if t is not None:
        check_batch_time(t, x0)
        return jnp.asarray(t, x0.dtype)
    return process.draw_t(key, x0.shape[0], x0.dtype)


def call_model(model: ModelFn, x_t: Array, t: Array, cond, expected_shape) -> Array:
    """model(x_t, t) or model(x_t, t, cond); checks the output shape at trace time."""
    out = model(x_t, t) if cond is None else model(x_t, t, cond)
    if tuple(jnp.shape(out)) != tuple(expected_shape):
        raise ValueError(
            f"model output has shape {jnp.shape(out)}; expected {tuple(expected_shape)}"
        )
    return out


def finish(per_example: Array, t: Array, **aux) -> tuple[Array, dict]:
    """(batch mean, aux) with aux['per_example'] and aux['t'] filled in."""
    return jnp.mean(per_example), {"per_example": per_example, "t": t, **aux}
