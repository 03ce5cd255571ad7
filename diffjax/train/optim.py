"""The optimiser (Adam/AdamW, linear warm-up, global-norm clipping) and the parameter EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from diffjax.train.spec import EmaSpec, OptimSpec
from diffjax.typing import Array, PyTree


def learning_rate_schedule(spec: OptimSpec) -> optax.Schedule:
    """lr(n) = learning_rate * min(1, (n + 1) / warmup_steps): linear warm-up, then constant
    (Ho et al. 2020, App. B: 5000 warm-up steps to 2e-4)."""
    peak, warmup = float(spec.learning_rate), int(spec.warmup_steps)
    if warmup <= 0:
        return optax.constant_schedule(peak)

    def schedule(count):
        return peak * jnp.minimum(1.0, (count + 1.0) / warmup)

    return schedule


def make_optimizer(spec: OptimSpec) -> optax.GradientTransformation:
    """Clip by global norm (if grad_clip > 0), then Adam or AdamW with the warm-up schedule.

    References:
      Kingma & Ba 2015 (Adam); Loshchilov & Hutter 2019 (AdamW, decoupled weight decay).
    """
    lr = learning_rate_schedule(spec)
    if spec.name == "adamw":
        opt = optax.adamw(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps, weight_decay=spec.weight_decay)
    elif spec.name == "adam":
        opt = optax.adam(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps)
    else:
        raise ValueError(f"unknown optimizer {spec.name!r}; expected 'adam' or 'adamw'")
    if spec.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(spec.grad_clip), opt)
    return opt


def ema_decay(spec: EmaSpec, step: Array) -> Array:
    """The decay used for the update that produces step `step` (0-based count of updates).

    With warm-up, decay_n = min(decay, (1 + n) / (10 + n)) (the num_updates rule of
    tf.train.ExponentialMovingAverage), so early averages forget the random init quickly.
    """
    decay = jnp.asarray(spec.decay, jnp.float32)
    if not spec.warmup:
        return decay
    n = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema_params: PyTree, params: PyTree, decay: Array) -> PyTree:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
