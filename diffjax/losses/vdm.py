"""The continuous-time variational bound of Kingma et al. 2021 (VDM) for any Gaussian process."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.checks import check_batch_time, check_choice
from diffjax.kernels import bcast, marginal
from diffjax.losses.common import (
    call_model,
    check_data,
    check_prediction,
    data_dims,
    finish,
    sum_over_data,
)
from diffjax.losses.decoders import DECODERS, check_decoder_data, decoder_nll, prior_kl
from diffjax.processes import LOSS_T_MIN_SINGULAR, Process
from diffjax.targets import convert
from diffjax.typing import Array, ModelFn

# Where sigma(0) = 0 (VP, sub-VP, rectified flow, trig, a discrete chain) log-SNR is infinite at
# t = 0 and the bound starts at this t_min instead (named once: processes.LOSS_T_MIN_SINGULAR).
DEFAULT_T_MIN = LOSS_T_MIN_SINGULAR


def default_t_min(process: Process) -> float:
    """0 where the process has sigma(0) > 0 (VE, cosine, OT flow), else DEFAULT_T_MIN:
    `process.loss_t_min`."""
    return process.loss_t_min


def _times(key, x0, t, t_min, antithetic):
    """t [B] in [t_min, 1]: U(t_min, 1), or VDM's low-discrepancy t_i from u_i = mod(u + i/B, 1)."""
    batch = x0.shape[0]
    if t is not None:
        check_batch_time(t, x0)
        return jnp.clip(jnp.asarray(t, x0.dtype), t_min, 1.0)
    if antithetic:
        u = jnp.mod(jax.random.uniform(key, (), x0.dtype) + jnp.arange(batch) / batch, 1.0)
    else:
        u = jax.random.uniform(key, (batch,), x0.dtype)
    return t_min + (1.0 - t_min) * u.astype(x0.dtype)


def _reconstruction(key, x0, process, t_min, decoder):
    """-log p(x0 | z_{t_min}) [B] with VDM's model-free decoder: mean z / alpha and variance
    sigma^2 / alpha^2 = exp(-log_snr(t_min)) (Kingma et al. 2021, Sec. 3.3 and App. C)."""
    t0 = jnp.full((x0.shape[0],), t_min, x0.dtype)
    z, _ = marginal(key, process, x0, t0)
    logvar = bcast(-process.log_snr(t0), x0)
    return decoder_nll(x0, z / bcast(process.alpha(t0), x0), logvar, decoder)


def continuous_vlb(
    model: ModelFn,
    key: Array,
    x0,
    process: Process,
    *,
    cond=None,
    t=None,
    prediction: str = "eps",
    decoder: str = "gaussian",
    t_min: float | None = None,
    antithetic: bool = False,
) -> tuple[Array, dict]:
    """-log p(x0) <= prior + reconstruction + diffusion (Kingma et al. 2021, eqs. 11, 17-19):

      prior          = KL(q(x_1 | x0) || N(0, prior_std^2 I)),
      reconstruction = -log p(x0 | z_{t_min}),  z_{t_min} ~ q(z | x0),
      diffusion      = (1 - t_min)/2 (-d log_snr/dt) ||eps - eps_hat(x_t, t)||^2,  t ~ U(t_min, 1),

    one Monte Carlo t per example (VDM's low-discrepancy times with antithetic=True), the squared
    error summed over data dims. The model output (kind `prediction`) is converted to eps.
    t_min defaults to `default_t_min(process)`; given times are raised to t_min.

    Args:
      decoder: 'gaussian' (continuous data) or 'discretized' (8-bit data in [-1, 1]).
    Returns:
      (bits/dim averaged over the batch, aux): 'per_example' bits/dim [B], 'nats' [B], 'prior',
      'reconstruction', 'diffusion' (nats [B]), 't' [B].
    References: Kingma et al. 2021, "Variational Diffusion Models", eqs. 11, 17-19 and App. C.
    """
    check_prediction(prediction)
    check_choice(decoder, DECODERS, "decoder")
    t_min = default_t_min(process) if t_min is None else t_min
    if not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must lie in [0, 1); got t_min = {t_min!r}")
    x0 = check_data(x0)
    check_decoder_data(x0, decoder)
    t_key, noise_key, recon_key = jax.random.split(key, 3)
    t = _times(t_key, x0, t, t_min, antithetic)
    x_t, eps = marginal(noise_key, process, x0, t)
    pred = call_model(model, x_t, t, cond, x0.shape)
    eps_hat = convert(pred, prediction, "eps", x_t, t, process)
    weight = -process.d_log_snr(t).astype(x0.dtype)  # [B], g^2 / sigma^2
    diffusion = 0.5 * (1.0 - t_min) * weight * sum_over_data((eps - eps_hat) ** 2)
    prior = prior_kl(process, x0)
    reconstruction = _reconstruction(recon_key, x0, process, t_min, decoder)
    nats = prior + reconstruction + diffusion
    bpd = nats / (data_dims(x0) * math.log(2.0))
    return finish(
        bpd, t, nats=nats, prior=prior, reconstruction=reconstruction, diffusion=diffusion
    )
