"""Shared helpers of the losses tests (no tests here).

Tests of diffjax.losses against closed forms for Gaussian data.

For x0 ~ N(mu, Sigma) and x_t = alpha x0 + sigma eps, x_t ~ N(alpha mu, C), C = alpha^2 Sigma +
sigma^2 I, the exact eps-prediction is sigma C^-1 (x_t - alpha mu) and x0 - E[x0 | x_t] ~ N(0, P)
with P = Sigma - alpha^2 Sigma C^-1 Sigma, independent of x_t. A prediction of kind k has error
J_k (x0_hat - x0) with the scalar Jacobian J_k of the kind's target in x0 at fixed x_t:
  x0: 1, eps: -alpha/sigma, v: -(alpha^2+sigma^2)/sigma, score: alpha/sigma^2,
  velocity: (alpha' sigma - alpha sigma')/sigma,
so E[w_k mean_d e_k^2] = w_k J_k^2 tr(P)/d, and for an x0-space weighting (w_k = w_x0 / J_k^2)
simply w_x0 tr(P)/d. These references are computed in numpy float64.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.targets import convert
from tests.test_processes import ALL

PROCESSES = ALL  # the nine processes every core test runs over
KINDS = ("eps", "x0", "v", "score", "velocity")
D = 3


def gaussian(seed=0, d=D):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T / d + 0.3 * np.eye(d)  # mu [d], SPD Sigma [d, d]


def sample_data(key, mu, cov, batch):
    z = jax.random.normal(key, (batch, len(mu)))
    return jnp.asarray(mu, jnp.float32)[None] + z @ jnp.asarray(
        np.linalg.cholesky(cov).T, jnp.float32
    )


def exact_model(process, mu, cov, kind="eps"):
    """model(x_t, t) of `kind` for Gaussian data, from the exact eps-prediction
    sigma C^-1 (x_t - alpha mu), with C^-1 = U diag(1 / (alpha^2 lam + sigma^2)) U^T."""
    lam, u = np.linalg.eigh(cov)
    mu_j, lam_j, u_j = (jnp.asarray(v, jnp.float32) for v in (mu, lam, u))

    def model(x_t, t):
        a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]  # [B, 1]
        r = (x_t - a * mu_j[None]) @ u_j  # [B, d], eigen-coordinates
        eps = (s * r / (a**2 * lam_j[None] + s**2)) @ u_j.T
        return convert(eps, "eps", kind, x_t, t, process)

    return model


def coeffs64(process, t):
    """alpha, sigma, alpha', sigma', log-SNR, d log-SNR/dt at t (numpy float64)."""
    tt = jnp.asarray([t], jnp.float32)
    f = lambda g: float(np.asarray(g(tt), np.float64)[0])  # noqa: E731
    return {
        "a": f(process.alpha), "s": f(process.sigma), "da": f(process.d_alpha),
        "ds": f(process.d_sigma), "dlam": f(process.d_log_snr),
    }  # fmt: skip


def posterior_trace(mu, cov, a, s):
    c = a**2 * cov + s**2 * np.eye(len(mu))
    p = cov - a**2 * cov @ np.linalg.solve(c, cov)
    return np.trace(p), np.trace(p @ p)


def jacobian(kind, c):
    a, s, da, ds = c["a"], c["s"], c["da"], c["ds"]
    return {
        "x0": 1.0, "eps": -a / s, "v": -(a**2 + s**2) / s, "score": a / s**2,
        "velocity": (da * s - a * ds) / s,
    }[kind]  # fmt: skip


def reference_weight_x0(name, c, gamma=5.0, sigma_data=0.5):
    snr = c["a"] ** 2 / c["s"] ** 2
    return {
        "snr": snr,
        "min_snr": min(snr, gamma),
        "likelihood": -snr * c["dlam"],
        "edm": ((c["s"] / c["a"]) ** 2 + sigma_data**2) / (c["s"] / c["a"] * sigma_data) ** 2,
    }[name]


def reference_loss(process, mu, cov, t, kind, name):
    """(expected per-example loss, its standard deviation) at time t (float64)."""
    c = coeffs64(process, t)
    tr, tr2 = posterior_trace(mu, cov, c["a"], c["s"])
    d = len(mu)
    scale = jacobian(kind, c) ** 2 if name == "uniform" else reference_weight_x0(name, c)
    # per example: scale * mean_d(e_i^2), e ~ N(0, P): mean tr(P)/d, variance 2 tr(P^2)/d^2
    return scale * tr / d, scale * math.sqrt(2.0 * tr2) / d


# (loss function, keyword arguments, prediction kind, reference weighting)


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
