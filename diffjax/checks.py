"""Input validation that names the offending value (used at public entry points)."""

from __future__ import annotations

from collections.abc import Iterable

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds values we can inspect now (not a tracer under jit)."""
    return not isinstance(x, jax.core.Tracer)


def check_time(t, name: str = "t") -> None:
    """Raise ValueError if a concrete `t` has values outside [0, 1] or is not finite."""
    if not is_concrete(t):
        return
    arr = np.asarray(t, dtype=np.float64)
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        raise ValueError(
            f"{name} must lie in [0, 1] (t = 0 is data, t = 1 is noise); got {arr[bad].ravel()[:5]}"
        )


def check_batch_time(t, x, name: str = "t") -> None:
    """Raise ValueError unless t has shape (batch,) matching x's leading axis."""
    shape = np.shape(t)
    if len(shape) != 1 or np.ndim(x) < 1 or shape[0] != np.shape(x)[0]:
        raise ValueError(
            f"{name} must have shape (batch,) = ({np.shape(x)[0] if np.ndim(x) else '?'},) "
            f"matching x of shape {np.shape(x)}; got {name}.shape = {shape}"
        )
    check_time(t, name)


def check_same_shape(a, b, names: str = "arrays") -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{names} must have the same shape; got {np.shape(a)} and {np.shape(b)}")


def check_choice(value, choices: Iterable[str], what: str) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {choices}")
