"""Inpainting by replacement (Song et al. 2021, App. I.2) with RePaint resampling
(Lugmayr et al. 2022): the known region is re-noised to the current time and pasted in after
every reverse step; `jumps` > 1 re-noises the merged state back one step and repeats it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.checks import check_choice, check_same_shape, check_time
from diffjax.kernels import bcast, posterior, transition
from diffjax.processes import Discrete, Process
from diffjax.targets import to_x0_eps
from diffjax.typing import Array, ModelFn

INPAINT_SOLVERS = ("ddpm", "ddim")


def _reverse_step(key, model, process, prediction, solver, x_t, s, t):
    """One reverse step t -> s from the model's (x0, eps) estimate: DDPM's posterior sample
    (Ho et al. 2020, eq. 7, 'small' variance) or the deterministic DDIM update (eta = 0)."""
    x0_hat, eps_hat = to_x0_eps(model(x_t, t), prediction, x_t, t, process)
    if solver == "ddim":
        return bcast(process.alpha(s), x_t) * x0_hat + bcast(process.sigma(s), x_t) * eps_hat
    mean, var = posterior(process, x0_hat, x_t, s, t)
    return mean + jnp.sqrt(var) * jax.random.normal(key, x_t.shape, x_t.dtype)


def inpaint(
    key: Array,
    model: ModelFn,
    process: Process,
    known: Array,
    mask: Array,
    *,
    solver: str = "ddpm",
    steps: int = 100,
    prediction: str = "eps",
    jumps: int = 1,
    t_min: float | None = None,
) -> Array:
    """Fill in the unknown region of `known` (where mask == 0) with samples from the model.

    Args:
      key: PRNG key.
      model: `model(x_t, t) -> prediction` of kind `prediction`.
      known: images [B, ...] whose masked-in part is kept.
      mask: 1 where `known` is known, 0 where it is to be generated; broadcastable to `known`.
      solver: 'ddpm' (ancestral) or 'ddim' (deterministic) reverse steps.
      steps: intervals of the uniform time grid from 1 to t_min.
      jumps: RePaint resampling rounds per step (1 = plain replacement).
      t_min: last time (default 0 for a Discrete chain, 1e-3 otherwise); the known region is
        pasted in exactly at the end.
    Returns:
      [B, ...] samples equal to `known` where mask == 1.
    """
    check_choice(solver, INPAINT_SOLVERS, "inpainting solver")
    known = jnp.asarray(known)
    mask = jnp.broadcast_to(jnp.asarray(mask, known.dtype), known.shape)
    check_same_shape(known, mask, "known and mask")
    if int(steps) < 1 or int(jumps) < 1:
        raise ValueError(f"steps and jumps must be >= 1; got steps={steps}, jumps={jumps}")
    t_min = (0.0 if isinstance(process, Discrete) else 1e-3) if t_min is None else t_min
    check_time(t_min, "t_min")
    grid = jnp.linspace(1.0, t_min, int(steps) + 1, dtype=known.dtype)
    B = known.shape[0]

    def noised_known(k, s):
        eps = jax.random.normal(k, known.shape, known.dtype)
        return bcast(process.alpha(s), known) * known + bcast(process.sigma(s), known) * eps

    def one_round(carry, k):
        x_t, t, s = carry
        k_step, k_known, k_back = jax.random.split(k, 3)
        x_s = _reverse_step(k_step, model, process, prediction, solver, x_t, s, t)
        x_s = mask * noised_known(k_known, s) + (1.0 - mask) * x_s
        # RePaint: diffuse the merged state back to t with q(x_t | x_s), used by the next round
        a_ts, v_ts = transition(process, s, t)
        back = bcast(a_ts, x_s) * x_s + bcast(jnp.sqrt(v_ts), x_s) * jax.random.normal(
            k_back, x_s.shape, x_s.dtype
        )
        return (back, t, s), x_s

    def step(x_t, inp):
        k, t_val, s_val = inp
        t, s = jnp.full((B,), t_val), jnp.full((B,), s_val)
        _, rounds = jax.lax.scan(one_round, (x_t, t, s), jax.random.split(k, int(jumps)))
        return rounds[-1], None

    prior_key, loop_key = jax.random.split(key)
    x = process.prior_sample(prior_key, known.shape, known.dtype)
    keys = jax.random.split(loop_key, int(steps))
    x, _ = jax.lax.scan(step, x, (keys, grid[:-1], grid[1:]))
    return mask * known + (1.0 - mask) * x
