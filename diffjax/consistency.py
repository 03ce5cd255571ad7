"""Consistency models (Song et al. 2023): the skip/out parameterisation in EDM's sigma space,
the Karras discretisation and its N(k) / mu(k) schedules, consistency distillation (CD) from a
diffusion model and consistency training (CT) from data. Sampling is `sample(...,
solver='consistency', prediction='x0')` on `as_model(f, process)`.

Sigma space: a diffjax process x_t = alpha_t x0 + sigma_t eps is, after dividing by alpha_t,
x = x_t / alpha_t = x0 + s eps with the noise level s = sigma_t / alpha_t (Karras et al. 2022,
Sec. 2): EDM's VE form. A consistency function f(x, s) maps every point of a probability-flow
ODE trajectory to its end at s = sigma_min, with f(x, sigma_min) = x exactly.

Published anchor (the paper's number, not reproduced here): Song et al. 2023 report one-step
FID 3.55 on CIFAR-10 (their abstract; checked with the search tool, 2026-12-02), their best
one-step result, from consistency distillation with the LPIPS metric (that the 3.55 row is CD
with LPIPS is not confirmed against the paper's table here).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import targets
from diffjax.losses.common import check_data, finish, mean_over_data
from diffjax.processes import Process
from diffjax.samplers.grid import t_of_log_snr
from diffjax.typing import Array, ArrayLike, ModelFn

SigmaFn = Callable[[Array, Array], Array]  # f(x [B, ...], sigma [B]) -> [B, ...]


def check_sigma_min(sigma_min) -> float:
    if sigma_min is None or not (isinstance(sigma_min, (int, float)) and sigma_min > 0):
        raise ValueError(
            "a consistency model needs its boundary noise level sigma_min > 0 (f(x, sigma_min) "
            f"= x; Song et al. 2023 use 0.002); got sigma_min = {sigma_min!r}"
        )
    return float(sigma_min)


def _b(c: Array, x: Array) -> Array:
    return jnp.reshape(c, c.shape + (1,) * (x.ndim - c.ndim))


def c_skip(sigma: ArrayLike, sigma_min: float, sigma_data: float = 0.5) -> Array:
    """sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2): exactly 1 at sigma_min."""
    return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)


def c_out(sigma: ArrayLike, sigma_min: float, sigma_data: float = 0.5) -> Array:
    """sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2): exactly 0 at sigma_min."""
    return sigma_data * (sigma - sigma_min) / jnp.sqrt(sigma_data**2 + sigma**2)


def c_in(sigma: ArrayLike, sigma_data: float = 0.5) -> Array:
    """EDM's input scaling 1 / sqrt(sigma^2 + sigma_data^2) (unit-variance network input)."""
    return 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)


def parameterize(net: SigmaFn, *, sigma_min: float | None = None, sigma_data: float = 0.5):
    """The consistency function f(x, s) = c_skip(s) x + c_out(s) net(c_in(s) x, s).

    Args:
      net: the free network F(x_in [B, ...], sigma [B]) -> [B, ...].
      sigma_min: the boundary noise level (required; f(x, sigma_min) = x exactly).
      sigma_data: the data's standard deviation (0.5 in EDM and Song et al.).
    Returns: f(x [B, ...], sigma [B]) -> [B, ...].
    References: Song et al. 2023, "Consistency Models", eq. 5 and App. C.
    """
    sigma_min = check_sigma_min(sigma_min)

    def f(x: Array, sigma: Array) -> Array:
        skip, out = c_skip(sigma, sigma_min, sigma_data), c_out(sigma, sigma_min, sigma_data)
        return _b(skip, x) * x + _b(out, x) * net(_b(c_in(sigma, sigma_data), x) * x, sigma)

    return f


def karras_sigmas(n: int, sigma_min: float | None, sigma_max: float, rho: float = 7.0):
    """The N noise levels s_i = (s_min^(1/rho) + (i - 1)/(N - 1) (s_max^(1/rho) -
    s_min^(1/rho)))^rho, i = 1..N, ascending, float64 numpy [N] (Karras et al. 2022, eq. 5)."""
    sigma_min = check_sigma_min(sigma_min)
    if int(n) != n or n < 2 or not sigma_max > sigma_min:
        raise ValueError(
            f"need an integer n >= 2 and sigma_max > sigma_min; got {n=}, {sigma_max=}"
        )
    u = np.linspace(0.0, 1.0, int(n))
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + u * (hi - lo)) ** rho


def num_scales(k: int, total: int, s0: int = 2, s1: int = 150) -> int:
    """N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1, the CT discretisation at
    step k of K (Song et al. 2023, App. C; CIFAR-10 CT: s0 = 2, s1 = 150)."""
    return int(math.ceil(math.sqrt(k / total * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1)


def target_ema_decay(k: int, total: int, s0: int = 2, s1: int = 150, mu0: float = 0.9) -> float:
    """mu(k) = exp(s0 log mu0 / N(k)), the CT target network's EMA decay (App. C)."""
    return math.exp(s0 * math.log(mu0) / num_scales(k, total, s0, s1))


@dataclasses.dataclass(frozen=True)
class CTSchedule:
    """The CT schedules N(k) and mu(k) as functions of a traced step k (Song et al. 2023,
    Algorithm 3 and App. C; CIFAR-10 CT: s0 = 2, s1 = 150, mu0 = 0.9, K = 800k):

      N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1,  mu(k) = exp(s0 log mu0 / N(k)),

    so N(0) = s0 and N(K) = s1 + 1. N is a step function of k: its change points k_m (the first
    k with N(k) >= m) are found once on the host from `num_scales` (float64), and under jit
    N(k) = s0 + #{m : k >= k_m}, so the traced N equals `num_scales(k, K, s0, s1)` exactly for
    every 0 <= k <= K (a float32 ceil(sqrt(.)) can be one off where the root is an integer);
    steps past K keep N = s1 + 1. mu(k) is read from a float32 table of mu(N), N = s0..s1 + 1
    (computed in float64, as `target_ema_decay`).
    (The released code divides by N(k) - 1 instead of N(k) in mu; this follows the paper.)
    """

    total_steps: int  # K
    s0: int = 2
    s1: int = 150
    mu0: float = 0.9

    def __post_init__(self):
        s0, s1, total, mu0 = self.s0, self.s1, self.total_steps, self.mu0
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (s0, s1, total))
        if not (ints and s0 >= 2 and s1 >= s0 and total >= 1):
            raise ValueError(
                "the CT schedule needs integers s0 >= 2 (N(0) = s0 grid levels), s1 >= s0 and "
                f"total_steps K >= 1; got s0={s0!r}, s1={s1!r}, total_steps={total!r}"
            )
        if not (isinstance(mu0, (int, float)) and not isinstance(mu0, bool) and 0 < mu0 < 1):
            raise ValueError(f"the CT schedule needs an EMA decay 0 < mu0 < 1; got mu0={mu0!r}")

    def change_points(self) -> np.ndarray:
        """k_m, the first step with N(k) >= m, for m = s0 + 1 .. s1 + 1 (int64 [s1 - s0 + 1])."""
        args = (self.total_steps, self.s0, self.s1)
        points = []
        for m in range(self.s0 + 1, self.s1 + 2):
            lo, hi = 0, self.total_steps  # N(lo) < m <= N(hi) (N is non-decreasing in k)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if num_scales(mid, *args) >= m else (mid, hi)
            points.append(hi)
        return np.asarray(points, np.int64)

    def _index(self, step: ArrayLike) -> Array:
        points = jnp.asarray(self.change_points(), jnp.int32)
        return jnp.sum(jnp.asarray(step, jnp.int32) >= points).astype(jnp.int32)

    def num_scales(self, step: ArrayLike) -> Array:
        """N(step), int32 [] (traceable)."""
        return self.s0 + self._index(step)

    def ema_decay(self, step: ArrayLike) -> Array:
        """mu(step) = exp(s0 log mu0 / N(step)), float32 [] (traceable)."""
        log_mu0 = math.log(self.mu0)
        table = [math.exp(self.s0 * log_mu0 / m) for m in range(self.s0, self.s1 + 2)]
        return jnp.asarray(table, jnp.float32)[self._index(step)]


def karras_level(i: ArrayLike, n: ArrayLike, sigma_min: float, sigma_max: float,
                 rho: float = 7.0) -> Array:  # fmt: skip
    """The i-th of the N ascending Karras levels in closed form, s_i = (s_min^(1/rho) + i / (N -
    1) (s_max^(1/rho) - s_min^(1/rho)))^rho, i = 0..N-1, for traced i and N (N >= 2: the
    caller's), float32; `karras_sigmas(N)[i]` without building the grid (Karras et al. 2022,
    eq. 5), so N may change from step to step under one compiled program."""
    sigma_min = check_sigma_min(sigma_min)
    if not sigma_max > sigma_min:
        raise ValueError(f"need sigma_max > sigma_min = {sigma_min}; got {sigma_max=}")
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    u = jnp.asarray(i, jnp.float32) / (jnp.asarray(n, jnp.float32) - 1.0)
    return (lo + u * (hi - lo)) ** rho


def ema_update(target, online, mu: float):
    """theta^- <- mu theta^- + (1 - mu) stop_gradient(theta) (Song et al. 2023, Alg. 2, 3)."""
    return jax.tree.map(lambda a, b: mu * a + (1.0 - mu) * jax.lax.stop_gradient(b), target, online)


def sigma_of_t(process: Process, t: ArrayLike) -> Array:
    """The EDM noise level s = sigma_t / alpha_t of a process at t."""
    return process.sigma(t) / process.alpha(t)


def t_of_sigma(process: Process, sigma: ArrayLike) -> Array:
    """The t with sigma_t / alpha_t = sigma (bisection on the log-SNR, -2 log sigma)."""
    return t_of_log_snr(process, -2.0 * jnp.log(jnp.asarray(sigma)))


def denoiser(model: ModelFn, process: Process, prediction: str) -> SigmaFn:
    """A diffjax model as EDM's denoiser D(x, s) = E[x0 | x_t = alpha_t x] at t = t(s)."""

    def d(x: Array, sigma: Array) -> Array:
        t = t_of_sigma(process, sigma).astype(x.dtype)
        x_t = _b(process.alpha(t), x) * x
        return targets.convert(model(x_t, t), prediction, "x0", x_t, t, process)

    return d


def as_model(f: SigmaFn, process: Process) -> ModelFn:
    """A consistency function as a diffjax x0-model: model(x_t, t) = f(x_t / alpha_t, s_t)."""

    def model(x_t: Array, t: Array) -> Array:
        return f(x_t / _b(process.alpha(t), x_t), sigma_of_t(process, t))

    return model


@dataclasses.dataclass(frozen=True)
class ConsistencyModule:
    """A backbone module as a consistency function in diffjax time (an x0-model):

      model(x_t, t) = c_skip(s) x + c_out(s) F(c_in(s) x, t),  x = x_t / alpha_t,
      s = sigma_t / alpha_t,

    so that model(alpha_t x, t) = f(x, s) (the view of `diffjax.losses.consistency`) and
    f(x, sigma_min) = x exactly. F is the backbone (a Flax `UNet`, `DiT` or `MLP`, or anything
    with their `init(key, x_t, t, cond)` / `apply(variables, x_t, t, cond, train=, rngs=)`);
    it keeps its own time input t. No parameters are added: `init` is the backbone's, so its
    parameter tree (and a checkpoint of it) is the backbone's. Sample with
    `solver='consistency'`, `prediction='x0'` and `sampling_options()`. Built from a config by
    `diffjax.train.spec.build_model` when `config.model.consistency` is set.
    """

    backbone: Any
    process: Process
    sigma_min: float
    sigma_data: float = 0.5
    sigma_max: float | None = None  # the largest trained level; sampling starts at t(sigma_max)

    def __post_init__(self):
        check_sigma_min(self.sigma_min)
        if self.sigma_max is not None and not self.sigma_max > self.sigma_min:
            raise ValueError(
                f"sigma_max must exceed sigma_min = {self.sigma_min}; got {self.sigma_max!r}"
            )

    def sampling_options(self) -> dict[str, float]:
        """`sample(..., solver='consistency')` options of this model: its `sigma_min`, and
        `t_max` = t(sigma_max), the largest trained level (without it the sampler starts at
        t = 1, e.g. sigma = 2.2e4 on the cosine process, far outside the trained range)."""
        options = {"sigma_min": float(self.sigma_min)}
        if self.sigma_max is not None:
            options["t_max"] = float(t_of_sigma(self.process, self.sigma_max))
        return options

    @property
    def dropout(self) -> float:
        return getattr(self.backbone, "dropout", 0.0)

    def init(self, key, x_t, t, cond=None, **kwargs):
        return self.backbone.init(key, x_t, t, cond, **kwargs)

    def apply(self, variables, x_t, t, cond=None, *, train: bool = False, rngs=None):
        alpha = self.process.alpha(t)
        sigma = (self.process.sigma(t) / alpha).astype(x_t.dtype)  # [B]
        x = x_t / _b(alpha, x_t)
        net_in = _b(c_in(sigma, self.sigma_data), x) * x
        out = self.backbone.apply(variables, net_in, t, cond, train=train, rngs=rngs)
        skip = c_skip(sigma, self.sigma_min, self.sigma_data)
        return _b(skip, x) * x + _b(c_out(sigma, self.sigma_min, self.sigma_data), x) * out


def _pair(key, x0, sigmas):
    sigmas = jnp.asarray(sigmas, x0.dtype)
    n_key, z_key = jax.random.split(key)
    n = jax.random.randint(n_key, (x0.shape[0],), 0, sigmas.shape[0] - 1)  # [B] in 0..N-2
    z = jax.random.normal(z_key, x0.shape, x0.dtype)
    return sigmas[n], sigmas[n + 1], z


def consistency_distillation(
    model: SigmaFn, key: Array, x0: ArrayLike, *, target_model: SigmaFn, teacher: SigmaFn,
    sigmas, solver: str = "heun",
) -> tuple[Array, dict]:  # fmt: skip
    """CD loss: E_n mean_d (f_theta(x_{n+1}, s_{n+1}) - f_theta-(x^_n, s_n))^2, with
    x_{n+1} = x0 + s_{n+1} z and x^_n one ODE step of the teacher's dx/ds = (x - D(x, s)) / s
    from s_{n+1} down to s_n (Euler, or Heun's 2nd order, EDM Alg. 1). Squared L2, lambda = 1.

    Args:
      model, target_model: f_theta and the EMA target f_theta- (from `parameterize`); no
        gradient flows through the target.
      key: PRNG key (n and z). x0: data [B, ...] (in sigma space: unscaled data).
      teacher: D(x, s) (`denoiser(model, process, prediction)` of a trained diffusion model).
      sigmas: the ascending noise levels [N] (`karras_sigmas`; N = 18 for CIFAR-10 in the paper).
    Returns: (scalar, aux with 'per_example' [B], 't' = s_{n+1} [B]).
    References: Song et al. 2023, Algorithm 2 and eq. 7.
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun'; got {solver!r}")
    x0 = check_data(x0)
    s, s_next, z = _pair(key, x0, sigmas)
    x_next = x0 + _b(s_next, x0) * z
    h = _b(s - s_next, x0)  # < 0
    d1 = (x_next - teacher(x_next, s_next)) / _b(s_next, x0)
    x_hat = x_next + h * d1
    if solver == "heun":
        x_hat = x_next + 0.5 * h * (d1 + (x_hat - teacher(x_hat, s)) / _b(s, x0))
    target = jax.lax.stop_gradient(target_model(jax.lax.stop_gradient(x_hat), s))
    return finish(mean_over_data((model(x_next, s_next) - target) ** 2), s_next)


def consistency_training(
    model: SigmaFn, key: Array, x0: ArrayLike, *, target_model: SigmaFn, sigmas
) -> tuple[Array, dict]:
    """CT loss: E_n mean_d (f_theta(x0 + s_{n+1} z, s_{n+1}) - f_theta-(x0 + s_n z, s_n))^2:
    CD's Euler step with the unbiased score estimate -(x - x0) / s^2 in place of a teacher.

    Args/Returns: as `consistency_distillation` without a teacher; pair with `num_scales` and
    `target_ema_decay` over training steps (in the training layer: `diffjax.losses.
    consistency.consistency_training(schedule=True)` with `CTSchedule`, in one jitted step).
    References: Song et al. 2023, Algorithm 3 and Theorem 2.
    """
    x0 = check_data(x0)
    s, s_next, z = _pair(key, x0, sigmas)
    target = jax.lax.stop_gradient(target_model(x0 + _b(s, x0) * z, s))
    return finish(mean_over_data((model(x0 + _b(s_next, x0) * z, s_next) - target) ** 2), s_next)
