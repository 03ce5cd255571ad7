"""The jitted, data-parallel train step.

The batch is sharded over the mesh's 'data' axis and the state replicated; under jit the
batch mean inside the loss is the global mean, so gradients need no explicit all-reduce.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffjax import modeltree, parallel
from diffjax.train.optim import ema_decay, ema_update
from diffjax.train.spec import EmaSpec
from diffjax.train.state import TrainState
from diffjax.typing import Array, PyTree

# (params, key, batch, *, ema_params, frozen) -> (scalar loss, dict of aux metrics)
LossFn = Callable[[PyTree, Array, dict], tuple[Array, dict]]


def _scalar_metrics(aux: dict) -> dict[str, Array]:
    """Keep the scalar aux metrics (per-example arrays such as 'per_example' or 't' are not
    logged)."""
    return {
        name: jnp.asarray(value, jnp.float32)
        for name, value in aux.items()
        if isinstance(value, (jax.Array, float, int)) and jnp.ndim(value) == 0
    }


def _takes_step(loss_fn: Callable) -> bool:
    try:
        return "step" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # no signature to read: pass nothing new
        return False


def _ema_decay(ema: EmaSpec, step: Array) -> Array:
    """`ema_decay`, or mu(step) of consistency training's schedule when `ema.schedule` is set
    (`diffjax.consistency.CTSchedule.ema_decay`: the EMA is the CT target network)."""
    schedule = getattr(ema, "schedule", None)
    return ema_decay(ema, step) if schedule is None else schedule.ema_decay(step)


def train_step(
    state: TrainState,
    batch: dict,
    base_key: Array,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    ema: EmaSpec,
    frozen: dict | None = None,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimiser step with key fold_in(base_key, step); returns (new state, metrics).

    The loss also gets the EMA parameters (a consistency loss's target network) and `frozen`
    (untrained models such as a distillation teacher, traced), and step= (traced) when
    `loss_fn` takes it (`make_loss_fn`'s passes it on only to a loss with a `step` parameter).
    With `ema.schedule` (consistency training's N(k) schedule) the EMA decay is its mu(step)."""
    key = jax.random.fold_in(base_key, state.step)
    kwargs = {"ema_params": state.ema_params, "frozen": frozen}
    if _takes_step(loss_fn):
        kwargs["step"] = state.step
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, key, batch, **kwargs
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = ema_update(state.ema_params, params, _ema_decay(ema, state.step))
    metrics = {**_scalar_metrics(aux), "loss": loss, "grad_norm": optax.tree.norm(grads)}
    new_state = state.replace(
        params=params, ema_params=ema_params, opt_state=opt_state, step=state.step + 1
    )
    return new_state, metrics


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    ema: EmaSpec,
    mesh: Mesh,
    frozen: dict | None = None,
) -> Callable[[TrainState, dict, Array], tuple[TrainState, dict]]:
    """`train_step` jitted with the batch sharded on 'data', everything else replicated, and the
    incoming state donated (its buffers are reused for the new state). `frozen` (e.g. the
    teacher model pytree) is a replicated jit argument of every call, not a constant."""
    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    # the models' array leaves are traced arguments; modules and functions stay static
    arrays, static = modeltree.split(frozen) if frozen is not None else ([], None)

    def step(state, batch, base_key, arrays):
        models = None if static is None else modeltree.join(arrays, static)
        return train_step(state, batch, base_key, loss_fn=loss_fn, tx=tx, ema=ema, frozen=models)

    jitted = jax.jit(
        step,
        in_shardings=(repl, data, repl, repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    return lambda state, batch, base_key: jitted(state, batch, base_key, arrays)
