"""Consistency distillation (CD) and consistency training (CT) as `diffjax.losses` entries:
the registry's interface (model, key, x0, process, *, cond, t) on diffjax models.

The student `model(x_t, t, cond)` and the EMA `target_model` are x0-models whose output is
the consistency function in diffjax time: f(x, s) = model(alpha_t x, t) at the t with
sigma_t / alpha_t = s (the inverse of `diffjax.consistency.as_model`; the boundary condition
f(x, sigma_min) = x is the model's, e.g. through `diffjax.consistency.parameterize`). The pair
of noise levels (s_n, s_{n+1}) is drawn from the Karras grid (`karras_sigmas`), or, with `t`
given, s_{n+1} = sigma_t / alpha_t and s_n the grid level below it. Squared L2, lambda = 1.
The number of levels N may be a traced integer (the levels are then read in closed form), so
consistency training's N(k) schedule runs inside one compiled train step.
The SigmaFn forms are `diffjax.consistency.consistency_distillation` / `_training`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax import consistency as cm  # a module reference: diffjax.consistency imports losses
from diffjax import targets
from diffjax.kernels import bcast
from diffjax.losses.common import call_model, check_data, finish, mean_over_data
from diffjax.processes import Process
from diffjax.typing import Array, ArrayLike, ModelFn


def _levels(key, x0, process, sigmas, t):
    """(s_n [B], s_{n+1} [B], z [B, ...], t [B] of s_{n+1})."""
    sigmas = jnp.asarray(sigmas, x0.dtype)
    n_key, z_key = jax.random.split(key)
    z = jax.random.normal(z_key, x0.shape, x0.dtype)
    if t is None:
        n = jax.random.randint(n_key, x0.shape[:1], 0, sigmas.shape[0] - 1)  # 0..N-2
        s, s_next = sigmas[n], sigmas[n + 1]
        return s, s_next, z, cm.t_of_sigma(process, s_next).astype(x0.dtype)
    t = jnp.asarray(t, x0.dtype)
    s_next = cm.sigma_of_t(process, t)
    below = jnp.clip(jnp.searchsorted(sigmas, s_next) - 1, 0, sigmas.shape[0] - 1)
    return jnp.minimum(sigmas[below], s_next), s_next, z, t


def _draw(key, x0, process, num_scales, sigma_min, sigma_max, rho, t):
    """`_levels` on the Karras grid of `num_scales` levels: a host integer builds the grid (a
    constant of the program, as before); a jax array N (e.g. traced) draws n ~ U{0..N-2}
    (randint with a traced maxval) and reads s_n, s_{n+1} in closed form (`karras_level`), so
    one compiled program serves every N."""
    if not isinstance(num_scales, jax.Array):  # a host number (tracers are jax.Arrays)
        return _levels(key, x0, process, cm.karras_sigmas(num_scales, sigma_min, sigma_max, rho), t)
    if t is not None:
        raise ValueError("t= (a given s_{n+1}) needs a fixed integer num_scales, not a traced N")
    n_levels = jnp.asarray(num_scales, jnp.int32)
    n_key, z_key = jax.random.split(key)
    z = jax.random.normal(z_key, x0.shape, x0.dtype)
    n = jax.random.randint(n_key, x0.shape[:1], 0, n_levels - 1)  # 0..N-2
    s = cm.karras_level(n, n_levels, sigma_min, sigma_max, rho).astype(x0.dtype)
    s_next = cm.karras_level(n + 1, n_levels, sigma_min, sigma_max, rho).astype(x0.dtype)
    return s, s_next, z, cm.t_of_sigma(process, s_next).astype(x0.dtype)


def _f(model, process, cond, x, s, t=None):
    """The consistency function f(x, s) = model(alpha_t x, t) of an x0-model, t = t(s)."""
    t = cm.t_of_sigma(process, s).astype(x.dtype) if t is None else t
    return call_model(model, bcast(process.alpha(t), x) * x, t, cond, x.shape)


def _denoiser(teacher, process, prediction, cond, x, s):
    """EDM's D(x, s) = E[x0 | x_t = alpha_t x] of a diffjax teacher at t = t(s)."""
    t = cm.t_of_sigma(process, s).astype(x.dtype)
    x_t = bcast(process.alpha(t), x) * x
    out = call_model(teacher, x_t, t, cond, x.shape)
    return targets.convert(out, prediction, "x0", x_t, t, process)


def consistency_distillation(
    model: ModelFn,
    key: Array,
    x0: ArrayLike,
    process: Process,
    *,
    teacher: ModelFn,
    target_model: ModelFn,
    teacher_prediction: str = "eps",
    teacher_process: Process | None = None,
    num_scales: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    solver: str = "heun",
    cond=None,
    t: ArrayLike | None = None,
) -> tuple[Array, dict]:
    """CD: mean_d (f_theta(x_{n+1}, s_{n+1}) - f_theta-(x^_n, s_n))^2 with x_{n+1} = x0 +
    s_{n+1} z and x^_n one Euler or Heun step of the teacher's dx/ds = (x - D(x, s)) / s.

    Args:
      model, target_model: x0-models (see the module docstring); no gradient through the target.
      key: PRNG key (n and z). x0: data [B, ...]. process: the student's process.
      teacher: a trained diffusion model of kind `teacher_prediction` on `teacher_process`
        (default `process`). num_scales, sigma_min, sigma_max, rho: the Karras grid (Song et
        al. 2023 use N = 18, 0.002, 80, 7 on CIFAR-10); num_scales may be a traced integer
        N >= 2 (levels in closed form). t: optional times [B] of s_{n+1} (integer N only).
    Returns: (scalar, aux with 'per_example' [B] and 't' [B]).
    References: Song et al. 2023, "Consistency Models", Algorithm 2 and eq. 7.
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun'; got {solver!r}")
    x0 = check_data(x0)
    s, s_next, z, t = _draw(key, x0, process, num_scales, sigma_min, sigma_max, rho, t)
    t_proc = process if teacher_process is None else teacher_process
    d = lambda x, lvl: _denoiser(teacher, t_proc, teacher_prediction, cond, x, lvl)  # noqa: E731
    x_next = x0 + bcast(s_next, x0) * z
    h = bcast(s - s_next, x0)  # <= 0
    d1 = (x_next - d(x_next, s_next)) / bcast(s_next, x0)
    x_hat = x_next + h * d1
    if solver == "heun":
        x_hat = x_next + 0.5 * h * (d1 + (x_hat - d(x_hat, s)) / bcast(s, x0))
    target = jax.lax.stop_gradient(_f(target_model, process, cond, jax.lax.stop_gradient(x_hat), s))
    pred = _f(model, process, cond, x_next, s_next, t)
    return finish(mean_over_data((pred - target) ** 2), t)


def consistency_training(
    model: ModelFn,
    key: Array,
    x0: ArrayLike,
    process: Process,
    *,
    target_model: ModelFn,
    num_scales: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    schedule: bool = False,
    s0: int = 2,
    s1: int = 150,
    total_steps: int | None = None,
    mu0: float = 0.9,
    step: ArrayLike | None = None,
    cond=None,
    t: ArrayLike | None = None,
) -> tuple[Array, dict]:
    """CT: mean_d (f_theta(x0 + s_{n+1} z, s_{n+1}) - f_theta-(x0 + s_n z, s_n))^2 (CD's
    Euler step with the unbiased score estimate in place of a teacher).

    Args/Returns: as `consistency_distillation`, without a teacher; further
      schedule: False (default): the fixed grid of `num_scales` levels. True: the paper's N(k)
        at training step `step` (traced; the training layer passes the run's step):
        N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 with K = total_steps
        (`diffjax.consistency.CTSchedule`; CIFAR-10: s0 = 2, s1 = 150), and aux gets
        'num_scales'. mu0 is the target EMA's mu(k) = exp(s0 log mu0 / N(k)): the training
        layer's EMA update reads it (`diffjax.train.spec` sets `EmaSpec.schedule`), not this
        loss. num_scales is then unused.
    References: Song et al. 2023, Algorithm 3, Theorem 2 and App. C.
    """
    x0 = check_data(x0)
    n_levels = num_scales
    if schedule:
        if step is None or total_steps is None:
            raise ValueError(
                "consistency_training(schedule=True) needs the training step= and total_steps= "
                f"(K of N(k)); got step={step!r}, total_steps={total_steps!r}"
            )
        n_levels = cm.CTSchedule(total_steps, s0, s1, mu0).num_scales(step)
    s, s_next, z, t = _draw(key, x0, process, n_levels, sigma_min, sigma_max, rho, t)
    target = jax.lax.stop_gradient(_f(target_model, process, cond, x0 + bcast(s, x0) * z, s))
    pred = _f(model, process, cond, x0 + bcast(s_next, x0) * z, s_next, t)
    loss, aux = finish(mean_over_data((pred - target) ** 2), t)
    return (loss, {**aux, "num_scales": n_levels}) if schedule else (loss, aux)
