"""A model as a pytree: split it into traced array leaves and a hashable static rest, and back.

The entry points that jit a loop over a model (`sample`, `inpaint`, `likelihood`) pass
`leaves` as traced arguments and `static` as a static argument, so

- a pytree model (`diffjax.models.bind(...)`, a `jax.tree_util.Partial` over a module-level
  function, the guidance transformers' results, any registered pytree with `__call__`) keeps
  its arrays out of the compiled program: a new parameter set reuses it;
- a plain Python function (or a `functools.partial`, a closure, a bound method) is one
  non-array leaf, entirely static: hashed by identity, compiled once per function object, with
  whatever it closes over baked in as constants.

Array leaves are `jax.Array`s (tracers included), numpy arrays and numpy scalars; every other
leaf (Python numbers, strings, functions, modules) is static, compared by type and value, or by
identity where it is not hashable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from diffjax.typing import Array


def is_array(leaf: Any) -> bool:
    """True for the leaves that are traced: jax arrays (and tracers), numpy arrays and scalars."""
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


@dataclasses.dataclass(frozen=True, eq=False)
class _ById:
    """An unhashable static leaf, compared by identity (as a plain function is)."""

    value: Any

    def __eq__(self, other):
        return isinstance(other, _ById) and self.value is other.value

    def __hash__(self):
        return id(self.value)


def _static_leaf(leaf: Any):
    try:
        hash(leaf)
    except TypeError:
        return _ById(leaf)
    return leaf


@dataclasses.dataclass(frozen=True)
class Static:
    """The non-array part of a model: its tree structure and its non-array leaves by position.

    Hashable, so it can be a static argument of `jax.jit`; two models with equal `Static`s
    share one compiled program.
    """

    treedef: Any
    consts: tuple  # ((position, type, value), ...) of the static leaves

    @property
    def num_leaves(self) -> int:
        return self.treedef.num_leaves


def split(model: Any) -> tuple[list[Array], Static]:
    """(array leaves, static rest) of any model object; `join` inverts it.

    A plain function gives ([], Static) with the function itself as the one static leaf.
    """
    leaves, treedef = jax.tree_util.tree_flatten(model)
    arrays = [leaf for leaf in leaves if is_array(leaf)]
    consts = tuple(
        (i, type(leaf), _static_leaf(leaf)) for i, leaf in enumerate(leaves) if not is_array(leaf)
    )
    return arrays, Static(treedef, consts)


def join(arrays, static: Static) -> Any:
    """Rebuild the model from its (possibly traced) array leaves and its static rest."""
    fixed = {i: (v.value if isinstance(v, _ById) else v) for i, _, v in static.consts}
    arrays = iter(arrays)
    leaves = [fixed[i] if i in fixed else next(arrays) for i in range(static.num_leaves)]
    return jax.tree_util.tree_unflatten(static.treedef, leaves)
