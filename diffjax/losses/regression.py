"""Regression losses: L_simple, any prediction kind with a named weighting, denoising score
matching and (optimal-transport) conditional flow matching.

Every loss returns (batch mean, aux) with aux['per_example'] [B] and aux['t'] [B]. The squared
error of an example is the MEAN over its data dimensions (as in Ho et al.'s reference code), so
loss values do not scale with the image size; multiply by d for the sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.checks import check_choice
from diffjax.kernels import bcast, marginal
from diffjax.losses import ot
from diffjax.losses.common import (
    call_model,
    check_data,
    check_prediction,
    finish,
    mean_over_data,
    sample_times,
)
from diffjax.losses.weighting import check_weighting, eps_weight, native_weight
from diffjax.processes import Process
from diffjax.targets import from_x0_eps
from diffjax.typing import Array, ArrayLike, ModelFn


def _weighted_error(pred, x0, eps, x_t, t, process, prediction, weighting, gamma, sigma_data):
    """(w_k ||pred - target_k||^2 averaged over data dims [B], w_k [B])."""
    if prediction == "score":
        # The score target -eps/sigma is infinite where sigma = 0; sigma^2 ||s - target||^2 =
        # ||sigma s + eps||^2 is not, and w_score / sigma^2 = w_eps for every x0-space weighting.
        sigma = process.sigma(t)
        sq = mean_over_data((bcast(sigma, pred) * pred + eps) ** 2)  # [B]
        if weighting == "uniform":
            return sq / sigma**2, jnp.ones_like(sigma)
        w_eps = eps_weight(process, t, weighting, gamma, sigma_data)
        return w_eps * sq, w_eps * sigma**2
    target = from_x0_eps(x0, eps, prediction, t, process)
    w = native_weight(process, t, prediction, weighting, gamma, sigma_data)  # [B]
    return w * mean_over_data((pred - target) ** 2), w


def weighted(
    model: ModelFn,
    key: Array,
    x0: ArrayLike,
    process: Process,
    *,
    cond=None,
    t: ArrayLike | None = None,
    prediction: str = "eps",
    weighting: str = "uniform",
    gamma: float = 5.0,
    sigma_data: float = 0.5,
) -> tuple[Array, dict]:
    """MSE in the prediction's own space times a named weighting of time.

      L = E_{t, eps} [ w_k(t) mean_d (k_hat(x_t, t) - k(x0, eps, t))^2 ],
      x_t = alpha_t x0 + sigma_t eps,

    with k the prediction kind and w_k from `weighting.native_weight`: 'uniform' is 1 in the
    native space; 'snr', 'min_snr', 'likelihood' and 'edm' name the same x0-space weight for
    every kind (Hang et al. 2023), converted with the exact per-kind factor. Exclusions: kind
    'score' with 'uniform' is infinite wherever sigma_t = 0 (its target -eps/sigma is); kind
    'velocity' with an x0-space weighting is infinite where the process is locally constant
    (alpha' = sigma' = 0, e.g. the cosine process inside its log-SNR clip), since the velocity
    there carries no information about x0.

    Args:
      model: model(x_t [B, ...], t [B]) (or with cond) -> prediction of kind `prediction`.
      key: PRNG key (split into time and noise keys).
      x0: data [B, ...].
      process: the forward process; on a `Discrete` chain t = n / T with n ~ U{1..T}.
      cond: optional conditioning passed to the model.
      t: optional fixed times [B] in [0, 1]; otherwise sampled.
      prediction: 'eps', 'x0', 'v', 'score' or 'velocity'.
      weighting: 'uniform', 'snr', 'min_snr' (with gamma), 'likelihood' or 'edm' (sigma_data).
    Returns:
      (scalar batch mean, aux with 'per_example' [B], 't' [B], 'weight' [B]).
    References:
      Ho et al. 2020, eq. 14; Salimans & Ho 2022; Hang et al. 2023, eq. 8; Karras et al. 2022.
    """
    check_prediction(prediction)
    check_weighting(weighting, gamma, sigma_data)
    x0 = check_data(x0)
    t_key, noise_key = jax.random.split(key)
    t = sample_times(t_key, x0, process, t)
    x_t, eps = marginal(noise_key, process, x0, t)
    pred = call_model(model, x_t, t, cond, x0.shape)
    per_example, w = _weighted_error(
        pred, x0, eps, x_t, t, process, prediction, weighting, gamma, sigma_data
    )
    return finish(per_example, t, weight=w)


def simple(model, key, x0, process, *, cond=None, t=None) -> tuple[Array, dict]:
    """L_simple of Ho et al. 2020, eq. 14: E ||eps - eps_hat(x_t, t)||^2 (mean over data dims)
    for an eps-prediction model; n ~ U{1..T}, t = n / T on a Discrete chain, else t ~ U(0, 1).

    Args/Returns: as `weighted` (prediction='eps', weighting='uniform').
    References: Ho et al. 2020, "Denoising Diffusion Probabilistic Models", eq. 14, Algorithm 1.
    """
    return weighted(model, key, x0, process, cond=cond, t=t, prediction="eps")


_DSM_WEIGHTINGS = {"sigma2": "snr", "likelihood": "likelihood"}


def dsm(model, key, x0, process, *, cond=None, t=None, weighting="sigma2") -> tuple[Array, dict]:
    """Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7) for a score model:

      L = E [ lambda(t) mean_d (s_theta(x_t, t) - grad log q(x_t | x0))^2 ],
      grad log q(x_t | x0) = -(x_t - alpha_t x0) / sigma_t^2 = -eps / sigma_t,

    with lambda = sigma_t^2 ('sigma2', finite at t = 0: it is ||sigma s_theta + eps||^2) or
    lambda = g(t)^2 ('likelihood', Song et al. 2021b, = -d log_snr/dt ||sigma s_theta + eps||^2).
    These are `weighted` with prediction='score' and weighting 'snr' / 'likelihood'.

    References: Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 7;
      Song et al. 2021b, "Maximum Likelihood Training of Score-Based Diffusion Models".
    """
    check_choice(weighting, tuple(_DSM_WEIGHTINGS), "dsm weighting")
    return weighted(
        model, key, x0, process, cond=cond, t=t, prediction="score",
        weighting=_DSM_WEIGHTINGS[weighting],
    )  # fmt: skip


def _assignment(cost: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment  # imported on use: 0.7 s at start-up

    rows, cols = linear_sum_assignment(np.asarray(cost, dtype=np.float64))
    return cols[np.argsort(rows)].astype(np.int32)


def ot_pairing(x0: Array, noise: Array) -> Array:
    """Indices perm [B] such that (x0[i], noise[perm[i]]) is an exact minibatch OT coupling for
    the squared Euclidean cost (Tong et al. 2023, Sec. 3.2), via scipy's linear_sum_assignment
    in a `jax.pure_callback` (so it runs under jit; no gradient flows through the pairing)."""
    a = jnp.reshape(x0, (x0.shape[0], -1))
    b = jnp.reshape(noise, (noise.shape[0], -1))
    cost = jax.lax.stop_gradient(
        jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2.0 * a @ b.T
    )  # [B, B]
    spec = jax.ShapeDtypeStruct((x0.shape[0],), jnp.int32)
    return jax.pure_callback(_assignment, spec, cost, vmap_method="sequential")


def cfm(
    model, key, x0, process, *, cond=None, t=None, coupling=None, sigma_min=0.0, ot_epsilon=None
) -> tuple[Array, dict]:
    """Conditional flow matching for a velocity model (Lipman et al. 2023, eq. 9; Liu et al. 2023;
    Tong et al. 2023):

      L = E [ mean_d (u_theta(x_t, t) - (alpha'_t x0 + sigma'_t eps))^2 ],
      x_t = alpha_t x0 + sigma_t eps + sigma_min z,   z ~ N(0, I).

    coupling='ot' re-pairs the noise prior_std eps to the data inside the batch by an exact OT
    assignment before noising (OT-CFM, Tong et al. 2023, Alg. 3). sigma_min is the constant
    width of Tong et al.'s Gaussian path around the interpolant (their eq. 14; it does not change
    the target); the default 0 uses the process's path exactly (Lipman's sigma_min is the
    process's own, `ot_flow(sigma_min)`).

    coupling='sinkhorn' pairs through the entropic OT plan with regulariser `ot_epsilon` (in
    units of the summed squared distance; ott-jax on device, under jit and sharding), drawing
    each example's noise partner from its row of the plan (`losses.ot.sinkhorn_pairing`): use it
    for large batches, where 'ot' is cubic on the host. coupling='sb' is SB-CFM (Tong et al.
    2023b) on a rectified flow: the plan with epsilon = 2 sigma_min^2 and the Brownian-bridge
    path of std sigma_min sqrt(t (1 - t)) with its corrected target (`losses.ot.sb_path`).

    Returns: (scalar, aux with 'per_example' [B], 't' [B]).
    References: Lipman et al. 2023; Liu et al. 2023; Tong et al. 2023, "Improving and
      Generalizing Flow-Based Generative Models with Minibatch Optimal Transport".
    """
    check_choice(coupling, (None, "ot", "sinkhorn", "sb"), "coupling")
    epsilon = ot.coupling_epsilon(coupling, ot_epsilon, sigma_min, process)
    if not (isinstance(sigma_min, (int, float)) and sigma_min >= 0):
        raise ValueError(f"sigma_min must be a number >= 0; got sigma_min = {sigma_min!r}")
    x0 = check_data(x0)
    t_key, noise_key, path_key = jax.random.split(key, 3)
    t = sample_times(t_key, x0, process, t)
    eps = jax.random.normal(noise_key, x0.shape, x0.dtype)
    if coupling == "ot":
        eps = eps[ot_pairing(x0, process.prior_std * eps)]
    elif coupling in ("sinkhorn", "sb"):
        pair_key = jax.random.fold_in(path_key, 1)
        eps = eps[ot.sinkhorn_pairing(pair_key, x0, process.prior_std * eps, epsilon)]
    if coupling == "sb":
        x_t, target = ot.sb_path(path_key, x0, eps, t, sigma_min)
    else:
        x_t = bcast(process.alpha(t), x0) * x0 + bcast(process.sigma(t), x0) * eps
        if sigma_min > 0:
            x_t = x_t + sigma_min * jax.random.normal(path_key, x0.shape, x0.dtype)
        target = from_x0_eps(x0, eps, "velocity", t, process)
    pred = call_model(model, x_t, t, cond, x0.shape)
    return finish(mean_over_data((pred - target) ** 2), t)
