"""What several test modules share: the process tables and an exact-Gaussian oracle.

`Gaussian` is written from the closed forms of Gaussian data, in numpy float64 for references
and in the same formulas in jax float32 for the model functions that samplers, losses and the
likelihood call. It uses none of diffjax.targets, diffjax.toy or diffjax.kernels, so a bug there
cannot hide in the reference; only alpha, sigma and their time derivatives come from the process
(tests/test_processes.py checks those against the papers' closed forms and finite differences).

For x0 ~ N(mu, Sigma), Sigma = Q diag(lam) Q^T, and x_t = alpha x0 + sigma eps:
  x_t ~ N(alpha mu, C),  C = alpha^2 Sigma + sigma^2 I = Q diag(c) Q^T,  c = alpha^2 lam + sigma^2
  score          grad log p_t(x_t) = -C^-1 (x_t - alpha mu)
  E[eps | x_t]   = sigma C^-1 (x_t - alpha mu)
  E[x0 | x_t]    = mu + alpha Sigma C^-1 (x_t - alpha mu)   (Gaussian conditioning)
  Cov[x0 | x_t]  = Sigma - alpha^2 Sigma C^-1 Sigma = Q diag(lam sigma^2 / c) Q^T
  v              = alpha E[eps | x_t] - sigma E[x0 | x_t]      (Salimans & Ho 2022)
  velocity       = alpha' E[x0 | x_t] + sigma' E[eps | x_t]    (= d x_t / dt, the PF-ODE drift)
  flow map       x_t1 - alpha_1 mu = Q diag(sqrt(c_1 / c_0)) Q^T (x_t0 - alpha_0 mu)
Each prediction is formed without dividing by alpha or sigma, so it is finite at both ends.
"""

from __future__ import annotations

import builtins
import hashlib
import math
import os
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import diffjax
from diffjax import schedules

# ----------------------------------------------------------------------------- process tables
# The nine processes every core unit test runs over (one per family and end-point behaviour).
PROCESSES = {
    "vp": diffjax.vp(),
    "subvp": diffjax.subvp(),
    "ve": diffjax.ve(),
    "cosine": diffjax.cosine(),
    "discrete": diffjax.discrete(schedules.linear_betas(1000)),
    "discrete_zsnr": diffjax.discrete(schedules.get_betas("linear", 1000, zero_terminal_snr=True)),
    "rectified_flow": diffjax.rectified_flow(),
    "ot_flow": diffjax.ot_flow(),
    "trig": diffjax.trig(),
}
CONTINUOUS = {k: v for k, v in PROCESSES.items() if not k.startswith("discrete")}
# The sampler sweep's variant: VE's prior scale matched to data of scale ~2 and a shorter chain,
# so every solver reaches the data distribution with its default ~50 steps (no zero-SNR chain).
SAMPLING_PROCESSES = {
    **{k: v for k, v in PROCESSES.items() if k != "discrete_zsnr"},
    "ve": diffjax.ve(0.01, 20.0),
    "discrete": diffjax.discrete(schedules.linear_betas(200)),
}
KINDS = ("eps", "x0", "v", "score", "velocity")

# ----------------------------------------------------------------------------- jit switch
JIT_MODES = ("eager", "jit")  # the `maybe_jit` fixture of conftest.py runs a test in both


def _eager(fun, **jit_kwargs):
    return fun


def jit_or_eager(mode: str):
    """jax.jit for mode 'jit', else the identity (which accepts and ignores jit's keywords)."""
    if mode not in JIT_MODES:
        raise ValueError(f"mode must be one of {JIT_MODES}; got {mode!r}")
    return jax.jit if mode == "jit" else _eager


def jit_cases(names, slow_under_jit=()) -> list:
    """pytest params (name, mode) for every name in both modes, the jit variants of the names in
    `slow_under_jit` marked slow (for tables whose one-program jit compile takes seconds; their
    eager variants, the same assertions, stay in the default run)."""
    return [
        pytest.param(
            name, mode, marks=[pytest.mark.slow] * (mode == "jit" and name in slow_under_jit)
        )
        for name in names
        for mode in JIT_MODES
    ]


def pick(*names: str) -> dict:
    """A sub-table of PROCESSES, in the order given."""
    return {name: PROCESSES[name] for name in names}


# ----------------------------------------------------------------------------- the oracle
def coeffs(process, t: float) -> dict:
    """alpha, sigma, alpha', sigma', d log-SNR/dt at a scalar t, as float64 numbers (the process
    evaluated in the default dtype on a [1] array, as a loss or sampler would see it)."""
    tt = jnp.asarray([t], jnp.float32)
    f = lambda g: float(np.asarray(g(tt), np.float64)[0])  # noqa: E731
    return {
        "a": f(process.alpha), "s": f(process.sigma), "da": f(process.d_alpha),
        "ds": f(process.d_sigma), "dlam": f(process.d_log_snr),
    }  # fmt: skip


class Gaussian:
    """N(mu, cov) data [d] with its exact marginals, predictions, posterior and flow map."""

    def __init__(self, mu, cov):
        self.mu = np.asarray(mu, np.float64)
        self.cov = np.asarray(cov, np.float64)
        self.d = self.mu.shape[0]
        if self.cov.shape != (self.d, self.d):
            raise ValueError(f"cov must have shape ({self.d}, {self.d}); got {self.cov.shape}")
        self.lam, self.q = np.linalg.eigh(self.cov)
        if self.lam.min() <= 0:
            raise ValueError(f"cov must be positive definite; eigenvalues {self.lam}")

    @classmethod
    def random(cls, d: int = 3, seed: int = 0) -> Gaussian:
        """mu ~ N(0, I), Sigma = A A^T / d + 0.3 I with A ~ N(0, 1)^{d x d} (well conditioned)."""
        rng = np.random.default_rng(seed)
        a = rng.normal(size=(d, d))
        cov = a @ a.T / d + 0.3 * np.eye(d)
        return cls(rng.normal(size=d), cov)

    # --- data
    def sample(self, key, n: int) -> jax.Array:
        """n draws [n, d] in float32 from a jax key: mu + z L^T, L the Cholesky factor."""
        z = jax.random.normal(key, (n, self.d))
        chol = jnp.asarray(np.linalg.cholesky(self.cov).T, jnp.float32)
        return jnp.asarray(self.mu, jnp.float32)[None] + z @ chol

    def sample_np(self, n: int, seed: int = 1) -> jax.Array:
        """n draws [n, d] in float32 from numpy's generator `seed`."""
        x = np.random.default_rng(seed).multivariate_normal(self.mu, self.cov, size=n)
        return jnp.asarray(x, jnp.float32)

    def logp0(self, x) -> np.ndarray:
        """log N(x; mu, Sigma) of the data in float64 (scipy)."""
        x = np.asarray(x, np.float64).reshape(-1, self.d)
        return np.atleast_1d(multivariate_normal(self.mu, self.cov).logpdf(x))

    # --- float64 closed forms at given coefficients (a, s) = (alpha_t, sigma_t)
    def cov_t(self, a: float, s: float) -> np.ndarray:
        return a**2 * self.cov + s**2 * np.eye(self.d)

    def score_np(self, a: float, s: float, x) -> np.ndarray:
        """-C^-1 (x - a mu) [B, d]."""
        r = np.asarray(x, np.float64) - a * self.mu
        return -np.linalg.solve(self.cov_t(a, s), r.T).T

    def posterior_mean_np(self, a: float, s: float, x) -> np.ndarray:
        """E[x0 | x_t = x] = mu + a Sigma C^-1 (x - a mu) [B, d]."""
        return self.mu + a * (-self.score_np(a, s, x)) @ self.cov

    def posterior_cov_np(self, a: float, s: float) -> np.ndarray:
        """Cov[x0 | x_t] = Sigma - a^2 Sigma C^-1 Sigma (the same for every x_t)."""
        return self.cov - a**2 * self.cov @ np.linalg.solve(self.cov_t(a, s), self.cov)

    def posterior_trace(self, a: float, s: float) -> tuple[float, float]:
        """(tr P, tr P^2) of the posterior covariance P: E|x0 - E[x0 | x_t]|^2 and its spread."""
        p = self.posterior_cov_np(a, s)
        return float(np.trace(p)), float(np.trace(p @ p))

    def prediction_np(self, kind: str, c: dict, x) -> np.ndarray:
        """The exact prediction of `kind` at x [B, d], coefficients c from `coeffs` (float64)."""
        a, s = c["a"], c["s"]
        score = self.score_np(a, s, x)
        x0, eps = self.posterior_mean_np(a, s, x), -s * score
        return {
            "eps": eps, "x0": x0, "score": score, "v": a * eps - s * x0,
            "velocity": c["da"] * x0 + c["ds"] * eps,
        }[kind]  # fmt: skip

    def conditional(self, known, x_known) -> tuple[np.ndarray, np.ndarray]:
        """Law of the unknown coordinates of x0 given x0[known] = x_known (known a bool mask
        [d], x_known [k]): mean mu_u + S_uk S_kk^-1 (x_k - mu_k), cov S_uu - S_uk S_kk^-1 S_ku."""
        k = np.asarray(known, bool)
        u = ~k
        s_kk, s_uk = self.cov[np.ix_(k, k)], self.cov[np.ix_(u, k)]
        gain = np.linalg.solve(s_kk, s_uk.T).T
        mean = self.mu[u] + gain @ (np.asarray(x_known, np.float64) - self.mu[k])
        return mean, self.cov[np.ix_(u, u)] - gain @ s_uk.T

    # --- in terms of a process and a time
    def _ac(self, process, t: float) -> tuple[float, float]:
        return float(process.alpha(t)), float(process.sigma(t))

    def logp(self, process, t: float, x) -> np.ndarray:
        """Reference log p_t(x) in float64 (scipy), x [B, d] -> [B]."""
        a, s = self._ac(process, t)
        x = np.asarray(x, np.float64).reshape(-1, self.d)
        return np.atleast_1d(multivariate_normal(a * self.mu, self.cov_t(a, s)).logpdf(x))

    def logp_jax(self, process, t: float):
        """log p_t as a float32 jax function [B, d] -> [B], for use as the prior."""
        a, s = self._ac(process, t)
        c = jnp.asarray(a**2 * self.lam + s**2, jnp.float32)
        mu, q = jnp.asarray(a * self.mu, jnp.float32), jnp.asarray(self.q, jnp.float32)
        log_norm = -0.5 * float(np.sum(np.log(2 * math.pi * (a**2 * self.lam + s**2))))
        return lambda x: -0.5 * jnp.sum(((x - mu[None]) @ q) ** 2 / c[None], axis=-1) + log_norm

    def flow_map(self, process, t0: float, t1: float, x) -> np.ndarray:
        """The probability-flow map x_t0 -> x_t1 (linear for Gaussian data), float64 [B, d]."""
        (a0, s0), (a1, s1) = self._ac(process, t0), self._ac(process, t1)
        ratio = np.sqrt((a1**2 * self.lam + s1**2) / (a0**2 * self.lam + s0**2))
        return (
            a1 * self.mu + ((np.asarray(x, np.float64) - a0 * self.mu) @ self.q * ratio) @ self.q.T
        )

    def jacobian_integral(self, process, t0: float, t1: float) -> np.ndarray:
        """int_{t0}^{t1} d velocity / dx dt = Q diag(log sqrt(c(t1) / c(t0))) Q^T [d, d]."""
        (a0, s0), (a1, s1) = self._ac(process, t0), self._ac(process, t1)
        a = 0.5 * np.log((a1**2 * self.lam + s1**2) / (a0**2 * self.lam + s0**2))
        return (self.q * a) @ self.q.T

    # --- the exact models as jax functions
    def consistency_model(self, process):
        """The probability-flow map x_t -> x_0 as an x0-model (a consistency function of the data,
        Song et al. 2023): mu + Q diag(sqrt(lam / c(t))) Q^T (x_t - alpha mu), where alpha(0) = 1,
        sigma(0) = 0. It maps x_t ~ N(alpha mu, C(t)) to exactly N(mu, Sigma)."""
        mu, lam, q = (jnp.asarray(v, jnp.float32) for v in (self.mu, self.lam, self.q))

        def model(x_t, t):
            a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]  # [B, 1]
            z = ((x_t - a * mu[None]) @ q) * jnp.sqrt(lam[None] / (a**2 * lam[None] + s**2))
            return mu[None] + z @ q.T

        return model

    def model(self, process, kind: str = "eps"):
        """model(x_t [B, d], t [B]) -> the exact prediction of `kind` (jax, float32 constants)."""
        if kind not in KINDS:
            raise ValueError(f"unknown prediction kind {kind!r}; expected one of {KINDS}")
        mu, lam, q = (jnp.asarray(v, jnp.float32) for v in (self.mu, self.lam, self.q))

        def model(x_t, t):
            a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]  # [B, 1]
            z = ((x_t - a * mu[None]) @ q) / (a**2 * lam[None] + s**2)  # Q^T C^-1 (x_t - a mu)
            if kind == "score":
                return -(z @ q.T)
            eps, x0 = s * (z @ q.T), mu[None] + a * ((z * lam[None]) @ q.T)
            if kind == "eps":
                return eps
            if kind == "x0":
                return x0
            if kind == "v":
                return a * eps - s * x0
            return process.d_alpha(t)[:, None] * x0 + process.d_sigma(t)[:, None] * eps

        return model


# ----------------------------------------------------------------------------- tiny models, data
def linear_model(params, x_t, t):
    """A tiny model whose params are a pytree: x W + b t (+ a second head for learned variance)."""
    out = x_t @ params["w"] + t[:, None] * params["b"][None]
    if "w_var" in params:
        out = jnp.concatenate([out, jnp.tanh(x_t @ params["w_var"])], axis=-1)
    return out


def init_params(key, d, learned=False):
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"w": 0.5 * jax.random.normal(k1, (d, d)), "b": jax.random.normal(k2, (d,))}
    if learned:
        params["w_var"] = 0.5 * jax.random.normal(k3, (d, d))
    return params


def grid_data(key, shape):
    """8-bit data scaled to [-1, 1], including both edge values."""
    k = jax.random.randint(key, shape, 0, 256).at[0, :2].set(jnp.array([0, 255]))
    return (2.0 * k / 255.0 - 1.0).astype(jnp.float32)


def tree_hash(root) -> dict[str, str]:
    """{relative path: sha256 of its bytes} for every file, and every folder as '<dir>'."""
    out = {}
    for folder, _dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        out[rel + "/"] = "<dir>"
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
    return out


def counting_model():
    """A cheap linear eps model that counts its calls at run time (jax.debug.callback)."""
    calls = []

    def model(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return 0.5 * x

    return model, calls


def write_idx(path: str, array: np.ndarray) -> None:
    """MNIST's IDX format: 0, 0, type 0x08 (uint8), rank, big-endian int32 dims, raw data."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


# ------------------------------------------------------------------------ the path-layer guard
# callers allowed to touch files: the path layer itself and the libraries below it
PATH_LAYER_ALLOWED = ("diffjax.train.paths", "etils", "orbax", "tensorstore", "tensorboardX")
PATH_LAYER_OURS = ("diffjax", "launch")
GUARDED_OS = ("makedirs", "mkdir", "listdir", "rename", "replace", "remove", "unlink", "scandir")
GUARDED_OS_PATH = ("exists", "isdir", "isfile", "getsize")


def _path_culprit() -> str | None:
    """module:line of the nearest caller that is ours (diffjax, launch) or an allowed library,
    if it is ours."""
    frame = sys._getframe(2)  # 0: here, 1: the guard, 2: its caller
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith(PATH_LAYER_ALLOWED):
            return None
        if name.startswith(PATH_LAYER_OURS):
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def install_path_guard(monkeypatch, folders: list[str]) -> list[str]:
    """Record open / os.* / os.path.* calls on any folder in `folders` (a list the caller may
    extend later) made directly by diffjax or launch code rather than through
    diffjax/train/paths.py; returns the list the violations are appended to."""
    violations: list[str] = []

    def wrap(fn, what):
        def guarded(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)):
                text = os.fspath(path)
                watched = tuple(os.path.abspath(f) for f in folders)
                if isinstance(text, str) and watched and os.path.abspath(text).startswith(watched):
                    who = _path_culprit()
                    if who is not None:
                        violations.append(f"{what}({text!r}) from {who}")
            return fn(path, *args, **kwargs)

        return guarded

    monkeypatch.setattr(builtins, "open", wrap(builtins.open, "open"))
    for name in GUARDED_OS:
        monkeypatch.setattr(os, name, wrap(getattr(os, name), f"os.{name}"))
    for name in GUARDED_OS_PATH:
        monkeypatch.setattr(os.path, name, wrap(getattr(os.path, name), f"os.path.{name}"))
    return violations


def config_from_file(config_arg: str):
    """The ConfigDict that launch/train.py's --config=`config_arg` ('path.py[:args]') gives,
    read through ml_collections' config_flags as the launcher does."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", f"--config={config_arg}"]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
    fv(argv)
    return holder.value
