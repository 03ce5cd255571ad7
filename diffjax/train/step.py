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


def _loss_and_grads(loss_fn, params, key, batch, kwargs, grad_accum: int, unroll: bool = False):
    """((loss, aux), grads) of `loss_fn` on `batch`; with grad_accum k > 1 the batch is split
    into k micro-batches (micro-batch i: rows i, i + k, i + 2k, ..., so each device keeps its
    own rows) run one after another under `lax.scan` (fully unrolled with `unroll`), the
    micro-batch i with key fold_in(key, i), and the losses, scalar metrics and gradients
    averaged over them (the mean over equal micro-batches is the batch mean)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum == 1:
        (loss, aux), grads = grad_fn(params, key, batch, **kwargs)
        return (loss, _scalar_metrics(aux)), grads

    def split(x):  # [B, ...] -> [k, B / k, ...]: micro-batch i holds rows i::k
        x = jnp.asarray(x)
        return jnp.swapaxes(x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]), 0, 1)

    micro = jax.tree.map(split, batch)

    def body(acc, inputs):
        i, part = inputs
        (loss, aux), grads = grad_fn(params, jax.random.fold_in(key, i), part, **kwargs)
        out = (loss, _scalar_metrics(aux)), grads
        return jax.tree.map(jnp.add, acc, out), None

    def first(p):  # the shapes of one micro-batch's outputs (a forward trace only)
        loss, aux = loss_fn(p, key, jax.tree.map(lambda x: x[0], micro), **kwargs)
        return (loss, _scalar_metrics(aux)), p

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(first, params))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro), unroll=unroll)
    return jax.tree.map(lambda x: x / grad_accum, total)


def _all_finite(tree) -> Array:
    """True iff every element of every leaf of `tree` is finite (a traced scalar bool)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def train_step(
    state: TrainState,
    batch: dict,
    base_key: Array,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    ema: EmaSpec,
    frozen: dict | None = None,
    grad_accum: int = 1,
    nonfinite: str = "stop",
    unroll: bool = False,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimiser step with key fold_in(base_key, step); returns (new state, metrics).

    The loss also gets the EMA parameters (a consistency loss's target network) and `frozen`
    (untrained models such as a distillation teacher, traced), and step= (traced) when
    `loss_fn` takes it (`make_loss_fn`'s passes it on only to a loss with a `step` parameter).
    With `ema.schedule` (consistency training's N(k) schedule) the EMA decay is its mu(step).

    `grad_accum` k > 1: the gradient is the mean over k micro-batches (`_loss_and_grads`).
    `nonfinite` 'skip': when the loss or a gradient is NaN/inf, params, optimiser state and EMA
    stay as they were (the step count still advances) and metrics['skipped'] is 1.0 (else
    0.0); 'stop' (the default) leaves that to the loop, which stops before the next save.
    `unroll`: the micro-batch scan is fully unrolled (`make_train_step` does so on CPU)."""
    key = jax.random.fold_in(base_key, state.step)
    kwargs = {"ema_params": state.ema_params, "frozen": frozen}
    if _takes_step(loss_fn):
        kwargs["step"] = state.step
    (loss, metrics), grads = _loss_and_grads(
        loss_fn, state.params, key, batch, kwargs, grad_accum, unroll
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = ema_update(state.ema_params, params, _ema_decay(ema, state.step))
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    new = (params, ema_params, opt_state)
    if nonfinite == "skip":
        ok = jnp.isfinite(loss) & _all_finite(grads)
        old = (state.params, state.ema_params, state.opt_state)
        new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
    elif nonfinite != "stop":
        raise ValueError(f"nonfinite = {nonfinite!r}: expected 'stop' or 'skip'")
    params, ema_params, opt_state = new
    new_state = state.replace(
        params=params, ema_params=ema_params, opt_state=opt_state, step=state.step + 1
    )
    return new_state, metrics


def train_steps(state: TrainState, batches: tuple, base_key: Array, **step_kwargs):
    """len(batches) consecutive `train_step`s under one `lax.scan` (the batches stacked on a
    new leading axis); the metrics come back stacked, [k] per name. Step n still uses key
    fold_in(base_key, n), so this equals the steps taken one call at a time. With
    `unroll=True` (a `train_step` option) the scan is fully unrolled too."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)

    def body(s, batch):
        return train_step(s, batch, base_key, **step_kwargs)

    return jax.lax.scan(body, state, stacked, unroll=bool(step_kwargs.get("unroll", False)))


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    ema: EmaSpec,
    mesh: Mesh,
    frozen: dict | None = None,
    *,
    grad_accum: int = 1,
    nonfinite: str = "stop",
    steps_per_call: int = 1,
    unroll: bool | None = None,
) -> Callable[[TrainState, dict, Array], tuple[TrainState, dict]]:
    """`train_step` jitted with the batch sharded on 'data', everything else replicated, and the
    incoming state donated (its buffers are reused for the new state). `frozen` (e.g. the
    teacher model pytree) is a replicated jit argument of every call, not a constant.

    `steps_per_call` k > 1: the function takes a tuple of k batches (each sharded on 'data')
    and runs `train_steps` on them in one call, returning metrics stacked [k] per name.
    `unroll`: unroll the scans of `steps_per_call` and `grad_accum` into straight-line code
    (None, the default: on the CPU backend only, where XLA runs convolutions inside a loop
    body several times slower than the same convolutions outside one; elsewhere a scan
    compiles its body once).
    The function's `precompile(state, batch, base_key)` compiles it ahead of time."""
    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"grad_accum = {grad_accum!r}: expected an integer >= 1")
    if not isinstance(steps_per_call, int) or steps_per_call < 1:
        raise ValueError(f"steps_per_call = {steps_per_call!r}: expected an integer >= 1")
    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    # the models' array leaves are traced arguments; modules and functions stay static
    arrays, static = modeltree.split(frozen) if frozen is not None else ([], None)
    if unroll is None:
        unroll = mesh.devices.flat[0].platform == "cpu"
    options = dict(loss_fn=loss_fn, tx=tx, ema=ema, grad_accum=grad_accum, nonfinite=nonfinite,
                   unroll=bool(unroll))  # fmt: skip

    def step(state, batch, base_key, arrays):
        models = None if static is None else modeltree.join(arrays, static)
        if steps_per_call == 1:
            return train_step(state, batch, base_key, frozen=models, **options)
        if len(batch) != steps_per_call:
            raise ValueError(f"expected a tuple of {steps_per_call} batches; got {len(batch)}")
        return train_steps(state, tuple(batch), base_key, frozen=models, **options)

    jitted = jax.jit(
        step,
        in_shardings=(repl, data, repl, repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )

    def call(state, batch, base_key):
        return jitted(state, batch, base_key, arrays)

    def precompile(state, batch, base_key):
        """The step compiled ahead of time for these arguments (arrays, or ShapeDtypeStructs
        with their shardings): a function of the same signature running that program (the
        loop compiles it on a thread while the train state is initialised)."""
        compiled = jitted.lower(state, batch, base_key, arrays).compile()
        return lambda s, b, k: compiled(s, b, k, arrays)

    call.precompile = precompile
    return call
