"""Array aliases and the notation every module uses.

Notation (one convention for the whole library):
  x0      data, shape [B, ...]
  xt      the noised state x_t = alpha_t * x0 + sigma_t * eps
  eps     standard Gaussian noise, same shape as x0
  t       time in [0, 1], shape [B]; t = 0 is data, t = 1 is noise
  alpha_t, sigma_t   signal and noise scales of the process at t
  log_snr log(alpha_t^2 / sigma_t^2)
A discrete T-step chain lives on the grid t_n = n / T.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PRNGKey = jax.Array
PyTree = Any

# A model maps (xt [B, ...], t [B], *cond) to a prediction of some kind (eps, x0, v, ...).
ModelFn = Callable[..., Array]

PREDICTION_KINDS = ("eps", "x0", "v", "score", "velocity")
