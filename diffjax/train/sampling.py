"""Drawing samples from trained parameters (EMA by default) for grids and launch/sample.py."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import guidance
from diffjax.train.components import Components
from diffjax.train.spec import CondSpec, SampleSpec
from diffjax.train.writers import save_image_grid, save_points_plot
from diffjax.typing import Array, PyTree


def grid_labels(num: int, cond: CondSpec) -> Array | None:
    """Labels 0, 1, ..., num_classes - 1, 0, 1, ... for a class-conditional grid, else None."""
    if not cond.class_conditional:
        return None
    return jnp.arange(num, dtype=jnp.int32) % cond.num_classes  # [N]


def guided_model(c: Components, params: PyTree, labels: Array | None, scale: float, null: int):
    """model(x_t, t) with the labels bound; for scale != 1 the classifier-free guidance mix
    uncond + scale (cond - uncond) of `diffjax.guidance.cfg` (Ho & Salimans 2022, eq. 6).

    A pytree (`jax.tree_util.Partial`) whose leaves are the parameters and labels, with the
    static `c.apply` inside: `sample` traces them, so every parameter set shares one program."""
    conditional = jax.tree_util.Partial(_apply_eval, c.apply, params)
    if labels is None or scale == 1.0:
        return jax.tree_util.Partial(_apply_eval, c.apply, params, y=labels)
    return guidance.cfg(conditional, labels, jnp.full_like(labels, null), scale)


def _apply_eval(apply, params, x_t, t, y=None):
    """The model at evaluation: no dropout (module-level, so its identity never changes)."""
    return apply(params, x_t, t, y, train=False, key=None)


def make_sampler(
    c: Components, spec: SampleSpec, cond: CondSpec, prediction: str, num: int, labels=None
) -> Callable[[PyTree, Array], Array]:
    """A (params, key) -> samples [num, *example_shape] using `diffjax.samplers.sample`.

    `labels` [num] overrides the default grid labels of a class-conditional model. The model is
    a pytree over `params` (`guided_model`), so no outer jit is needed: every parameter set (each
    checkpoint or EMA copy) reuses the one compiled loop. `spec.kwargs` go to `sample` as its
    options; an explicit grid `ts` there replaces `spec.steps` (which must then be 0).
    """
    from diffjax.samplers import sample

    if labels is None:
        labels = grid_labels(num, cond)
    shape = (num, *c.example_shape)
    options = dict(spec.kwargs)

    def run(params: PyTree, key: Array) -> Array:
        # a fresh pytree model per call: its leaves (params, labels) are traced by `sample`,
        # so every call after the first reuses one compiled loop and holds no extra constants
        model = guided_model(c, params, labels, spec.guidance_scale, cond.num_classes)
        return sample(
            key,
            model,
            c.process,
            shape,
            solver=spec.solver,
            steps=spec.steps or None,  # 0: adaptive solvers take no steps
            prediction=prediction,
            **options,
        )

    return run


def write_samples(path: str, samples: np.ndarray, c: Components, cols: int | None = None) -> str:
    """A PNG grid for images [N, H, W, C] (`cols` per row; a class-conditional grid uses one
    column per class), or a scatter plot for 2-D points [N, 2]."""
    samples = np.asarray(samples)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if samples.ndim == 4:
        return save_image_grid(path, samples, c.value_range, cols)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return save_points_plot(path, samples, c.reference)
    raise ValueError(f"cannot draw samples of shape {samples.shape}; expected [N,H,W,C] or [N,2]")
