"""Loss weightings over time, defined in x0 space and converted exactly to each prediction kind.

A weighting names a total weight w_x0(t) on ||x0_hat - x0||^2 (Hang et al. 2023, Sec. 3). A model
of kind k is trained with the same objective as w_k ||k_hat - k||^2, w_k = w_x0 r_k, where
r_k = ||x0 err||^2 / ||k err||^2 at fixed x_t is exact and per-kind (with lambda = log-SNR):

  x0: 1    eps: 1/SNR    v: sigma^2/(alpha^2+sigma^2)^2    score: sigma^2/SNR
  velocity: sigma^2/(alpha' sigma - alpha sigma')^2

To stay finite at the end points we never form SNR or 1/SNR alone: each weighting is written as
the eps-space weight w_eps = w_x0 / SNR (a function of lambda), and each kind as
q_k = r_k SNR (x0: e^lambda, eps: 1, v: alpha^2/(alpha^2+sigma^2)^2, score: sigma^2,
velocity: alpha^2/(alpha' sigma - alpha sigma')^2), all bounded; then w_k = w_eps q_k.
lambda is the process's log-SNR, clipped to +-LOG_SNR_LIMIT (40), so SNR = e^lambda is taken as
e^40 where the true value is infinite. Derivatives (alpha', sigma', d lambda/dt) come from the
process, which evaluates them at t clipped into [1e-6, 1 - 1e-6] where they are singular.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.checks import check_choice
from diffjax.processes import Process
from diffjax.typing import Array

WEIGHTINGS = ("uniform", "snr", "min_snr", "likelihood", "edm")


def check_weighting(weighting: str, gamma: float = 5.0, sigma_data: float = 0.5) -> None:
    check_choice(weighting, WEIGHTINGS, "weighting")
    if not gamma > 0:
        raise ValueError(f"min_snr needs gamma > 0; got gamma = {gamma!r}")
    if not sigma_data > 0:
        raise ValueError(f"edm needs sigma_data > 0; got sigma_data = {sigma_data!r}")


def eps_weight(
    process: Process, t: Array, weighting: str, gamma: float = 5.0, sigma_data: float = 0.5
) -> Array:
    """The total weight expressed in eps space, w_eps = w_x0 / SNR, for t [B]. Returns [B].

      'snr':        w_x0 = SNR                    -> w_eps = 1 (Ho et al. 2020, eq. 14)
      'min_snr':    w_x0 = min(SNR, gamma)        -> w_eps = min(1, gamma e^-lambda)
                    (Hang et al. 2023, eq. 8)
      'likelihood': w_eps = g^2 / sigma^2 = -d lambda / dt (Song et al. 2021b, Thm. 1;
                    Kingma et al. 2021, eq. 17); on a Discrete chain this is the process's
                    piecewise slope (right-continuous at the grid points)
      'edm':        w_x0 = (s^2 + sd^2) / (s sd)^2, s = sigma / alpha (Karras et al. 2022,
                    Table 1), i.e. SNR + 1 / sd^2 -> w_eps = 1 + e^-lambda / sd^2

    References: Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy".
    """
    check_weighting(weighting, gamma, sigma_data)
    lam = process.log_snr(t)  # [B], clipped to +-40
    if weighting == "snr":
        return jnp.ones_like(lam)
    if weighting == "min_snr":
        return jnp.exp(jnp.minimum(0.0, jnp.log(gamma) - lam))
    if weighting == "likelihood":
        return -process.d_log_snr(t).astype(lam.dtype)
    if weighting == "edm":
        return 1.0 + jnp.exp(-lam) / sigma_data**2
    raise ValueError(f"weighting {weighting!r} has no x0-space form")  # 'uniform'


def kind_factor(process: Process, t: Array, kind: str) -> Array:
    """q_k = r_k SNR, so that the weight on ||k_hat - k||^2 is w_eps q_k. Returns [B]."""
    alpha, sigma = process.alpha(t), process.sigma(t)
    if kind == "eps":
        return jnp.ones_like(alpha)
    if kind == "x0":
        return jnp.exp(process.log_snr(t))
    if kind == "v":
        return alpha**2 / (alpha**2 + sigma**2) ** 2
    if kind == "score":
        return sigma**2
    check_choice(kind, ("velocity",), "prediction kind")
    # alpha' sigma - alpha sigma' = alpha sigma (d lambda/dt) / 2 < 0: never zero.
    det = process.d_alpha(t) * sigma - alpha * process.d_sigma(t)
    return alpha**2 / det**2


def native_weight(
    process: Process,
    t: Array,
    kind: str,
    weighting: str,
    gamma: float = 5.0,
    sigma_data: float = 0.5,
) -> Array:
    """The weight w_k(t) [B] on the per-kind squared error ||k_hat - k||^2.

    'uniform' is 1 in the native space (eps: Ho's L_simple; velocity: flow matching); every other
    weighting is the same x0-space weight for every kind, w_k = w_x0 r_k (module docstring).
    """
    check_weighting(weighting, gamma, sigma_data)
    if weighting == "uniform":
        return jnp.ones_like(process.alpha(t))
    return eps_weight(process, t, weighting, gamma, sigma_data) * kind_factor(process, t, kind)
