"""EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Sec. 5 and Table 1): a raw network F becomes the denoiser

  D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
  c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),  c_out = sigma sigma_data / sqrt(sigma^2 +
  sigma_data^2),  c_in = 1 / sqrt(sigma^2 + sigma_data^2),  c_noise = ln(sigma) / 4,

chosen so that the network's input and its training target (x0 - c_skip x) / c_out have unit
variance for data of standard deviation sigma_data (their eq. 7 and App. B.6). At sigma = 0,
c_skip = 1 and c_out = 0, so D(x, 0) = x exactly (c_noise is evaluated at the smallest positive
float there, so F never sees -inf, and F's output is not used there).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from diffjax.kernels import bcast
from diffjax.processes import Process
from diffjax.typing import Array, ArrayLike

SIGMA_DATA = 0.5  # Karras et al. (2022), Table 1 (CIFAR-10 / ImageNet in [-1, 1])


def edm_coefficients(sigma: ArrayLike, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) of Table 1 at noise level(s) sigma (any shape)."""
    sigma = jnp.asarray(sigma)
    sigma = sigma if jnp.issubdtype(sigma.dtype, jnp.floating) else sigma.astype(jnp.float32)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / jnp.sqrt(total)
    c_in = 1.0 / jnp.sqrt(total)
    c_noise = 0.25 * jnp.log(jnp.maximum(sigma, jnp.finfo(sigma.dtype).tiny))
    return c_skip, c_out, c_in, c_noise


def edm(
    net: Callable[..., Array], process: Process, sigma_data: float = SIGMA_DATA
) -> Callable[..., Array]:
    """The x0-model D(x_t, t) = c_skip x_t + c_out F(c_in x_t, c_noise) of a raw network.

    Args:
      net: F(x_in [B, ...], c_noise [B], *cond) -> [B, ...].
      process: a process with alpha = 1 (EDM's sigma space, `processes.edm`; VE also qualifies),
        whose sigma(t) is the noise level.
      sigma_data: the data's standard deviation.
    Returns:
      model(x_t [B, ...], t [B], *cond) -> x0 prediction [B, ...] (use prediction='x0').
    Raises:
      ValueError: sigma_data not positive, or a process whose alpha is not 1.
    """
    if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
        raise ValueError(f"sigma_data must be a positive number; got sigma_data = {sigma_data!r}")
    alphas = jnp.asarray(process.alpha(jnp.linspace(0.0, 1.0, 5)))
    if not bool(jnp.all(alphas == 1.0)):
        raise ValueError(
            f"EDM preconditioning needs a sigma-space process (alpha = 1); got "
            f"{type(process).__name__} with alpha = {alphas}"
        )

    def model(x: Array, t: Array, *cond) -> Array:
        c_skip, c_out, c_in, c_noise = edm_coefficients(process.sigma(t), sigma_data)
        out = net(bcast(c_in, x) * x, c_noise, *cond)
        c_out = bcast(c_out, x)
        return bcast(c_skip, x) * x + jnp.where(c_out > 0, c_out * out, 0.0)  # D(x, 0) = x

    return model
