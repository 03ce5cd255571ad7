"""Forward processes x_t = alpha(t) x0 + sigma(t) eps as frozen, hashable dataclasses.

Each process is usable as a static jit argument. Methods broadcast over arrays of t.
Time derivatives of alpha and sigma are closed forms where the paper gives one and
`jax.jvp` otherwise; `sde(t)` returns (f, g2) of dx = f x dt + g dW with the same marginals:
f = d log alpha / dt and g2 = d sigma^2 / dt - 2 f sigma^2 (Kingma et al. 2021, App. A;
Song et al. 2021, eqs. 29-30 for VP/VE/sub-VP).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import schedules
from diffjax.checks import check_time
from diffjax.typing import Array, ArrayLike

# log-SNR is clipped to this range wherever it is reported, so it stays finite at t = 0 and 1.
LOG_SNR_LIMIT = 40.0
# Derivatives (d_alpha, d_sigma, sde) of processes that are singular at an end point
# (e.g. rectified flow's f = -1 / (1 - t)) are evaluated at t clipped into [eps, 1 - eps].
DERIVATIVE_T_EPS = 1e-6


def _as_time(t: ArrayLike) -> Array:
    check_time(t)
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.float32)


def _clip_t(t: Array) -> Array:
    return jnp.clip(t, DERIVATIVE_T_EPS, 1.0 - DERIVATIVE_T_EPS)


class Process:
    """Base class: subclasses define `_alpha` and `_sigma` (and may override the derivatives)."""

    prior_std: float = 1.0

    # --- marginal coefficients -------------------------------------------------------------
    def alpha(self, t: ArrayLike) -> Array:
        return self._alpha(_as_time(t))

    def sigma(self, t: ArrayLike) -> Array:
        return self._sigma(_as_time(t))

    def log_snr(self, t: ArrayLike) -> Array:
        """log(alpha^2 / sigma^2), clipped to +-LOG_SNR_LIMIT (it is +inf at t = 0 for VP)."""
        t = _as_time(t)
        tiny = jnp.finfo(t.dtype).tiny
        raw = 2.0 * (
            jnp.log(jnp.maximum(self._alpha(t), tiny)) - jnp.log(jnp.maximum(self._sigma(t), tiny))
        )
        return jnp.clip(raw, -LOG_SNR_LIMIT, LOG_SNR_LIMIT)

    # --- time derivatives ------------------------------------------------------------------
    def d_alpha(self, t: ArrayLike) -> Array:
        t = _clip_t(_as_time(t))
        return jax.jvp(self._alpha, (t,), (jnp.ones_like(t),))[1]

    def d_sigma(self, t: ArrayLike) -> Array:
        t = _clip_t(_as_time(t))
        return jax.jvp(self._sigma, (t,), (jnp.ones_like(t),))[1]

    def sde(self, t: ArrayLike) -> tuple[Array, Array]:
        """(f, g2): drift coefficient and squared diffusion of the forward SDE at t."""
        t = _clip_t(_as_time(t))
        alpha, sigma = self._alpha(t), self._sigma(t)
        f = self.d_alpha(t) / alpha
        g2 = 2.0 * sigma * self.d_sigma(t) - 2.0 * f * sigma**2
        return f, g2

    def d_log_snr(self, t: ArrayLike) -> Array:
        """d log_snr / dt = 2 (alpha'/alpha - sigma'/sigma) = -g2 / sigma^2 (always <= 0)."""
        t = _clip_t(_as_time(t))
        _, g2 = self.sde(t)
        return -g2 / self._sigma(t) ** 2

    # --- prior at t = 1 --------------------------------------------------------------------
    def prior_sample(self, key: Array, shape, dtype=jnp.float32) -> Array:
        return self.prior_std * jax.random.normal(key, shape, dtype)

    def prior_logp(self, x: ArrayLike) -> Array:
        """log N(x; 0, prior_std^2 I), summed over all but the batch axis. Returns [B]."""
        x = jnp.asarray(x)
        d = math.prod(x.shape[1:])
        sq = jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1)
        return -0.5 * sq / self.prior_std**2 - d * (
            math.log(self.prior_std) + 0.5 * math.log(2 * math.pi)
        )


def _int_beta(beta_min: float, beta_max: float, t: Array) -> Array:
    return beta_min * t + 0.5 * (beta_max - beta_min) * t**2


@dataclasses.dataclass(frozen=True)
class VP(Process):
    """Variance-preserving SDE (Song et al. 2021, eq. 11), beta(t) = b_min + t (b_max - b_min):
    alpha = exp(-1/2 int_0^t beta), sigma = sqrt(1 - alpha^2); f = -beta/2, g2 = beta."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, t: ArrayLike) -> Array:
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def _alpha(self, t):
        return jnp.exp(-0.5 * _int_beta(self.beta_min, self.beta_max, t))

    def _sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-_int_beta(self.beta_min, self.beta_max, t)))

    def sde(self, t):
        beta = self.beta(_as_time(t))
        return -0.5 * beta, beta


@dataclasses.dataclass(frozen=True)
class SubVP(VP):
    """sub-VP SDE (Song et al. 2021, eq. 17): alpha as VP, sigma = 1 - alpha^2;
    f = -beta/2, g2 = beta (1 - exp(-2 int_0^t beta))."""

    def _sigma(self, t):
        return -jnp.expm1(-_int_beta(self.beta_min, self.beta_max, t))

    def sde(self, t):
        t = _as_time(t)
        beta = self.beta(t)
        return -0.5 * beta, -beta * jnp.expm1(-2.0 * _int_beta(self.beta_min, self.beta_max, t))


@dataclasses.dataclass(frozen=True)
class VE(Process):
    """Variance-exploding SDE (Song et al. 2021, eq. 9): alpha = 1,
    sigma = sigma_min (sigma_max / sigma_min)^t; f = 0, g2 = 2 sigma^2 log(sigma_max / sigma_min).
    Prior N(0, sigma_max^2 I)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _alpha(self, t):
        return jnp.ones_like(t)

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, t):
        sigma = self._sigma(_as_time(t))
        return jnp.zeros_like(sigma), 2.0 * sigma**2 * math.log(self.sigma_max / self.sigma_min)


@dataclasses.dataclass(frozen=True)
class LogSNRProcess(Process):
    """A variance-preserving process given by its log-SNR lambda(t) (Kingma et al. 2021):
    alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda);
    f = lambda' sigma^2 / 2, g2 = -lambda' sigma^2."""

    def _log_snr(self, t):
        raise NotImplementedError

    def _alpha(self, t):
        return jnp.sqrt(jax.nn.sigmoid(self._log_snr(t)))

    def _sigma(self, t):
        return jnp.sqrt(jax.nn.sigmoid(-self._log_snr(t)))

    def log_snr(self, t):
        return jnp.clip(self._log_snr(_as_time(t)), -LOG_SNR_LIMIT, LOG_SNR_LIMIT)

    def d_log_snr(self, t):
        t = _as_time(t)
        return jax.jvp(self._log_snr, (t,), (jnp.ones_like(t),))[1]

    def sde(self, t):
        t = _as_time(t)
        dl, sigma2 = self.d_log_snr(t), jax.nn.sigmoid(-self._log_snr(t))
        return 0.5 * dl * sigma2, -dl * sigma2

    def d_alpha(self, t):
        t = _as_time(t)
        return 0.5 * self._alpha(t) * jax.nn.sigmoid(-self._log_snr(t)) * self.d_log_snr(t)

    def d_sigma(self, t):
        t = _as_time(t)
        return -0.5 * self._sigma(t) * jax.nn.sigmoid(self._log_snr(t)) * self.d_log_snr(t)


@dataclasses.dataclass(frozen=True)
class Cosine(LogSNRProcess):
    """Nichol & Dhariwal (2021) cosine schedule in continuous time:
    alpha-bar(t) = cos^2(u_t) / cos^2(u_0), u_t = (t + s) / (1 + s) * pi / 2, so
    SNR = cos^2 u_t / (sin(u_t - u_0) sin(u_t + u_0));
    log-SNR clipped to [log_snr_min, log_snr_max]."""

    s: float = 0.008
    log_snr_min: float = -20.0
    log_snr_max: float = 20.0

    def _log_snr(self, t):
        u0 = self.s / (1.0 + self.s) * math.pi / 2
        u = (t + self.s) / (1.0 + self.s) * math.pi / 2
        tiny = jnp.finfo(jnp.result_type(t, jnp.float32)).tiny
        raw = (
            2.0 * jnp.log(jnp.maximum(jnp.cos(u), tiny))
            - jnp.log(jnp.maximum(jnp.sin(u - u0), tiny))
            - jnp.log(jnp.maximum(jnp.sin(u + u0), tiny))
        )
        return jnp.clip(raw, self.log_snr_min, self.log_snr_max)


@dataclasses.dataclass(frozen=True)
class Discrete(Process):
    """A T-step DDPM chain on the grid t_n = n / T with alpha_n = sqrt(alpha-bar_n),
    sigma_n = sqrt(1 - alpha-bar_n) (Ho et al. 2020, eq. 4). Between grid points alpha is
    interpolated linearly in t (sigma = sqrt(1 - alpha^2)), which keeps alpha-bar_T = 0
    (zero terminal SNR) exact. Prior N(0, I)."""

    betas: tuple  # [T] beta_1 .. beta_T, float64 values

    def __post_init__(self):
        object.__setattr__(
            self, "betas", tuple(float(b) for b in schedules.check_betas(self.betas))
        )

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """alpha-bar_n, n = 0..T, float64 numpy [T + 1]."""
        return schedules.alphas_cumprod(self.betas)

    def _one_minus_alpha(self, t):
        # 1 - alpha is interpolated from a float64 table of (1 - abar) / (1 + sqrt(abar)), so that
        # sigma = sqrt((1 - alpha)(1 + alpha)) keeps full relative precision near t = 0, where
        # alpha rounded to float32 would lose it (sigma_1 = 0.01 would come out as 0.0100008).
        abar = self.alphas_cumprod
        grid = (1.0 - abar) / (1.0 + np.sqrt(abar))
        knots = jnp.linspace(0.0, 1.0, self.num_steps + 1, dtype=t.dtype)
        return jnp.interp(t, knots, grid.astype(t.dtype))

    def _alpha(self, t):
        return 1.0 - self._one_minus_alpha(t)

    def _sigma(self, t):
        oma = self._one_minus_alpha(t)
        return jnp.sqrt(jnp.clip(oma * (2.0 - oma), 0.0, 1.0))

    def d_alpha(self, t):
        # piecewise-constant slope of the linear interpolation (right-continuous; t = 1 takes
        # the last interval)
        t = _as_time(t)
        grid = np.sqrt(self.alphas_cumprod)
        slopes = np.diff(grid) * self.num_steps
        n = jnp.clip(jnp.floor(t * self.num_steps).astype(jnp.int32), 0, self.num_steps - 1)
        return jnp.asarray(slopes, t.dtype)[n]

    def d_sigma(self, t):
        t = _clip_t(_as_time(t))
        return -self._alpha(t) * self.d_alpha(t) / self._sigma(t)

    def sde(self, t):
        t = _clip_t(_as_time(t))
        alpha, sigma = self._alpha(t), self._sigma(t)
        f = self.d_alpha(t) / jnp.maximum(alpha, jnp.finfo(t.dtype).tiny)
        g2 = 2.0 * sigma * self.d_sigma(t) - 2.0 * f * sigma**2
        return f, g2


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(Process):
    """Rectified flow (Liu et al. 2023) in diffjax's direction: alpha = 1 - t, sigma = t.
    (Papers with noise at t = 0 map by t -> 1 - t.)"""

    def _alpha(self, t):
        return 1.0 - t

    def _sigma(self, t):
        return t

    def d_alpha(self, t):
        return -jnp.ones_like(_as_time(t))

    def d_sigma(self, t):
        return jnp.ones_like(_as_time(t))


@dataclasses.dataclass(frozen=True)
class OTFlow(Process):
    """Conditional OT path of Lipman et al. (2023), eq. 20, mapped by t -> 1 - t:
    alpha = 1 - t, sigma = sigma_min + (1 - sigma_min) t."""

    sigma_min: float = 1e-4

    def _alpha(self, t):
        return 1.0 - t

    def _sigma(self, t):
        return self.sigma_min + (1.0 - self.sigma_min) * t

    def d_alpha(self, t):
        return -jnp.ones_like(_as_time(t))

    def d_sigma(self, t):
        return jnp.full_like(_as_time(t), 1.0 - self.sigma_min)


@dataclasses.dataclass(frozen=True)
class Trig(Process):
    """Trigonometric (variance-preserving) interpolant:
    alpha = cos(pi t / 2), sigma = sin(pi t / 2)."""

    def _alpha(self, t):
        return jnp.sin(0.5 * math.pi * (1.0 - t))  # = cos(pi t / 2), exactly 0 at t = 1

    def _sigma(self, t):
        return jnp.sin(0.5 * math.pi * t)

    def d_alpha(self, t):
        return -0.5 * math.pi * self._sigma(_as_time(t))

    def d_sigma(self, t):
        return 0.5 * math.pi * self._alpha(_as_time(t))


def vp(beta_min: float = 0.1, beta_max: float = 20.0) -> VP:
    _check_positive(beta_min=beta_min, beta_max=beta_max)
    return VP(float(beta_min), float(beta_max))


def subvp(beta_min: float = 0.1, beta_max: float = 20.0) -> SubVP:
    _check_positive(beta_min=beta_min, beta_max=beta_max)
    return SubVP(float(beta_min), float(beta_max))


def ve(sigma_min: float = 0.01, sigma_max: float = 50.0) -> VE:
    _check_positive(sigma_min=sigma_min, sigma_max=sigma_max)
    if not sigma_max > sigma_min:
        raise ValueError(f"ve needs sigma_max > sigma_min; got {sigma_min=}, {sigma_max=}")
    return VE(float(sigma_min), float(sigma_max))


def cosine(s: float = 0.008, log_snr_min: float = -20.0, log_snr_max: float = 20.0) -> Cosine:
    _check_positive(s=s)
    return Cosine(float(s), float(log_snr_min), float(log_snr_max))


def discrete(betas) -> Discrete:
    return Discrete(tuple(np.asarray(betas, dtype=np.float64).ravel()) if np.ndim(betas) else betas)


def rectified_flow() -> RectifiedFlow:
    return RectifiedFlow()


def ot_flow(sigma_min: float = 1e-4) -> OTFlow:
    if not 0.0 <= sigma_min < 1.0:
        raise ValueError(f"ot_flow needs 0 <= sigma_min < 1; got sigma_min = {sigma_min!r}")
    return OTFlow(float(sigma_min))


def trig() -> Trig:
    return Trig()


def _check_positive(**values) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number; got {name} = {v!r}")


PROCESSES = {
    "vp": vp,
    "subvp": subvp,
    "ve": ve,
    "cosine": cosine,
    "rectified_flow": rectified_flow,
    "ot_flow": ot_flow,
    "trig": trig,
}


def get_process(name: str, **kwargs) -> Process:
    """A process by name; `discrete` takes `schedule` ('linear', ...), `T`, `zero_terminal_snr`."""
    if name == "discrete":
        schedule = kwargs.pop("schedule", "linear")
        T = kwargs.pop("T", 1000)
        return discrete(schedules.get_betas(schedule, T, **kwargs))
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; expected one of {(*PROCESSES, 'discrete')}")
    return PROCESSES[name](**kwargs)
