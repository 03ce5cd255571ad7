"""Forward processes x_t = alpha(t) x0 + sigma(t) eps as frozen, hashable dataclasses.

Each process is usable as a static jit argument. Methods broadcast over arrays of t.
Time derivatives of alpha and sigma are closed forms where the paper gives one and
`jax.jvp` otherwise; `sde(t)` returns (f, g2) of dx = f x dt + g dW with the same marginals:
f = d log alpha / dt and g2 = d sigma^2 / dt - 2 f sigma^2 (Kingma et al. 2021, App. A;
Song et al. 2021, eqs. 29-30 for VP/VE/sub-VP).

What is true of a process lives on it: `num_steps` (T of a discrete chain, else None), the
end-point facts `alpha_vanishes_at_1` and `sigma_vanishes_at_0`, the default time ranges of
sampling (`sample_t_min`, `sample_t_max`), the likelihood ODE (`likelihood_t_min`,
`likelihood_t_max`) and the VDM bound (`loss_t_min`), the training-time draw `draw_t` and
a chain's step <-> time map (`time_of_step`, `step_of_time`). Each default is a named
constant below.

The public coefficient methods (`alpha`, `sigma`, `log_snr`, `d_alpha`, `d_sigma`, `sde`,
`d_log_snr`) are entry points: they validate a concrete t once (`checks.check_time`; a traced
t is not inspected) and call the unchecked math (`_alpha`, `_sigma`, `_clipped_log_snr`,
`_d_alpha`, `_d_sigma`, `_sde`, `_d_log_snr`), which is what subclasses define and what the
methods call among themselves.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import schedules
from diffjax.checks import check_time, is_concrete
from diffjax.typing import Array, ArrayLike

# log-SNR is clipped to this range wherever it is reported, so it stays finite at t = 0 and 1.
LOG_SNR_LIMIT = 40.0
# Derivatives (d_alpha, d_sigma, sde) of processes that are singular at an end point
# (e.g. rectified flow's f = -1 / (1 - t)) are evaluated at t clipped into [eps, 1 - eps], with
# eps = max(DERIVATIVE_T_EPS, finfo(dtype).eps) so that 1 - eps is below 1 in every dtype
# (bfloat16 rounds 1 - 1e-6 to 1; float32 and float64 keep 1e-6).
DERIVATIVE_T_EPS = 1e-6
# Default end of the sampling loop where the score is singular (or very large) at t = 0:
# VP, sub-VP and the log-SNR processes (Song et al. 2021, App. C).
SAMPLE_T_MIN_SINGULAR = 1e-3
# Where alpha(1) = 0 (flows, trig, zero-terminal-SNR chains), solvers that divide by alpha_t and
# 'eps' / 'score' models (whose x0 = (x - sigma eps) / alpha is 0 / 0 there) start here.
SAMPLE_T_MAX_WHERE_ALPHA_VANISHES = 1.0 - 1e-3
# Where sigma(0) = 0 the likelihood ODE's drift is singular at t = 0 (VP: d sigma / dt ~ 1 /
# sqrt(t)), so it starts at 1e-5, the value of Song et al. (2021)'s likelihood evaluation; where
# alpha(1) = 0 an 'eps' / 'score' model's ODE ends at 1 - 1e-5.
LIKELIHOOD_T_EPS = 1e-5
# Where sigma(0) = 0 the VDM bound starts at this t_min (log-SNR is infinite at t = 0;
# log-SNR(1e-5) is about 13.8 for the default VP, close to VDM's 13.3).
LOSS_T_MIN_SINGULAR = 1e-5


# public coefficient method -> the unchecked math it validates t for
_UNCHECKED = {
    "alpha": "_alpha",
    "sigma": "_sigma",
    "log_snr": "_clipped_log_snr",
    "d_alpha": "_d_alpha",
    "d_sigma": "_d_sigma",
    "sde": "_sde",
    "d_log_snr": "_d_log_snr",
}


def _as_time(t: ArrayLike) -> Array:
    """t as a floating array (float32 for integer input); no validation."""
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.float32)


def _checked_time(t: ArrayLike) -> Array:
    """`_as_time` after `check_time` (values in [0, 1] where t is concrete)."""
    check_time(t)
    return _as_time(t)


def _clip_t(t: Array) -> Array:
    eps = max(DERIVATIVE_T_EPS, float(jnp.finfo(t.dtype).eps))
    return jnp.clip(t, eps, 1.0 - eps)


def _value_at(f, t: float) -> float:
    """f(t) as a Python float, also when asked under jit (a constant of the process)."""
    with jax.ensure_compile_time_eval():
        return float(f(jnp.asarray(t)))


class Process:
    """Base class: subclasses define `_alpha` and `_sigma` (and may override the derivatives
    and the facts below, which otherwise follow from alpha and sigma)."""

    prior_std: float = 1.0
    num_steps = None  # T for a discrete chain on t_n = n / T; None in continuous time

    def __init_subclass__(cls, **kwargs):
        # A subclass written against the public methods (overriding `sde` rather than `_sde`)
        # keeps working: its override also serves the unchecked math the other methods call.
        super().__init_subclass__(**kwargs)
        for public, unchecked in _UNCHECKED.items():
            if public in cls.__dict__ and unchecked not in cls.__dict__:
                override = cls.__dict__[public]
                setattr(cls, unchecked, lambda self, t, _f=override: _f(self, t))

    # --- process-owned facts ----------------------------------------------------------------
    @property
    def alpha_vanishes_at_1(self) -> bool:
        """alpha(1) == 0: the data term is gone at t = 1 (flows, trig, zero terminal SNR)."""
        return _value_at(self._alpha, 1.0) == 0.0

    @property
    def sigma_vanishes_at_0(self) -> bool:
        """sigma(0) == 0: t = 0 is the data itself (log-SNR is +inf there)."""
        return _value_at(self._sigma, 0.0) == 0.0

    @property
    def sample_t_min(self) -> float:
        """Default end time of the sampling loop: SAMPLE_T_MIN_SINGULAR where sigma(0) = 0 (the
        score is singular there), else 0. Flows and chains override this with 0."""
        return SAMPLE_T_MIN_SINGULAR if self.sigma_vanishes_at_0 else 0.0

    def sample_t_max(self, singular: bool) -> float:
        """Default start time of the sampling loop: 1, or SAMPLE_T_MAX_WHERE_ALPHA_VANISHES
        where alpha(1) = 0 and the solver or prediction kind is `singular` there."""
        return SAMPLE_T_MAX_WHERE_ALPHA_VANISHES if singular and self.alpha_vanishes_at_1 else 1.0

    @property
    def likelihood_t_min(self) -> float:
        """Where the likelihood ODE starts: LIKELIHOOD_T_EPS where sigma(0) = 0, else 0."""
        return LIKELIHOOD_T_EPS if self.sigma_vanishes_at_0 else 0.0

    def likelihood_t_max(self, singular: bool) -> float:
        """Where the likelihood ODE ends: 1, or 1 - LIKELIHOOD_T_EPS where alpha(1) = 0 and
        the model is `singular` there ('eps' / 'score')."""
        return 1.0 - LIKELIHOOD_T_EPS if singular and self.alpha_vanishes_at_1 else 1.0

    @property
    def loss_t_min(self) -> float:
        """t_min of the VDM bound: LOSS_T_MIN_SINGULAR where sigma(0) = 0, else 0."""
        return LOSS_T_MIN_SINGULAR if self.sigma_vanishes_at_0 else 0.0

    def draw_t(self, key: Array, batch: int, dtype=jnp.float32) -> Array:
        """Training times [batch]: t = n / T with n ~ U{1, ..., T} on a chain, so that every
        coefficient is read at a grid point (Ho et al. 2020, Algorithm 1); t ~ U(0, 1) in
        continuous time."""
        if self.num_steps is None:
            # drawn in at least float32 and rounded: bfloat16's own uniform has only 128 values
            # and gives t = 0 exactly (where sigma = 0 and a score target is infinite) w.p. 1/128
            wide = jnp.promote_types(dtype, jnp.float32)
            return jax.random.uniform(key, (batch,), wide).astype(dtype)
        n = jax.random.randint(key, (batch,), 1, self.num_steps + 1)
        return n.astype(dtype) / self.num_steps

    def time_of_step(self, n: ArrayLike, dtype=None) -> Array:
        """t_n = n / T of a chain (n in 0..T), in `dtype` (default: the default float)."""
        T = self._chain_steps("time_of_step")
        if is_concrete(n):
            arr = np.asarray(n)
            if not np.issubdtype(arr.dtype, np.integer) or ((arr < 0) | (arr > T)).any():
                raise ValueError(f"steps n must be integers in [0, {T}]; got n = {arr}")
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        return jnp.asarray(n).astype(dtype) / T

    def step_of_time(self, t: ArrayLike) -> Array:
        """The step n = round(t T) of a chain, int32 with the shape of t."""
        T = self._chain_steps("step_of_time")
        return jnp.round(_checked_time(t) * T).astype(jnp.int32)

    def _chain_steps(self, what: str) -> int:
        if self.num_steps is None:
            raise ValueError(
                f"{what} needs a discrete chain (a process with num_steps = T, such as "
                f"processes.discrete); got {type(self).__name__}, which is continuous in time"
            )
        return self.num_steps

    # --- marginal coefficients (public: validate t) -----------------------------------------
    def alpha(self, t: ArrayLike) -> Array:
        return self._alpha(_checked_time(t))

    def sigma(self, t: ArrayLike) -> Array:
        return self._sigma(_checked_time(t))

    def log_snr(self, t: ArrayLike) -> Array:
        """log(alpha^2 / sigma^2), clipped to +-LOG_SNR_LIMIT (it is +inf at t = 0 for VP)."""
        return self._clipped_log_snr(_checked_time(t))

    def d_alpha(self, t: ArrayLike) -> Array:
        return self._d_alpha(_checked_time(t))

    def d_sigma(self, t: ArrayLike) -> Array:
        return self._d_sigma(_checked_time(t))

    def sde(self, t: ArrayLike) -> tuple[Array, Array]:
        """(f, g2): drift coefficient and squared diffusion of the forward SDE at t."""
        return self._sde(_checked_time(t))

    def d_log_snr(self, t: ArrayLike) -> Array:
        """d log_snr / dt = 2 (alpha'/alpha - sigma'/sigma) = -g2 / sigma^2 (always <= 0)."""
        return self._d_log_snr(_checked_time(t))

    # --- unchecked math (t a floating array) ------------------------------------------------
    def _clipped_log_snr(self, t: Array) -> Array:
        tiny = jnp.finfo(t.dtype).tiny
        raw = 2.0 * (
            jnp.log(jnp.maximum(self._alpha(t), tiny)) - jnp.log(jnp.maximum(self._sigma(t), tiny))
        )
        return jnp.clip(raw, -LOG_SNR_LIMIT, LOG_SNR_LIMIT)

    def _d_alpha(self, t: Array) -> Array:
        t = _clip_t(t)
        return jax.jvp(self._alpha, (t,), (jnp.ones_like(t),))[1]

    def _d_sigma(self, t: Array) -> Array:
        t = _clip_t(t)
        return jax.jvp(self._sigma, (t,), (jnp.ones_like(t),))[1]

    def _sde(self, t: Array) -> tuple[Array, Array]:
        t = _clip_t(t)
        alpha, sigma = self._alpha(t), self._sigma(t)
        f = self._d_alpha(t) / alpha
        g2 = 2.0 * sigma * self._d_sigma(t) - 2.0 * f * sigma**2
        return f, g2

    def _d_log_snr(self, t: Array) -> Array:
        t = _clip_t(t)
        _, g2 = self._sde(t)
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

    alpha_vanishes_at_1 = False  # alpha(1) = exp(-(b_min + b_max) / 4) > 0
    sigma_vanishes_at_0 = True

    def beta(self, t: ArrayLike) -> Array:
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def _alpha(self, t):
        return jnp.exp(-0.5 * _int_beta(self.beta_min, self.beta_max, t))

    def _sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-_int_beta(self.beta_min, self.beta_max, t)))

    def _sde(self, t):
        beta = self.beta(t)
        return -0.5 * beta, beta


@dataclasses.dataclass(frozen=True)
class SubVP(VP):
    """sub-VP SDE (Song et al. 2021, eq. 17): alpha as VP, sigma = 1 - alpha^2;
    f = -beta/2, g2 = beta (1 - exp(-2 int_0^t beta))."""

    def _sigma(self, t):
        return -jnp.expm1(-_int_beta(self.beta_min, self.beta_max, t))

    def _sde(self, t):
        beta = self.beta(t)
        return -0.5 * beta, -beta * jnp.expm1(-2.0 * _int_beta(self.beta_min, self.beta_max, t))


@dataclasses.dataclass(frozen=True)
class VE(Process):
    """Variance-exploding SDE (Song et al. 2021, eq. 9): alpha = 1,
    sigma = sigma_min (sigma_max / sigma_min)^t; f = 0, g2 = 2 sigma^2 log(sigma_max / sigma_min).
    Prior N(0, sigma_max^2 I)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    alpha_vanishes_at_1 = False

    @property
    def sigma_vanishes_at_0(self) -> bool:
        return self.sigma_min == 0.0

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _alpha(self, t):
        return jnp.ones_like(t)

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def _sde(self, t):
        sigma = self._sigma(t)
        return jnp.zeros_like(sigma), 2.0 * sigma**2 * math.log(self.sigma_max / self.sigma_min)


@dataclasses.dataclass(frozen=True)
class LogSNRProcess(Process):
    """A variance-preserving process given by its log-SNR lambda(t) (Kingma et al. 2021):
    alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda);
    f = lambda' sigma^2 / 2, g2 = -lambda' sigma^2. Sampled to t_min = SAMPLE_T_MIN_SINGULAR
    (the score at t = 0 is finite only through the log-SNR clip)."""

    sample_t_min = SAMPLE_T_MIN_SINGULAR

    def _log_snr(self, t):
        raise NotImplementedError

    def _alpha(self, t):
        return jnp.sqrt(jax.nn.sigmoid(self._log_snr(t)))

    def _sigma(self, t):
        return jnp.sqrt(jax.nn.sigmoid(-self._log_snr(t)))

    def _clipped_log_snr(self, t):
        return jnp.clip(self._log_snr(t), -LOG_SNR_LIMIT, LOG_SNR_LIMIT)

    def _d_log_snr(self, t):
        return jax.jvp(self._log_snr, (t,), (jnp.ones_like(t),))[1]

    def _sde(self, t):
        dl, sigma2 = self._d_log_snr(t), jax.nn.sigmoid(-self._log_snr(t))
        return 0.5 * dl * sigma2, -dl * sigma2

    def _d_alpha(self, t):
        return 0.5 * self._alpha(t) * jax.nn.sigmoid(-self._log_snr(t)) * self._d_log_snr(t)

    def _d_sigma(self, t):
        return -0.5 * self._sigma(t) * jax.nn.sigmoid(self._log_snr(t)) * self._d_log_snr(t)


@dataclasses.dataclass(frozen=True)
class Cosine(LogSNRProcess):
    """Nichol & Dhariwal (2021) cosine schedule in continuous time:
    alpha-bar(t) = cos^2(u_t) / cos^2(u_0), u_t = (t + s) / (1 + s) * pi / 2, so
    SNR = cos^2 u_t / (sin(u_t - u_0) sin(u_t + u_0));
    log-SNR clipped to [log_snr_min, log_snr_max] (finite, so neither alpha(1) nor sigma(0)
    vanishes)."""

    s: float = 0.008
    log_snr_min: float = -20.0
    log_snr_max: float = 20.0

    alpha_vanishes_at_1 = False
    sigma_vanishes_at_0 = False

    def _log_snr(self, t):
        u0 = self.s / (1.0 + self.s) * math.pi / 2
        u = (t + self.s) / (1.0 + self.s) * math.pi / 2
        tiny = jnp.asarray(jnp.finfo(t.dtype).tiny, t.dtype)  # keeps bfloat16 in bfloat16
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
    (zero terminal SNR) exact. Prior N(0, I). Sampled down to x_0 (sample_t_min = 0)."""

    betas: tuple  # [T] beta_1 .. beta_T, float64 values

    sigma_vanishes_at_0 = True  # alpha-bar_0 = 1
    sample_t_min = 0.0

    def __post_init__(self):
        object.__setattr__(
            self, "betas", tuple(float(b) for b in schedules.check_betas(self.betas))
        )

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def alpha_vanishes_at_1(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0.0)  # zero terminal SNR (beta_T = 1)

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

    def _d_alpha(self, t):
        # piecewise-constant slope of the linear interpolation (right-continuous; t = 1 takes
        # the last interval)
        grid = np.sqrt(self.alphas_cumprod)
        slopes = np.diff(grid) * self.num_steps
        n = jnp.clip(jnp.floor(t * self.num_steps).astype(jnp.int32), 0, self.num_steps - 1)
        return jnp.asarray(slopes, t.dtype)[n]

    def _d_sigma(self, t):
        t = _clip_t(t)
        return -self._alpha(t) * self._d_alpha(t) / self._sigma(t)

    def _sde(self, t):
        t = _clip_t(t)
        alpha, sigma = self._alpha(t), self._sigma(t)
        f = self._d_alpha(t) / jnp.maximum(alpha, jnp.finfo(t.dtype).tiny)
        g2 = 2.0 * sigma * self._d_sigma(t) - 2.0 * f * sigma**2
        return f, g2


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(Process):
    """Rectified flow (Liu et al. 2023) in diffjax's direction: alpha = 1 - t, sigma = t.
    (Papers with noise at t = 0 map by t -> 1 - t.) The velocity is regular at t = 0, so flows
    are sampled to the data (sample_t_min = 0)."""

    alpha_vanishes_at_1 = True
    sigma_vanishes_at_0 = True
    sample_t_min = 0.0

    def _alpha(self, t):
        return 1.0 - t

    def _sigma(self, t):
        return t

    def _d_alpha(self, t):
        return -jnp.ones_like(t)

    def _d_sigma(self, t):
        return jnp.ones_like(t)


@dataclasses.dataclass(frozen=True)
class OTFlow(Process):
    """Conditional OT path of Lipman et al. (2023), eq. 20, mapped by t -> 1 - t:
    alpha = 1 - t, sigma = sigma_min + (1 - sigma_min) t. Sampled to t_min = 0."""

    sigma_min: float = 1e-4

    alpha_vanishes_at_1 = True
    sample_t_min = 0.0

    @property
    def sigma_vanishes_at_0(self) -> bool:
        return self.sigma_min == 0.0

    def _alpha(self, t):
        return 1.0 - t

    def _sigma(self, t):
        return self.sigma_min + (1.0 - self.sigma_min) * t

    def _d_alpha(self, t):
        return -jnp.ones_like(t)

    def _d_sigma(self, t):
        return jnp.full_like(t, 1.0 - self.sigma_min)


@dataclasses.dataclass(frozen=True)
class Trig(Process):
    """Trigonometric (variance-preserving) interpolant:
    alpha = cos(pi t / 2), sigma = sin(pi t / 2). Sampled to t_min = 0."""

    alpha_vanishes_at_1 = True
    sigma_vanishes_at_0 = True
    sample_t_min = 0.0

    def _alpha(self, t):
        return jnp.sin(0.5 * math.pi * (1.0 - t))  # = cos(pi t / 2), exactly 0 at t = 1

    def _sigma(self, t):
        return jnp.sin(0.5 * math.pi * t)

    def _d_alpha(self, t):
        return -0.5 * math.pi * self._sigma(t)

    def _d_sigma(self, t):
        return 0.5 * math.pi * self._alpha(t)


def vp(beta_min: float = 0.1, beta_max: float = 20.0) -> VP:
    return VP(*_positive(beta_min=beta_min, beta_max=beta_max))


def subvp(beta_min: float = 0.1, beta_max: float = 20.0) -> SubVP:
    return SubVP(*_positive(beta_min=beta_min, beta_max=beta_max))


def ve(sigma_min: float = 0.01, sigma_max: float = 50.0) -> VE:
    sigma_min, sigma_max = _positive(sigma_min=sigma_min, sigma_max=sigma_max)
    if not sigma_max > sigma_min:
        raise ValueError(f"ve needs sigma_max > sigma_min; got {sigma_min=}, {sigma_max=}")
    return VE(sigma_min, sigma_max)


def cosine(s: float = 0.008, log_snr_min: float = -20.0, log_snr_max: float = 20.0) -> Cosine:
    (s,) = _positive(s=s)
    lo, hi = _real("log_snr_min", log_snr_min), _real("log_snr_max", log_snr_max)
    if not lo < hi:
        raise ValueError(
            f"cosine needs log_snr_min < log_snr_max; got log_snr_min = {lo!r}, "
            f"log_snr_max = {hi!r}"
        )
    return Cosine(s, lo, hi)


def discrete(betas) -> Discrete:
    if np.ndim(betas) > 1:
        raise ValueError(f"betas must be a 1-D table [T]; got shape {np.shape(betas)}")
    return Discrete(tuple(np.asarray(betas, dtype=np.float64).ravel()) if np.ndim(betas) else betas)


def rectified_flow() -> RectifiedFlow:
    return RectifiedFlow()


def ot_flow(sigma_min: float = 1e-4) -> OTFlow:
    sigma_min = _real("sigma_min", sigma_min)
    if not 0.0 <= sigma_min < 1.0:
        raise ValueError(f"ot_flow needs 0 <= sigma_min < 1; got sigma_min = {sigma_min!r}")
    return OTFlow(sigma_min)


def trig() -> Trig:
    return Trig()


def _real(name: str, v) -> float:
    """v as a finite Python float: Python, numpy and 0-d JAX real scalars are accepted."""
    is_real = isinstance(v, (numbers.Real, np.ndarray, jax.Array)) and not isinstance(
        v, (bool, np.bool_, jax.core.Tracer)
    )
    if is_real and np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number):
        if not np.iscomplexobj(v) and math.isfinite(float(v)):
            return float(v)
    raise ValueError(f"{name} must be a finite real number; got {name} = {v!r}")


def _positive(**values) -> tuple[float, ...]:
    out = []
    for name, v in values.items():
        try:
            f = _real(name, v)
        except ValueError:
            f = None
        if f is None or not f > 0:
            raise ValueError(f"{name} must be a positive finite number; got {name} = {v!r}")
        out.append(f)
    return tuple(out)


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


@dataclasses.dataclass(frozen=True)
class EDM(Process):
    """The sigma-space process of Karras et al. (2022), "Elucidating the Design Space of
    Diffusion-Based Generative Models" (EDM), Table 1: alpha = 1, sigma(t) = sigma_max t
    (their sigma(t) = t, rescaled to t in [0, 1]); f = 0, g2 = 2 sigma_max^2 t. Prior
    N(0, sigma_max^2 I).

    sigma_min is EDM's smallest non-zero noise level: a 'karras' grid that ends at t = 0 is laid
    out from sigma_max to sigma_min (eq. 5) with sigma = 0 as its last point (`grid_t_floor`),
    exactly EDM's {t_0, ..., t_{N-1}, t_N = 0}, so `euler` and `heun` on it (x_s = x_t + (sigma_s
    - sigma_t) (x_t - D) / sigma_t) are EDM's Algorithms 1-2 and diffusers' Euler/Heun
    schedulers. Sampled to t = 0 by default (sample_t_min = 0; the step to sigma = 0 is the
    Euler step x = D). Pair it with `diffjax.precond.edm` for EDM's preconditioning.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0

    alpha_vanishes_at_1 = False
    sigma_vanishes_at_0 = True
    sample_t_min = 0.0

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    @property
    def grid_t_floor(self) -> float:
        """The t of sigma_min: where noise-level grids that end at sigma = 0 stop before it."""
        return self.sigma_min / self.sigma_max

    def _alpha(self, t):
        return jnp.ones_like(t)

    def _sigma(self, t):
        return self.sigma_max * t

    def _d_alpha(self, t):
        return jnp.zeros_like(t)

    def _d_sigma(self, t):
        return jnp.full_like(t, self.sigma_max)

    def _sde(self, t):
        return jnp.zeros_like(t), 2.0 * self.sigma_max**2 * t


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0) -> EDM:
    """EDM's sigma-space process (Karras et al. 2022; defaults are their sigma_min, sigma_max)."""
    sigma_min, sigma_max = _positive(sigma_min=sigma_min, sigma_max=sigma_max)
    if not sigma_max > sigma_min:
        raise ValueError(f"edm needs sigma_max > sigma_min; got {sigma_min=}, {sigma_max=}")
    return EDM(sigma_min, sigma_max)


PROCESSES["edm"] = edm
