"""Guidance as model-function transformers: each takes a model function and returns one, so it
composes with every sampler, loss-free and jit-compatible.

The returned models are `jax.tree_util.Partial`s over module-level functions: the wrapped model
(a pytree model's arrays), the conditions and the scale are pytree leaves, so `sample` and the
other entry points trace them and new labels, scales or parameters reuse the compiled program.
A plain-function `model` stays a static leaf (hashed by identity)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.checks import check_same_structure
from diffjax.processes import Process
from diffjax.targets import convert
from diffjax.typing import Array, ModelFn, PyTree


def _concat(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


def cfg(model: ModelFn, cond: PyTree, uncond: PyTree, scale: float) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6):

      pred = pred(x_t, t, uncond) + scale * (pred(x_t, t, cond) - pred(x_t, t, uncond))

    scale = 1 is the plain conditional model and scale = 0 the unconditional one (Ho & Salimans'
    w equals scale - 1). A negative prompt is simply the `uncond` argument (its embedding, or the
    null label). The guidance is linear in the prediction, so it is the same for eps, x0, v,
    score and velocity models. Both branches run as one batch of 2B.

    Args:
      model: `model(x_t, t, cond) -> prediction`.
      cond, uncond: pytrees of per-example conditions with leading axis B (labels [B], a context
        [B, L, C], ...), or shared across the batch if the model broadcasts them.
      scale: guidance scale.
    Returns:
      `guided(x_t, t) -> prediction`, a pytree (a `jax.tree_util.Partial`).
    """
    check_same_structure(cond, uncond, "cfg's cond and uncond")  # both go through one batch
    return jax.tree_util.Partial(_cfg, model, cond, uncond, _leaf(scale))


def _leaf(scale):
    """A Python number as a (weakly typed) array leaf, so that it is traced, not static."""
    return jnp.asarray(scale) if isinstance(scale, (int, float)) else scale


def _cfg(model, cond, uncond, scale, x_t: Array, t: Array) -> Array:
    both = model(_concat(x_t, x_t), _concat(t, t), _concat(cond, uncond))
    pred_c, pred_u = jnp.split(both, 2, axis=0)
    return pred_u + scale * (pred_c - pred_u)


def classifier(
    model: ModelFn,
    classifier_logp,
    y: PyTree,
    scale: float,
    *,
    process: Process | None = None,
    prediction: str = "score",
) -> ModelFn:
    """Classifier guidance (Song et al. 2021, eq. 14; Dhariwal & Nichol 2021, Alg. 1-2):

      score_guided(x_t, t) = score(x_t, t) + scale * grad_x log p_phi(y | x_t, t)

    For an eps-model this is eps_guided = eps - scale sigma_t grad log p (Dhariwal & Nichol,
    Alg. 2). Without `process`, `model` must predict the score. With `process` and `prediction`,
    any prediction kind works: it is converted to the score, guided, and converted back.

    Args:
      classifier_logp: `classifier_logp(x_t, t, y) -> [B]` log-probabilities of the labels (a
        plain function, static, or a pytree such as a bound classifier, traced).
      y: the target labels (any pytree the classifier accepts).
    Returns:
      `guided(x_t, t, *cond) -> prediction`, a pytree (a `jax.tree_util.Partial`).
    """
    if process is None and prediction != "score":
        raise ValueError(
            f"classifier guidance of a {prediction!r} model needs `process=` to convert it; "
            "without it the model must predict the score"
        )

    return jax.tree_util.Partial(
        _classifier, model, classifier_logp, y, _leaf(scale), process=process, prediction=prediction
    )


def _classifier(model, classifier_logp, y, scale, x_t, t, *cond, process, prediction) -> Array:
    grad = jax.grad(lambda x: jnp.sum(classifier_logp(x, t, y)))(x_t)
    pred = model(x_t, t, *cond)
    if process is None:
        return pred + scale * grad
    score = convert(pred, prediction, "score", x_t, t, process)
    return convert(score + scale * grad, "score", prediction, x_t, t, process)
