"""Drawing samples from trained parameters (EMA by default) for grids and launch/sample.py."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import guidance, parallel
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
    c: Components,
    spec: SampleSpec,
    cond: CondSpec,
    prediction: str,
    num: int,
    labels=None,
    mesh=None,
    with_nfe: bool = False,
) -> Callable[[PyTree, Array], Array]:
    """A (params, key) -> samples [num, *example_shape] using `diffjax.samplers.sample`
    (with `with_nfe`, (samples, the model evaluations the loop made): the count of an adaptive
    solver such as dopri5, which depends on the model, from `sample`'s return_info).

    `labels` [num] overrides the default grid labels of a class-conditional model. The model is
    a pytree over `params` (`guided_model`), so no outer jit is needed: every parameter set (each
    checkpoint or EMA copy) reuses the one compiled loop. `spec.kwargs` go to `sample` as its
    options; an explicit grid `ts` there replaces `spec.steps` (which must then be 0).

    The batch is split over the 'data' axis of `mesh` (default `parallel.make_mesh()`, every
    device): the starting noise is drawn sharded (`sharded_prior`) and the loop follows it, so
    each device integrates num / devices samples instead of all of them. The samples are those
    of the unsharded `sample(key, model, process, shape)`: the same prior key and loop key, and
    partitionable threefry draws the same values whatever the split (up to float rounding of
    per-device kernels; tests/test_sampling_paths.py). When num does not divide over the
    devices the batch is not split. Params may be replicated (a train state) or uncommitted.
    """
    from diffjax.samplers import sample

    if labels is None:
        labels = grid_labels(num, cond)
    shape = (num, *c.example_shape)
    options = dict(spec.kwargs)
    mesh = parallel.make_mesh() if mesh is None else mesh
    split = mesh.size > 1 and num % mesh.size == 0
    prior = sharded_prior(c.process, shape, mesh if split else None)
    if split and labels is not None:  # per-example leaves [num, ...] split like the batch
        data = parallel.data_sharding(mesh)
        labels = jax.tree.map(
            lambda a: jax.device_put(a, data) if jnp.ndim(a) and jnp.shape(a)[0] == num else a,
            labels,
        )

    def run(params: PyTree, key: Array) -> Array:
        # a fresh pytree model per call: its leaves (params, labels) are traced by `sample`,
        # so every call after the first reuses one compiled loop and holds no extra constants
        model = guided_model(c, params, labels, spec.guidance_scale, cond.num_classes)
        out = sample(
            key,
            model,
            c.process,
            shape,
            solver=spec.solver,
            steps=spec.steps or None,  # 0: adaptive solvers take no steps
            prediction=prediction,
            x_init=prior(key),
            return_info=with_nfe,
            **options,
        )
        if with_nfe:
            out, info = out
        if not out.is_fully_addressable:  # multi-host: every host gets the whole batch
            from jax.experimental import multihost_utils

            out = multihost_utils.process_allgather(out, tiled=True)
        return (out, info["nfe"]) if with_nfe else out

    return run


def sharded_prior(process, shape: tuple[int, ...], mesh=None) -> Callable[[Array], Array]:
    """key -> the prior draw `sample(key, ...)` makes itself when no x_init is given (prior key
    = split(key)[0], `process.prior_sample`, default float dtype), placed with its batch axis
    split over `mesh`'s 'data' axis (whole on the default device when mesh is None).

    Passing it as `x_init` with the same key leaves the loop key, hence every step's noise,
    unchanged, so the result equals the plain call; the sharded input makes XLA partition the
    whole scanned loop over the devices."""
    dtype = jnp.result_type(float)

    def draw(key):
        return process.prior_sample(jax.random.split(key)[0], shape, dtype)

    out = None if mesh is None else parallel.data_sharding(mesh)
    return jax.jit(draw, out_shardings=out)


def write_samples(path: str, samples: np.ndarray, c: Components, cols: int | None = None) -> str:
    """A PNG grid for images [N, H, W, C] (`cols` per row; a class-conditional grid uses one
    column per class), or a scatter plot for 2-D points [N, 2]."""
    samples = np.asarray(samples)  # the writers create the folder (through train.paths)
    if samples.ndim == 4:
        return save_image_grid(path, samples, c.value_range, cols)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return save_points_plot(path, samples, c.reference)
    raise ValueError(f"cannot draw samples of shape {samples.shape}; expected [N,H,W,C] or [N,2]")


def write_sample_files(stem: str, samples: np.ndarray, c: Components, cols=None, **arrays) -> None:
    """`<stem>.png` (`write_samples`) and `<stem>.npz` ('samples' and `arrays`) through the path
    layer (any filesystem), by the primary process only: every process samples the whole batch
    (`make_sampler` gathers it), one writes it."""
    from diffjax.train import paths

    if parallel.is_primary():
        write_samples(stem + ".png", samples, c, cols)
        paths.write_npz(stem + ".npz", samples=np.asarray(samples), **arrays)
