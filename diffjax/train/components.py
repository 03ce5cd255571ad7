"""The pieces a training run is made of, and the loss function over parameters they define.

`Components` is what the config builders produce and what tests can construct by hand (a tiny
model and in-memory data), so the loop itself depends on no particular model or dataset.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.processes import Process
from diffjax.train.spec import CondSpec
from diffjax.typing import Array, PyTree

# apply(params, x_t [B, ...], t [B], cond, *, train: bool, key: Array | None) -> prediction
ApplyFn = Callable[..., Array]


@dataclasses.dataclass
class Components:
    """A model (init and apply), a process, a loss, and a stream of numpy batches.

    Attributes:
      init_params: key -> parameter tree.
      apply: (params, x_t, t, cond, *, train, key) -> prediction; `key` feeds dropout.
      process: the forward process.
      loss: a `diffjax.losses` function (model, key, x0, process, *, cond, **kwargs); from a
        config, the spec's partial with its options and prediction kind already bound.
      loss_kwargs: further keyword arguments for `loss` (empty for a built spec).
      batches: iterator of dicts of numpy arrays, the global batch on one host.
      data_key: the batch field holding x0 ('image' or 'x').
      example_shape: shape of one example, e.g. (8, 8, 1) or (2,).
      value_range: data range (for writing images), e.g. (-1, 1).
      frozen: models the loss takes by keyword that are not trained, as pytrees (e.g.
        {'teacher': a `diffjax.models.bind` model}); the train step passes them as traced jit
        arguments, so their parameters are never baked into the program.
    """

    init_params: Callable[[Array], PyTree]
    apply: ApplyFn
    process: Process
    loss: Callable[..., tuple[Array, dict]]
    loss_kwargs: dict[str, Any]
    batches: Iterator[dict]
    data_key: str
    example_shape: tuple[int, ...]
    value_range: tuple[float, float] = (-1.0, 1.0)
    reference: Any = None  # optional array of data examples for plots and metrics
    frozen: dict[str, Any] = dataclasses.field(default_factory=dict)
    # params a fresh run starts from (params and EMA) instead of init_params: the teacher's EMA
    # params with config.teacher.init_student; never used when resuming from a checkpoint
    start_params: PyTree | None = None
    # (frozen, key, batch) -> (batch, frozen, cond or None), run first inside the loss (under
    # jit): latent diffusion encodes the images with the frozen autoencoder (which it takes out
    # of `frozen`), a text run drops captions to the null caption; a cond it returns replaces
    # the labels (diffjax.train.latent.make_prepare)
    prepare: Callable | None = None
    # replaces diffjax.train.sampling.make_sampler for the run's grids (same arguments), e.g.
    # a latent run's sampler, which decodes its latents
    make_sampler: Callable | None = None


def drop_labels(key: Array, labels: Array, cond: CondSpec) -> Array:
    """Replace each label by the null class `num_classes` with probability `label_dropout`
    (classifier-free guidance training, Ho & Salimans 2021, Algorithm 1). labels: [B] int."""
    if cond.label_dropout <= 0.0:
        return labels
    drop = jax.random.bernoulli(key, cond.label_dropout, labels.shape)  # [B]
    return jnp.where(drop, jnp.asarray(cond.num_classes, labels.dtype), labels)


# Arguments of a loss that the loss function below fills itself: never from a batch field.
_STANDARD = ("model", "key", "x0", "process", "cond", "t", "teacher", "target_model", "step")


def loss_parameters(loss: Callable) -> dict[str, inspect.Parameter]:
    """The parameters of a loss (or of the function under a `functools.partial`)."""
    return dict(inspect.signature(getattr(loss, "func", loss)).parameters)


def make_loss_fn(c: Components, cond: CondSpec) -> Callable:
    """(params, key, batch, *, ema_params=None, frozen=None) -> (loss, aux): the configured
    loss with the model bound to params, dropout keyed from `key`, and labels dropped to the
    null class when conditional.

    Besides x0 (`batch[c.data_key]`) and the labels, the loss gets
      - every other batch field that names one of its parameters (e.g. a pair set's 'noise'
        for `reflow` and `flow_distillation`);
      - `frozen` (default `c.frozen`), e.g. teacher=, as traced pytrees;
      - target_model= when it takes one: the model at `ema_params` under stop_gradient (the
        consistency models' EMA target network, Song et al. 2023, so config.ema.decay is mu,
        or mu(k) with `EmaSpec.schedule`);
      - step= (the train state's step, traced; 0 when loss_fn is called without it) when it
        takes one, e.g. consistency training's N(k) schedule; any other loss never sees it
        (its trace is unchanged).
    """
    params_of_loss = loss_parameters(c.loss)
    wants_target = "target_model" in params_of_loss
    wants_step = "step" in params_of_loss
    passthrough = set(params_of_loss) - set(_STANDARD)

    def loss_fn(params, key, batch, *, ema_params=None, frozen=None, step=None):
        label_key, dropout_key, loss_key = jax.random.split(key, 3)
        frozen = c.frozen if frozen is None else frozen
        prepared = None
        if c.prepare is not None:  # its key is new, so the other streams stay as they were
            batch, frozen, prepared = c.prepare(frozen, jax.random.fold_in(label_key, 1), batch)
        labels = prepared
        if cond.class_conditional and prepared is None:
            labels = drop_labels(label_key, jnp.asarray(batch["label"], jnp.int32), cond)

        def model(x_t, t, cond=None):
            return c.apply(params, x_t, t, cond, train=True, key=dropout_key)

        kwargs = {**c.loss_kwargs, **frozen}
        for name in sorted(passthrough & (set(batch) - {c.data_key, "label"})):
            kwargs.setdefault(name, batch[name])
        if wants_target:
            if ema_params is None:
                raise ValueError("this loss takes target_model: pass ema_params= to loss_fn")
            target_params = jax.lax.stop_gradient(ema_params)

            def target_model(x_t, t, cond=None):
                return c.apply(target_params, x_t, t, cond, train=False, key=None)

            kwargs["target_model"] = target_model
        if wants_step:  # a call outside the train step (no step=) reads as step 0
            kwargs["step"] = jnp.zeros((), jnp.int32) if step is None else step
        return c.loss(model, loss_key, batch[c.data_key], c.process, cond=labels, **kwargs)

    return loss_fn
