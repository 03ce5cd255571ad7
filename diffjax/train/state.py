"""The training state: a pytree of params, EMA params, optimiser state and the step count.

No PRNG key lives here: each step's key is `fold_in(base_key, step)`, so a run resumed from a
checkpoint continues exactly the random stream of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from diffjax.typing import Array, PyTree


@flax.struct.dataclass
class TrainState:
    """params, ema_params: model parameter trees; opt_state: optax state; step: int32 []."""

    params: PyTree
    ema_params: PyTree
    opt_state: optax.OptState
    step: Array


def create_train_state(
    key: Array, init_params: Callable[[Array], PyTree], tx: optax.GradientTransformation
) -> TrainState:
    """A fresh state at step 0 with ema_params = params (a copy, so donation is safe).

    Args:
      key: PRNG key for the parameter initialisation.
      init_params: key -> parameter tree.
      tx: the optimiser.
    """
    params = init_params(key)
    return TrainState(
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
        step=jnp.zeros((), jnp.int32),
    )


def abstract_train_state(
    key: Array, init_params: Callable[[Array], PyTree], tx: optax.GradientTransformation
) -> TrainState:
    """Shapes and dtypes of `create_train_state` without computing it (a restore target)."""
    return jax.eval_shape(lambda k: create_train_state(k, init_params, tx), key)


def param_count(params: PyTree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
