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


def check_floating(x, name: str) -> None:
    """Raise TypeError unless `x` has a floating dtype (an int image batch must be cast and
    scaled first: noise added to integers would be silently truncated)."""
    dtype = np.result_type(x) if not hasattr(x, "dtype") else x.dtype
    if not np.issubdtype(np.dtype(dtype), np.floating) and dtype != jax.numpy.bfloat16:
        raise TypeError(
            f"{name} must be a floating-point array (e.g. float32 scaled to [-1, 1]); "
            f"got dtype {np.dtype(dtype).name} with shape {np.shape(x)}"
        )


def check_finite(x, name: str) -> None:
    """Raise ValueError if a concrete `x` holds NaN or inf (tracers are not inspected)."""
    if not is_concrete(x):
        return
    arr = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} must be finite; got {int(bad.sum())} NaN/inf value(s) of {arr.size} "
            f"(first at index {np.unravel_index(int(np.argmax(bad)), arr.shape)})"
        )


def check_same_structure(a, b, names: str) -> None:
    """Raise ValueError unless pytrees `a` and `b` have one structure and equal leaf shapes."""
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    if sa != sb:
        raise ValueError(f"{names} must have the same structure; got {sa} and {sb}")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if np.shape(x) != np.shape(y):
            raise ValueError(
                f"{names} must have the same shapes; got {np.shape(x)} and {np.shape(y)}"
            )
